"""tools/sampling_sweep.py: the causal voicing estimate and the sweep's own sampling loop against the runtime's."""

import numpy as np
import pytest

from edge_runtime.audio import log_mel, front_end_params
from edge_runtime.errors import InputError
import sampling_sweep
from sampling_sweep import FlooredSynthesizer, voicing

LAGS = range(20, 161)  # 50-400 Hz at 8 kHz


def test_voicing_is_high_for_periodic_and_low_for_noise():
    t = np.arange(400)
    rng = np.random.default_rng(0)
    assert voicing((t % 57 == 0).astype(float), 240, LAGS) == 1.0  # a pulse train (period inside the lags)
    assert voicing((t % 17 == 0).astype(float), 240, LAGS) == 1.0  # 17 is not a lag, but 34 is
    assert 0.85 < voicing(np.sin(2 * np.pi * t / 73.3) + 0.3 * rng.standard_normal(400), 240, LAGS) < 1.0
    assert voicing(rng.standard_normal(400), 240, LAGS) < 0.3
    assert voicing(np.zeros(400), 240, LAGS) == 0.0  # silence: not voiced (no division by zero)


def _synthesize(synth, mel, temperature, floor, sharpen):
    synth.configure(temperature, floor, sharpen)
    return np.concatenate(list(synth.stream(mel, temperature=temperature, seed=3, block=37)))


def test_sweep_loop_equals_runtime_sampling_at_the_temperature_it_means(built, monkeypatch):
    synth = FlooredSynthesizer.load(built / "lpc", engine="litert")
    audio = np.sin(2 * np.pi * 150 * np.arange(1600) / 8000).astype(np.float32) * 0.3
    mel = log_mel(audio, **front_end_params(synth.config))
    own = _synthesize(synth, mel, 0.7, 0.0, 0.0)  # the runtime's own loop
    # the sweep's loop with a sharpening too weak to change c (1 + 1e-12 * ...): same Gumbel draws, same samples
    np.testing.assert_array_equal(_synthesize(synth, mel, 0.7, 0.0, 1e-12), own)
    # fully voiced frames (g = 1): c = 1 + 1 * (1.5 - 0.5) = 2, i.e. the runtime's own sampling at T / 2
    monkeypatch.setattr(sampling_sweep, "voicing", lambda *args: 1.0)
    sharpened = _synthesize(synth, mel, 0.7, 0.0, 1.0)
    np.testing.assert_array_equal(sharpened, _synthesize(synth, mel, 0.35, 0.0, 0.0))
    assert not np.array_equal(sharpened, own)
    # c changes only at mel-frame boundaries: the same samples however the stream is chunked
    monkeypatch.setattr(sampling_sweep, "voicing", lambda history, *args: min(1.0, 20 * abs(history[-1])))
    synth.configure(0.7, 0.0, 2.0)
    chunked = [np.concatenate(list(synth.stream(mel, temperature=0.7, seed=3, block=b))) for b in (37, 512)]
    np.testing.assert_array_equal(*chunked)
    # a floor of 0.5 keeps one class at most, else the most likely one: greedy decoding (the runtime's T 0)
    np.testing.assert_array_equal(_synthesize(synth, mel, 0.7, 0.5, 0.0), _synthesize(synth, mel, 0.0, 0.0, 0.0))


def test_floor_and_sharpening_are_refused_where_they_would_change_nothing(built):
    synth = FlooredSynthesizer.load(built / "lpcin_float32", engine="litert")  # steps in the general loop
    synth.configure(0.35, 0.0, 0.0)  # a temperature alone is the runtime's own sampling
    for floor, sharpen in ((0.002, 0.0), (0.0, 1.0)):
        with pytest.raises(InputError, match="needs a model without lpc_inputs"):
            synth.configure(0.5, floor, sharpen)

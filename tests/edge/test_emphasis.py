"""Pre-emphasis (the model learns x[t] - a x[t-1]) and the runtime's de-emphasis; the manifest's output settings."""

import json

import numpy as np
import pytest

from edge_runtime.audio import Deemphasis, front_end_params, log_mel, mu_law_decode, mu_law_encode, preemphasize
from edge_runtime.errors import InputError, ModelError
from edge_runtime.evaluate import evaluate_folder
from edge_runtime.manifest import load_manifest
from edge_runtime.synth import Synthesizer
from edge_runtime.wavio import read_wav
from tests.helpers import edited_model


@pytest.fixture()
def speechlike():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 8000
    return (0.3 * np.sin(2 * np.pi * 140 * t) * np.sin(2 * np.pi * 3 * t) + 0.02 * rng.standard_normal(t.size)
            ).astype(np.float32)


def test_deemphasis_inverts_preemphasis(speechlike):
    emphasised = preemphasize(speechlike, 0.85)
    assert np.abs(emphasised - speechlike).max() > 0.05  # the filter does something
    np.testing.assert_allclose(Deemphasis(0.85)(emphasised), speechlike, atol=1e-6)
    np.testing.assert_array_equal(preemphasize(speechlike, 0.0), speechlike)


def test_deemphasis_streams_bit_for_bit(speechlike):
    e = mu_law_decode(mu_law_encode(preemphasize(speechlike, 0.85)))
    whole = Deemphasis(0.85)(e)
    filt, cuts = Deemphasis(0.85), [0, 1, 2, 513, 1000, 3999, 4000]
    pieces = [filt(e[a:b]) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    filt.reset()  # a new utterance starts from silence again
    np.testing.assert_array_equal(filt(e), whole)


def test_deemphasis_keeps_streams_apart(speechlike):
    pair = np.stack([speechlike, -0.5 * speechlike], axis=1)  # [n, 2]
    both = Deemphasis(0.85, streams=2)(pair)
    np.testing.assert_array_equal(both[:, 0], Deemphasis(0.85)(speechlike))
    np.testing.assert_array_equal(both[:, 1], Deemphasis(0.85)(-0.5 * speechlike))


def test_emphasised_model_streams_and_scores_like_training(built, reference):
    synth = Synthesizer.load(built / "emph")
    assert synth.manifest.deemphasis == 0.85 and synth.temperature == 0.7
    mel = reference[0]["mel"]
    offline = np.concatenate(list(synth.stream(mel, speaker="bob", seed=3)))
    blocks = (mel[i:i + 3] for i in range(0, mel.shape[0], 3))
    np.testing.assert_array_equal(np.concatenate(list(synth.stream(blocks, speaker="bob", seed=3, block=41))),
                                  offline)
    # the manifest's temperature is the default; another one changes the audio
    np.testing.assert_array_equal(np.concatenate(list(synth.stream(mel, speaker="bob", seed=3, temperature=0.7))),
                                  offline)
    assert not np.array_equal(np.concatenate(list(synth.stream(mel, speaker="bob", seed=3, temperature=0.5))),
                              offline)
    # the edge evaluation levels and pre-emphasises the recordings exactly as training did
    tf_nll = json.loads((built / "emph_tf_eval.json").read_text())
    result = evaluate_folder(synth, built / "val")
    assert result["samples"] == tf_nll["samples"]
    assert abs(result["nll_bits_per_sample"] - tf_nll["nll_bits_per_sample"]) < 1e-3


def test_a_levelled_model_hears_a_recording_at_its_level_and_answers_at_the_recordings(built):
    synth = Synthesizer.load(built / "emph")
    assert synth.manifest.input_peak == 0.8
    audio = read_wav(sorted((built / "val").rglob("*.wav"))[0])[0]
    mel, gain = synth.features(audio)
    assert gain == pytest.approx(0.8 / np.abs(audio).max(), rel=1e-12) and abs(gain - 1) > 0.1
    np.testing.assert_array_equal(mel, log_mel((audio * np.float32(gain)).astype(np.float32),
                                               **front_end_params(synth.config)))
    quiet_mel, quiet_gain = synth.features(audio / 4)  # the same recording, quieter: the same mel, 4x the gain
    assert quiet_gain == pytest.approx(4 * gain, rel=1e-6)
    np.testing.assert_allclose(quiet_mel, mel, atol=1e-4)
    at_peak = np.concatenate(list(synth.stream(mel, speaker="bob", seed=3)))
    back = np.concatenate(list(synth.stream(mel, speaker="bob", seed=3, gain=gain)))
    np.testing.assert_array_equal(back, np.clip(at_peak / gain, -1, 1).astype(np.float32))
    assert np.abs(back).max() == pytest.approx(np.abs(at_peak).max() / gain, rel=1e-6)
    blocks = (mel[i:i + 3] for i in range(0, mel.shape[0], 3))  # streaming still equals offline
    np.testing.assert_array_equal(np.concatenate(list(synth.stream(blocks, speaker="bob", seed=3, gain=gain,
                                                                   block=37))), back)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="gain must be a finite number > 0"):
            next(synth.stream(mel, speaker="bob", gain=bad))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(postfilter={"type": "comb", "coefficient": 0.85}), "unknown postfilter 'comb'"),
    (lambda d: d.update(postfilter={"type": "deemphasis", "coefficient": 1.5}), r"must be a number in \[0, 1\)"),
    (lambda d: d.update(postfilter=None), "does not match the model's pre-emphasis"),
    (lambda d: d.update(sampling={"temperature": "hot"}), "sampling temperature"),
    (lambda d: d.update(sampling={"temperature": -1}), "sampling temperature"),
    (lambda d: d["config"].update(normalize_peak=1.5), r"normalize_peak must be a number in \[0, 1\]"),
    (lambda d: d["config"].update(normalize_peak="loud"), r"normalize_peak must be a number in \[0, 1\]"),
])
def test_bad_output_settings_are_model_errors(built, tmp_path, change, message):
    with pytest.raises(ModelError, match=message):
        load_manifest(edited_model(built / "emph", tmp_path, change))


def test_models_without_output_settings_keep_loading(built):
    manifest = load_manifest(built / "models/dynamic")
    assert manifest.deemphasis == 0.0 and manifest.temperature is None and manifest.input_peak == 0.0
    assert Synthesizer.load(built / "models/dynamic").features(np.full(800, 0.1, np.float32))[1] == 1.0
    assert Synthesizer.load(built / "models/dynamic").temperature == 0.5

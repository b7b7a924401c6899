"""µ-law and log-mel: numpy (the edge's definition) against TensorFlow (training's), and known properties."""

import numpy as np
import pytest

from edge_runtime import audio as ea
from training.config import Config


def test_mu_law_round_trip_numpy():
    classes = np.arange(256)
    assert np.array_equal(ea.mu_law_encode(ea.mu_law_decode(classes)), classes)
    x = np.linspace(-1, 1, 20001)
    c = ea.mu_law_encode(x)
    err = np.abs(ea.mu_law_decode(c) - x)
    # Rounding happens in the companded domain: the error is at most half a class step mapped back to linear,
    # which grows with amplitude (fine near zero, coarse near full scale).
    centre = ea.mu_law_decode(c)
    half_step = np.maximum(np.abs(ea.mu_law_decode(c + 0.5) - centre), np.abs(ea.mu_law_decode(c - 0.5) - centre))
    assert (err <= half_step + 1e-6).all()
    assert err[np.abs(x) < 0.01].max() < 3e-4 and err.max() < 0.025
    assert ea.mu_law_encode(np.array([0.0]))[0] == 128 and ea.mu_law_encode(np.array([-1.0, 1.0])).tolist() == [0, 255]


def test_mu_law_tensorflow_matches_numpy():
    from training import audio as ta

    x = np.random.default_rng(0).uniform(-1.2, 1.2, 10000).astype(np.float32)
    assert np.array_equal(ta.mu_law_encode(x).numpy(), ea.mu_law_encode(x))
    c = np.arange(256, dtype=np.int32)
    np.testing.assert_allclose(ta.mu_law_decode(c).numpy(), ea.mu_law_decode(c), atol=1e-7)


SIGNALS = {
    "noise": lambda n, r: 0.3 * r.standard_normal(n),
    "sine": lambda n, r: 0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000),
    "silence": lambda n, r: np.zeros(n),
    "quiet_tone_next_to_loud": lambda n, r: np.where(np.arange(n) < n // 2, 0.9, 1e-4)
    * np.sin(2 * np.pi * 1000 * np.arange(n) / 16000),
}


@pytest.mark.parametrize("kind", list(SIGNALS))
@pytest.mark.parametrize("length", [160, 161, 4001])
def test_log_mel_tensorflow_matches_numpy(kind, length):
    from training.audio import LogMel

    params = ea.front_end_params(Config.preset("s").to_dict())
    x = SIGNALS[kind](length, np.random.default_rng(1)).astype(np.float32)
    a = ea.log_mel(x, **params)
    b = LogMel(**params)(x).numpy()
    assert a.shape == b.shape == (length // 160, 80)
    assert np.abs(a - b).max() <= 1e-4


def test_shorter_than_a_hop_gives_no_frames():
    from training.audio import LogMel

    params = ea.front_end_params(Config.preset("s").to_dict())
    x = np.ones(159, np.float32)
    assert ea.log_mel(x, **params).shape == (0, 80) == tuple(LogMel(**params)(x).shape)


def test_frames_are_centred_on_their_hop():
    # Frame f is centred on sample f*hop + hop//2: an impulse there is loudest in frame f, for every f.
    params = ea.front_end_params(Config.preset("tiny").to_dict())
    hop = params["hop_length"]
    for f in range(8):
        x = np.zeros(hop * 8, np.float32)
        x[f * hop + hop // 2] = 1.0
        energy = ea.log_mel(x, **params).sum(axis=1)
        assert energy.shape == (8,) and np.argmax(energy) == f


def test_filterbank_shape_and_coverage():
    fb = ea.mel_filterbank(8000, 512, 80, 0.0, 4000.0)
    assert fb.shape == (257, 80) and (fb >= 0).all()
    assert (fb.sum(axis=0) > 0).all()  # no empty band
    centres = np.argmax(fb, axis=0)
    assert (np.diff(centres) >= 0).all()  # bands ordered by frequency

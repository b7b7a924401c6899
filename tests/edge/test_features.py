"""Conditioning frames: the log-mel bands, then the pitch features of a pitch_features model."""

import math

import numpy as np
import pytest

from edge_runtime.audio import front_end_params, log_mel
from edge_runtime.features import conditioning_frames, frame_width, lag_range, pitch_features

RATE, HOP, WIN = 8000, 80, 320
CONFIG = {"sample_rate": RATE, "n_fft": 512, "win_length": WIN, "hop_length": HOP, "n_mels": 20, "fmin": 0.0,
          "fmax": 4000.0, "log_floor": 1e-5, "pitch_features": True}


def voice(f0: float, seconds: float = 0.5) -> np.ndarray:
    """A harmonic tone (1/k amplitudes up to 3.8 kHz), like a glottal pulse train's spectrum."""
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.1 * sum(np.sin(2 * np.pi * k * f0 * t + k) / k for k in range(1, int(3800 / f0) + 1))


def estimated_f0(features: np.ndarray) -> np.ndarray:
    """The f0 the pitch column says, per frame (inverse of its log-lag position)."""
    shortest, longest = lag_range(RATE)
    return RATE / (longest / np.exp((1 - features[:, 1]) * math.log(longest / shortest)))


@pytest.mark.parametrize("f0", [65.0, 107.0, 161.0, 250.0, 440.0])
def test_pitch_of_a_harmonic_voice_is_found_within_five_cents(f0):
    """The whole lag range, low male voices to a child's: no octave error, sub-sample precision."""
    features = pitch_features(voice(f0), sample_rate=RATE, hop_length=HOP, win_length=WIN)
    inner = features[4:-4]  # frames whose analysis span lies inside the tone
    assert np.abs(np.log2(estimated_f0(inner) / f0)).max() * 1200 < 5
    assert (1 - inner[:, 0]).min() > 0.97  # voicing: clearly periodic


def test_noise_is_unvoiced_and_silence_reads_as_the_padding():
    noise = np.random.default_rng(0).normal(0, 0.1, RATE)
    features = pitch_features(noise, sample_rate=RATE, hop_length=HOP, win_length=WIN)
    assert (1 - features[:, 0]).mean() < 0.25  # far from the tone's 0.97+
    silence = np.concatenate([np.zeros(8 * HOP), voice(120.0, 0.3)])
    frames = conditioning_frames(silence.astype(np.float32), CONFIG)
    # frames whose whole span is silent: both features at ln(log_floor), the conditioner's silence padding
    assert np.all(frames[:2, 20:] == np.float32(math.log(1e-5)))
    assert np.all(frames[-8:-4, 20] > np.float32(0.05 * math.log(1e-5)))  # the tone's voicing: near 0 (periodic)


def test_frames_are_the_log_mel_then_the_features_and_follow_the_config():
    audio = voice(140.0, 0.41).astype(np.float32)  # not a whole number of frames: the last part is dropped
    frames = conditioning_frames(audio, CONFIG)
    assert frames.dtype == np.float32 and frames.shape == (audio.shape[0] // HOP, 22) and frame_width(CONFIG) == 22
    np.testing.assert_array_equal(frames[:, :20], log_mel(audio, **front_end_params(CONFIG)))
    features = pitch_features(audio, sample_rate=RATE, hop_length=HOP, win_length=WIN)
    np.testing.assert_array_equal(frames[:, 20:], (features * math.log(1e-5)).astype(np.float32))
    plain = {**CONFIG, "pitch_features": False}
    assert frame_width(plain) == 20
    np.testing.assert_array_equal(conditioning_frames(audio, plain), frames[:, :20])
    with pytest.raises(ValueError, match="mono audio"):
        pitch_features(np.zeros((2, 800)), sample_rate=RATE, hop_length=HOP, win_length=WIN)


def test_features_are_centred_on_the_frames_of_the_log_mel():
    """A tone burst in silence is heard by frames placed symmetrically about its middle, as the log-mel's are:
    frame f is centred on f * HOP + HOP / 2, so a burst centred between frames 24 and 25 is voiced from frame
    24 - k to 25 + k (features taken at the start of a frame's span would be late by frames)."""
    audio = np.zeros(50 * HOP)
    audio[20 * HOP:30 * HOP] = voice(130.0, 0.1)  # samples 1600-2399, centred on 2000 = (1960 + 2040) / 2
    voicing = 1 - pitch_features(audio, sample_rate=RATE, hop_length=HOP, win_length=WIN)[:, 0]
    voiced = np.flatnonzero(voicing > 0.1)
    assert voiced[0] + voiced[-1] == 24 + 25 and voiced.size == voiced[-1] - voiced[0] + 1
    assert voiced.size >= 10 and voicing[24] > 0.97
    mel_energy = log_mel(audio, **front_end_params(CONFIG)).max(axis=1)
    loud = np.flatnonzero(mel_energy > math.log(1e-3))
    assert loud[0] + loud[-1] == 24 + 25  # the log-mel's frames, for comparison: the same centres

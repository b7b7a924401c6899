"""Objective speech-quality metrics and the classic baselines they are compared with (numpy; pesq, pystoi, pyworld).

Used by ``tools/quality_report.py``. The metric wrappers return ``None`` for a clip a metric cannot score (too
short for PESQ's level alignment, too little speech for STOI's 30 analysis frames) instead of a silent default
value, so the report can count those clips.
"""

from __future__ import annotations

import warnings

import numpy as np

from edge_runtime.audio import analysis_window, frame_padding, log_mel, mel_filterbank, mu_law_decode, mu_law_encode
from edge_runtime.features import F0_MAX, F0_MIN

DB_PER_NEPER = 20.0 / np.log(10.0)  # log-mel frames hold ln(magnitude)


def pesq_nb(reference: np.ndarray, degraded: np.ndarray, rate: int) -> float | None:
    """Narrow-band PESQ (ITU-T P.862 MOS-LQO, about 1.0–4.55), or None when the clip is too short or silent."""
    from pesq import NoUtterancesError, PesqError, pesq

    if rate not in (8000, 16000):
        raise ValueError(f"PESQ needs 8 or 16 kHz audio, got {rate} Hz")
    if reference.shape[0] < rate // 4:  # P.862 needs at least a quarter of a second
        return None
    try:
        return float(pesq(rate, reference.astype(np.float64), degraded.astype(np.float64), "nb",
                          on_error=PesqError.RAISE_EXCEPTION))
    except NoUtterancesError:
        return None


def stoi(reference: np.ndarray, degraded: np.ndarray, rate: int) -> float | None:
    """Short-time objective intelligibility (0–1), or None when fewer than 30 speech frames remain."""
    from pystoi import stoi as pystoi_stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi_stoi(reference.astype(np.float64), degraded.astype(np.float64), rate, extended=False))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return None
    return value


def log_mel_distance(reference: np.ndarray, degraded: np.ndarray, front_end: dict) -> float:
    """Mean over frames of the RMS over mel bands of the level difference, in dB (0 for identical audio)."""
    a, b = log_mel(reference, **front_end), log_mel(degraded, **front_end)
    n = min(a.shape[0], b.shape[0])
    if n == 0:
        raise ValueError("log-mel distance needs at least one frame of each signal")
    diff = (a[:n].astype(np.float64) - b[:n]) * DB_PER_NEPER
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=1))))


def mu_law_round_trip(audio: np.ndarray, classes: int = 256) -> np.ndarray:
    """The audio quantized to the model's µ-law classes and back: the ceiling of a 256-class model."""
    return mu_law_decode(mu_law_encode(audio, classes), classes).astype(np.float32)


def _frames_and_window(num_samples: int, n_fft: int, win_length: int, hop: int):
    frames = num_samples // hop
    left, right = frame_padding(num_samples, n_fft, hop)
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    return frames, left, right, idx, analysis_window(n_fft, win_length)


def griffin_lim(mel: np.ndarray, front_end: dict, iterations: int = 100, momentum: float = 0.99,
                seed: int = 0) -> np.ndarray:
    """Waveform from log-mel frames: least-squares mel inversion, then fast Griffin-Lim (Perraudin et al. 2013).

    Uses exactly the analysis of :func:`edge_runtime.audio.log_mel` (window, hop, frame centring), so the result
    has ``frames * hop`` samples aligned with the audio the mel came from.
    """
    rate, n_fft, win, hop = (front_end[k] for k in ("sample_rate", "n_fft", "win_length", "hop_length"))
    bank = mel_filterbank(rate, n_fft, front_end["n_mels"], front_end["fmin"], front_end["fmax"])  # [bins, mels]
    target = np.exp(mel.astype(np.float64))  # mel magnitudes [F, mels]
    magnitude = np.maximum(target @ np.linalg.pinv(bank), 0.0)  # [F, bins]
    num = mel.shape[0] * hop
    frames, left, right, idx, window = _frames_and_window(num, n_fft, win, hop)
    padded_len = num + left + right
    norm = np.zeros(padded_len)
    np.add.at(norm, idx, np.broadcast_to(window**2, idx.shape))
    norm = np.maximum(norm, 1e-8)

    def istft(spec):
        out = np.zeros(padded_len)
        np.add.at(out, idx, np.fft.irfft(spec, n_fft, axis=-1) * window)
        return out / norm

    def stft(x):
        return np.fft.rfft(x[idx] * window, axis=-1)

    rng = np.random.default_rng(seed)
    angles = np.exp(2j * np.pi * rng.random(magnitude.shape))
    previous = np.zeros_like(angles)
    for _ in range(iterations):
        rebuilt = stft(istft(magnitude * angles))
        accelerated = rebuilt + momentum * (rebuilt - previous) if momentum else rebuilt
        previous = rebuilt
        angles = accelerated / np.maximum(np.abs(accelerated), 1e-12)
    return istft(magnitude * angles)[left:left + num].astype(np.float32)


# WORLD's D4C computes floor((rate / 2 - 3000) / 3000) aperiodicity bands: none at 8 kHz, where pyworld.d4c then
# interpolates from values it never wrote (scores changed between runs on the same clips). WORLD is therefore
# run at this rate or above.
WORLD_MIN_RATE = 16000


def world_resynthesis(audio: np.ndarray, rate: int) -> np.ndarray:
    """WORLD vocoder analysis (Harvest f0, CheapTrick, D4C; 5 ms frames) and synthesis, same length as the input.

    Below 16 kHz the clip is resampled up, analysed and synthesised there, and resampled back, so D4C has its
    aperiodicity band. Harvest rather than DIO: the more robust f0 estimator, so the baseline is the better WORLD.
    """
    import pyworld
    from scipy.signal import resample_poly

    up = -(-WORLD_MIN_RATE // rate) if rate < WORLD_MIN_RATE else 1
    x = audio.astype(np.float64)
    if up > 1:
        x = resample_poly(x, up, 1)
    work_rate = rate * up
    f0, times = pyworld.harvest(x, work_rate)
    spectral = pyworld.cheaptrick(x, f0, times, work_rate)
    aperiodic = pyworld.d4c(x, f0, times, work_rate)
    y = pyworld.synthesize(f0, spectral, aperiodic, work_rate)
    if up > 1:
        y = resample_poly(y, 1, up)
    y = np.pad(y, (0, max(0, audio.shape[0] - y.shape[0])))[: audio.shape[0]]
    return np.clip(y, -1.0, 1.0).astype(np.float32)


# Pitch errors as vocoder papers report them (Nakatani et al. 2008): a frame voiced in both signals whose f0 is off
# by more than 20 % is a gross pitch error; a frame voiced in one signal only is a voicing decision error.
GPE_TOLERANCE = 0.2


def f0_track(audio: np.ndarray, rate: int) -> np.ndarray:
    """Harvest's f0 every 5 ms (0 where unvoiced): float64 [frames]."""
    import pyworld

    f0, _ = pyworld.harvest(audio.astype(np.float64), rate, f0_floor=F0_MIN, f0_ceil=F0_MAX)  # the features' range
    return f0


def pitch_errors(reference_f0: np.ndarray, degraded: np.ndarray, rate: int) -> tuple[float | None, float]:
    """(gross pitch error rate over the frames voiced in both, or None if there are none; voicing decision error
    rate over all frames) of ``degraded`` against the reference's :func:`f0_track`."""
    f0 = f0_track(degraded, rate)
    n = min(f0.shape[0], reference_f0.shape[0])
    a, b = reference_f0[:n], f0[:n]
    both = (a > 0) & (b > 0)
    gross = np.abs(b[both] / a[both] - 1.0) > GPE_TOLERANCE
    return (float(gross.mean()) if both.any() else None), float(np.mean((a > 0) != (b > 0)))

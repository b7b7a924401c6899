"""µ-law companding and the log-mel front end in numpy: the one definition of the model's audio features.

The TensorFlow front end used in training (``training/audio.py``) takes its window, padding and filterbank from
here, so both compute the same thing (tested to 1e-4). The spectrum is computed in float64 because the log of a
near-floor band amplifies float32 FFT rounding.

Framing: frame ``f`` is centred on sample ``f * hop + hop // 2``, i.e. it describes the samples
``[f * hop, (f + 1) * hop)``. The signal is zero-padded by ``n_fft // 2 - hop // 2`` on the left and as much as
needed on the right; a signal of ``T`` samples gives ``T // hop`` frames.
"""

from __future__ import annotations

import numpy as np


def mu_law_encode(audio: np.ndarray, classes: int = 256) -> np.ndarray:
    """Float audio in [-1, 1] -> int32 class indices in [0, classes)."""
    mu = classes - 1
    x = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.floor((y + 1.0) / 2.0 * mu + 0.5).astype(np.int32)


def mu_law_decode(classes_: np.ndarray, classes: int = 256) -> np.ndarray:
    """Int class indices -> float32 audio in [-1, 1] (the centre of each µ-law bin)."""
    mu = classes - 1
    y = 2.0 * np.asarray(classes_, dtype=np.float64) / mu - 1.0
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def scale_to_peak(audio: np.ndarray, peak: float) -> tuple[np.ndarray, float]:
    """A recording scaled to a model's ``normalize_peak`` (float32), and the gain (1.0 when the model has none, or
    for silence). Training scales every recording so; the runtime scales a recording so before its log-mel and
    divides the output by the gain, so the voice comes back at the recording's level."""
    top = float(np.max(np.abs(audio))) if np.size(audio) else 0.0
    gain = peak / top if peak > 0 and top > 0 else 1.0
    return (np.asarray(audio, np.float32) * np.float32(gain)).astype(np.float32), gain


def preemphasize(audio: np.ndarray, alpha: float) -> np.ndarray:
    """x[t] - alpha * x[t-1] (silence before the first sample); float32. alpha 0 returns the audio unchanged."""
    x = np.asarray(audio, dtype=np.float32)
    if alpha == 0:
        return x
    out = x.copy()
    out[1:] -= np.float32(alpha) * x[:-1]
    return out


class Deemphasis:
    """The inverse filter y[t] = e[t] + alpha * y[t-1], with its state carried from one chunk to the next.

    A plain loop over Python floats: every sample goes through the same float64 operations however the signal is
    chunked, so streamed output equals offline output bit for bit (0.065 µs per sample in 512-sample chunks).
    """

    def __init__(self, alpha: float, streams: int = 1):
        self.alpha, self.streams = float(alpha), streams
        self.reset()

    def reset(self) -> None:
        """Silence before the next sample."""
        self._last = [0.0] * self.streams

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """Filters a chunk [n] (one stream) or [n, B]; returns float32 in [-1, 1]."""
        if self.alpha == 0:
            return chunk
        a = self.alpha
        columns = chunk.reshape(chunk.shape[0], -1).T.tolist()  # [B][n]
        for b, column in enumerate(columns):
            y = self._last[b]
            for i, e in enumerate(column):
                y = e + a * y
                column[i] = y
            self._last[b] = y
        out = np.asarray(columns, np.float64).T.reshape(chunk.shape)
        return np.clip(out, -1.0, 1.0).astype(np.float32)


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale, area-normalised (Slaney): float64 [n_fft // 2 + 1, n_mels]."""
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return weights.T


def analysis_window(n_fft: int, win_length: int) -> np.ndarray:
    """Periodic Hann window of ``win_length``, zero-padded to ``n_fft`` and centred: float64 [n_fft]."""
    n = np.arange(win_length)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    window = np.zeros(n_fft)
    start = (n_fft - win_length) // 2
    window[start:start + win_length] = hann
    return window


def frame_padding(num_samples: int, n_fft: int, hop: int) -> tuple[int, int]:
    """Zeros added (left, right) so that ``num_samples // hop`` frames centred per the module docstring fit."""
    left = n_fft // 2 - hop // 2
    frames = num_samples // hop
    right = max(0, (frames - 1) * hop + n_fft - left - num_samples) if frames else 0
    return left, right


def log_mel(audio: np.ndarray, *, sample_rate: int, n_fft: int, win_length: int, hop_length: int, n_mels: int,
            fmin: float, fmax: float, log_floor: float) -> np.ndarray:
    """Log-mel frames of a mono float signal.

    Args:
        audio: float samples in [-1, 1], shape [T].
        sample_rate, n_fft, win_length, hop_length, n_mels, fmin, fmax, log_floor: the config's front end.

    Returns:
        float32 [T // hop_length, n_mels]: ``log(max(mel_magnitude, log_floor))``.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"log_mel expects mono audio of shape [T], got shape {x.shape}")
    frames = x.shape[0] // hop_length
    if frames == 0:
        return np.zeros((0, n_mels), np.float32)
    left, right = frame_padding(x.shape[0], n_fft, hop_length)
    padded = np.pad(x, (left, right))
    window, bank = analysis_window(n_fft, win_length), mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    out = np.empty((frames, n_mels), np.float32)
    block = 256  # frames per FFT batch: bounded memory for long recordings
    for start in range(0, frames, block):
        idx = np.arange(start, min(frames, start + block))[:, None] * hop_length + np.arange(n_fft)[None, :]
        spectrum = np.abs(np.fft.rfft(padded[idx] * window, axis=-1))
        out[start:start + idx.shape[0]] = np.log(np.maximum(spectrum @ bank, log_floor))
    return out


FRONT_END_KEYS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax", "log_floor")


def front_end_params(config: dict) -> dict:
    """Picks the front end's keyword arguments out of a config dict (training config or manifest)."""
    return {k: config[k] for k in FRONT_END_KEYS}

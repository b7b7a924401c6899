"""A model's conditioning frames: its log-mel bands, then (``pitch_features`` models) two pitch features per frame.

The pitch features follow LPCNet, whose network reads the pitch period and its correlation beside the spectral
envelope: a vocoder conditioned on the envelope alone has to infer the period from the harmonics, and ours
did not always (on FSDD's lowest voice about 6 % of voiced frames came out an octave high, measured with
Harvest on the output). Per frame, on the frame's own centre:

- ``voicing``: the peak normalised cross-correlation of the signal with itself one period later, in [0, 1];
- ``pitch``: that period as a position between the longest (60 Hz) and the shortest (500 Hz) lag, in [0, 1],
  log-spaced.

Both are written in the units of a log-mel band, ``u * ln(log_floor)`` read from the floor: ``ln(log_floor)``
(the conditioner's silence padding) at 0 and 0 at 1. Silence and unvoiced frames therefore look like the padding,
the conditioner's mel normalisation maps the features to [-1, 1] like the bands, and nothing downstream of the
frames (padding, chunking, streaming) needs to know they are there.
"""

from __future__ import annotations

import math

import numpy as np

from edge_runtime.audio import front_end_params, log_mel

PITCH_FEATURES = 2  # columns after the log-mel bands: voicing, pitch
F0_MIN, F0_MAX = 60.0, 500.0  # Hz: the lag range searched (speech, low male to child)
OCTAVE_TOLERANCE = 0.95  # the shortest lag whose peak reaches this fraction of the best one wins: a period's
# multiples correlate almost as well as the period itself, and picking them is the classic octave-low error
SILENCE_ENERGY = 1e-10  # per sample: below it the correlation is undefined, the frame counts as unvoiced
BLOCK = 256  # frames per batch: bounded memory for long recordings


def frame_width(config: dict) -> int:
    """Values per conditioning frame: the log-mel bands, plus the pitch features of a ``pitch_features`` model."""
    return int(config["n_mels"]) + (PITCH_FEATURES if config.get("pitch_features") else 0)


def describe_frame(config: dict) -> str:
    """What a conditioning frame holds, for messages: "80 bands" or "80 log-mel bands and 2 pitch features"."""
    if config.get("pitch_features"):
        return f"{config['n_mels']} log-mel bands and {PITCH_FEATURES} pitch features"
    return f"{config['n_mels']} bands"


def conditioning_frames(audio: np.ndarray, config: dict) -> np.ndarray:
    """The frames a model is conditioned on, of float audio [T] (at the model's level): float32 [T // hop, width]."""
    mel = log_mel(audio, **front_end_params(config))
    if not config.get("pitch_features"):
        return mel
    features = pitch_features(audio, sample_rate=int(config["sample_rate"]), hop_length=int(config["hop_length"]),
                              win_length=int(config["win_length"]))
    return np.concatenate([mel, (features * math.log(config["log_floor"])).astype(np.float32)], axis=1)


def lag_range(sample_rate: int) -> tuple[int, int]:
    """The shortest and longest lag searched, in samples."""
    return int(sample_rate // F0_MAX), int(math.ceil(sample_rate / F0_MIN))


def pitch_features(audio: np.ndarray, *, sample_rate: int, hop_length: int, win_length: int) -> np.ndarray:
    """``1 - voicing`` and ``1 - pitch`` per frame (0 for a clearly periodic frame, 1 for silence): float64
    [T // hop, 2]. Frame f is centred on sample ``f * hop + hop // 2`` like the log-mel's; the correlation sums run
    over ``win_length`` samples, the two windows of each lag placed symmetrically about the centre, zeros outside
    the signal."""
    x = np.asarray(audio, np.float64)
    if x.ndim != 1:
        raise ValueError(f"pitch_features expects mono audio of shape [T], got shape {x.shape}")
    frames = x.shape[0] // hop_length
    shortest, longest = lag_range(sample_rate)
    span = win_length + longest
    first = hop_length // 2 - span // 2  # start of frame 0's span, relative to the signal
    left = max(0, -first)
    padded = np.pad(x, (left, max(0, (frames - 1) * hop_length + first + span - x.shape[0])))
    out = np.ones((frames, 2))
    for start in range(0, frames, BLOCK):
        f = np.arange(start, min(frames, start + BLOCK))
        spans = padded[(f * hop_length + first + left)[:, None] + np.arange(span)[None, :]]
        out[f] = _frame_features(spans, win_length, shortest, longest)
    return out


def _frame_features(spans: np.ndarray, window: int, shortest: int, longest: int) -> np.ndarray:
    """The two features of each row of ``spans`` [N, window + longest]: [N, 2] (see :func:`pitch_features`)."""
    lags = np.arange(shortest, longest + 1)
    starts = (longest - lags) // 2  # each lag's pair of windows sits symmetrically about the frame's centre
    energy = np.cumsum(np.pad(spans * spans, ((0, 0), (1, 0))), axis=1)
    first = energy[:, starts + window] - energy[:, starts]  # [N, lags]
    second = energy[:, starts + lags + window] - energy[:, starts + lags]
    dot = np.stack([np.einsum("ij,ij->i", spans[:, o:o + window], spans[:, o + k:o + k + window])
                    for o, k in zip(starts, lags)], axis=1)
    r = dot / np.sqrt(np.maximum(first * second, 1e-300))
    e0 = energy[:, -1] / (window + longest) * window  # the span's mean power, over a window
    best = _pick_period(r)
    rows = np.arange(r.shape[0])
    peak = r[rows, best]
    lag = lags[best] + _parabolic_offset(r, best)
    voiced = np.clip(peak, 0.0, 1.0)
    position = np.clip(np.log(longest / lag) / math.log(longest / shortest), 0.0, 1.0)
    silent = e0 < SILENCE_ENERGY * window
    return np.stack([np.where(silent, 1.0, 1.0 - voiced), np.where(silent, 1.0, 1.0 - position)], axis=1)


def _pick_period(r: np.ndarray) -> np.ndarray:
    """Index of each row's period: the shortest local maximum within :data:`OCTAVE_TOLERANCE` of the row's best."""
    inner = (r[:, 1:-1] >= r[:, :-2]) & (r[:, 1:-1] >= r[:, 2:])
    peaks = np.zeros_like(r, dtype=bool)
    peaks[:, 1:-1] = inner
    peaks[np.arange(r.shape[0]), np.argmax(r, axis=1)] = True  # an edge maximum counts too
    top = np.max(r, axis=1, keepdims=True)
    good = peaks & (r >= np.where(top > 0, OCTAVE_TOLERANCE * top, top))
    return np.argmax(good, axis=1)  # the first True


def _parabolic_offset(r: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Sub-sample offset of each row's peak from the parabola through it and its neighbours (0 at the edges)."""
    rows = np.arange(r.shape[0])
    inside = (best > 0) & (best < r.shape[1] - 1)
    i = np.clip(best, 1, r.shape[1] - 2)
    a, b, c = r[rows, i - 1], r[rows, i], r[rows, i + 1]
    curve = a - 2 * b + c
    offset = np.where(curve < 0, 0.5 * (a - c) / np.where(curve < 0, curve, -1.0), 0.0)
    return np.where(inside, np.clip(offset, -0.5, 0.5), 0.0)


def frame_lags(frames: np.ndarray, config: dict) -> np.ndarray:
    """Each conditioning frame's pitch period as a whole number of samples (the longest lag where unvoiced or
    silent), from its pitch feature: int64 [F] of frames [F, width] of a ``pitch_features`` model."""
    shortest, longest = lag_range(int(config["sample_rate"]))
    position = 1.0 - np.asarray(frames, np.float64)[:, int(config["n_mels"]) + 1] / math.log(config["log_floor"])
    position = np.clip(np.nan_to_num(position, nan=0.0), 0.0, 1.0)  # a frame's feature off its range: an end
    return np.rint(longest * (shortest / longest) ** position).astype(np.int64)

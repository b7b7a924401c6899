"""The period input of an excitation model (``period_input``): the excitation one pitch period back.

A voiced excitation is a pulse train: the sample one period before the one being generated is its best
single predictor (the long-term predictor of speech codecs; FARGAN and LPCNet's successors feed it to the
network). A WaveNet sees that sample inside its receptive field, but picking it out needs the lag, which
changes frame by frame; this input hands it over directly, as the µ-law class of ``e[t - L]`` through one more
embedding table summed into layer 0's input, ``L`` the frame's period from its pitch features
(edge_runtime/features.py; the longest lag in unvoiced and silent frames). Training (:func:`period_classes`)
and the runtime (:class:`PeriodHistory`) index the same classes, so teacher-forced rows equal training's.
"""

from __future__ import annotations

import numpy as np


def period_classes(classes: np.ndarray, lags: np.ndarray, hop: int, silence: int) -> np.ndarray:
    """At every position t of an utterance (whose step predicts sample t + 1): the class of ``e[t + 1 - L]``,
    ``L`` the lag of sample t + 1's frame; ``silence`` before the utterance and at the last position (whose
    logit is never scored). int32 [T] of classes [T] and integer lags per frame [F]."""
    classes = np.asarray(classes)
    target = np.arange(1, classes.shape[0] + 1)
    frame = np.minimum(target // hop, lags.shape[0] - 1)
    source = target - np.asarray(lags, np.int64)[frame]
    out = np.where(source >= 0, classes[np.clip(source, 0, None)], silence).astype(np.int32)
    out[-1] = silence
    return out


class PeriodHistory:
    """The generated classes per stream, and each next sample's class one period back (:func:`period_classes`
    step by step). Lags come frame by frame as the conditioning arrives; samples one at a time."""

    def __init__(self, hop: int, longest: int, streams: int, silence: int):
        self.hop, self.streams, self.silence = hop, streams, silence
        self._size = 1 << int(longest).bit_length()  # a ring longer than the longest lag
        self._streams = np.arange(streams)
        self.reset()

    def reset(self) -> None:
        """Silence before the next sample; forgets the lags."""
        self._ring = np.full((self.streams, self._size), self.silence, np.int64)
        self._lags = np.zeros((self.streams, 0), np.int64)  # [B, frames held]
        self._first = 0  # index of the oldest frame held
        self._t = 0  # index of the next sample

    def add_frames(self, lags: np.ndarray) -> None:
        """Integer lags of the next frames: [k] (one stream) or [k, B]."""
        lags = np.asarray(lags, np.int64).reshape(-1, self.streams).T
        done = self._t // self.hop - self._first  # frames whose samples are all generated
        self._lags = np.concatenate([self._lags[:, done:], lags], axis=1)
        self._first += done

    def next_classes(self) -> np.ndarray:
        """The class one period before the next sample, per stream: int64 [B]."""
        frame = self._t // self.hop - self._first
        if frame >= self._lags.shape[1]:
            raise IndexError(f"sample {self._t} needs the lag of frame {self._t // self.hop}, which has not arrived")
        source = self._t - self._lags[:, frame]
        return np.where(source >= 0, self._ring[self._streams, source % self._size], self.silence)

    def take(self, n: int) -> np.ndarray:
        """The lags of the next n samples of stream 0, int64 [n], moving past them without their classes: for a
        loop that keeps the classes itself (the native engine)."""
        frames = (self._t + np.arange(n)) // self.hop - self._first
        if n and frames[-1] >= self._lags.shape[1]:
            raise IndexError(f"sample {self._t + n - 1} needs the lag of frame {(self._t + n - 1) // self.hop}, "
                             "which has not arrived")
        self._t += n
        return np.ascontiguousarray(self._lags[0, frames])

    def push(self, samples: np.ndarray) -> None:
        """The classes [B] just generated (or forced)."""
        self._ring[:, self._t % self._size] = samples
        self._t += 1

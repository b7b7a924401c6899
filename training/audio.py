"""µ-law companding and the log-mel front end in TensorFlow.

The framing, window and filterbank are those of ``edge_runtime.audio`` (the one definition); this module only
re-expresses the computation in TensorFlow so it can run inside a tf.data pipeline. Both agree to 1e-4.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from edge_runtime.audio import analysis_window, frame_padding, mel_filterbank


def mu_law_encode(audio: tf.Tensor, classes: int = 256) -> tf.Tensor:
    """Float audio in [-1, 1] -> int32 classes in [0, classes)."""
    mu = float(classes - 1)
    x = tf.clip_by_value(tf.cast(audio, tf.float64), -1.0, 1.0)
    y = tf.sign(x) * tf.math.log1p(mu * tf.abs(x)) / np.log1p(mu)
    return tf.cast(tf.floor((y + 1.0) / 2.0 * mu + 0.5), tf.int32)


def mu_law_decode(classes_: tf.Tensor, classes: int = 256) -> tf.Tensor:
    """Int classes -> float32 audio in [-1, 1]."""
    mu = float(classes - 1)
    y = 2.0 * tf.cast(classes_, tf.float64) / mu - 1.0
    return tf.cast(tf.sign(y) * tf.math.expm1(tf.abs(y) * np.log1p(mu)) / mu, tf.float32)


class LogMel:
    """A log-mel front end for one config: ``LogMel(...)(audio [T]) -> float32 [T // hop, n_mels]``."""

    def __init__(self, *, sample_rate: int, n_fft: int, win_length: int, hop_length: int, n_mels: int,
                 fmin: float, fmax: float, log_floor: float):
        self.n_fft, self.hop, self.n_mels, self.log_floor = n_fft, hop_length, n_mels, log_floor
        self.window = tf.constant(analysis_window(n_fft, win_length), tf.float64)
        self.filterbank = tf.constant(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax), tf.float64)
        self._fn = tf.function(self._compute, input_signature=[tf.TensorSpec([None], tf.float32)])

    def __call__(self, audio) -> tf.Tensor:
        return self._fn(tf.convert_to_tensor(audio, tf.float32))

    def _compute(self, audio: tf.Tensor) -> tf.Tensor:
        x = tf.cast(audio, tf.float64)
        num = tf.shape(x)[0]
        frames = num // self.hop
        left = self.n_fft // 2 - self.hop // 2
        # Same padding as edge_runtime.audio.frame_padding, in graph form.
        right = tf.maximum(0, (frames - 1) * self.hop + self.n_fft - left - num)
        padded = tf.pad(x, [[left, right]])
        framed = tf.signal.frame(padded, self.n_fft, self.hop, pad_end=False)[:frames]  # [F, n_fft]
        spectrum = tf.abs(tf.signal.rfft(framed * self.window))
        mel = tf.matmul(spectrum, self.filterbank)
        return tf.cast(tf.math.log(tf.maximum(mel, self.log_floor)), tf.float32)


__all__ = ["mu_law_encode", "mu_law_decode", "LogMel", "frame_padding"]

"""Teacher-forced negative log-likelihood of a model over whole utterances, in bits per sample."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from training.config import Config
from training.data import Utterance


def utterance_inputs(u: Utterance, config: Config) -> dict:
    """Model inputs (batch of one) for a whole utterance."""
    inputs = {"audio": u.classes[None]}
    if config.use_mel:
        inputs["mel"] = u.mel[None]
    if config.lpc_inputs:
        inputs["lpc"] = u.lpc[None]
    if config.use_speaker:
        inputs["speaker"] = np.array([u.speaker], np.int32)
    return inputs


class NLLScorer:
    """Scores utterances one at a time (no padding, so every utterance is scored exactly as the runtime sees it).

    Each utterance of T samples contributes T - 1 predictions: sample t+1 given samples <= t and the conditioning.
    """

    def __init__(self, model, config: Config):
        self.config = config
        spec = {"audio": tf.TensorSpec([1, None], tf.int32)}
        if config.use_mel:
            spec["mel"] = tf.TensorSpec([1, None, config.frame_width], tf.float32)
        if config.lpc_inputs:
            spec["lpc"] = tf.TensorSpec([1, None, config.lpc_columns], tf.int32)
        if config.use_speaker:
            spec["speaker"] = tf.TensorSpec([1], tf.int32)

        @tf.function(input_signature=[spec])
        def nats(inputs):
            logits = model(inputs, training=False)[:, :-1]  # [1, T-1, classes]
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(inputs["audio"][:, 1:], logits)
            return tf.reduce_sum(ce)

        self._nats = nats

    def __call__(self, utterances: list[Utterance]) -> tuple[float, int]:
        """Returns (mean NLL in bits/sample, number of scored samples)."""
        total, count = 0.0, 0
        for u in utterances:
            total += float(self._nats(utterance_inputs(u, self.config)))
            count += u.num_samples - 1
        if count == 0:
            raise ValueError("no samples to score")
        return total / count / math.log(2), count

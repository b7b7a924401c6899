"""Sampling the next class by Gumbel-max: ``argmax(logits + noise)`` with the noise drawn ahead for a block of
steps, so the step loop only adds and takes an argmax."""

from __future__ import annotations

import numpy as np


def gumbel_noise(rng: np.random.Generator, n: int, batch: int, classes: int, temperature: float,
                 logit_scale: float) -> np.ndarray | None:
    """Noise [n, batch, classes] in the logits' units (``logit_scale``: their quantization scale, 1.0 for float
    logits): argmax((q - z) s / T + g) = argmax(q + g T / s). ``None`` at temperature 0 (plain argmax).

    Drawn in float32 as -log(-log(u)) in place: 0.8 µs per sample instead of 3.5 µs for ``rng.gumbel``.
    """
    if temperature == 0:
        return None
    g = rng.random((n, batch, classes), dtype=np.float32)
    np.maximum(g, np.finfo(np.float32).tiny, out=g)
    np.log(g, out=g)
    np.negative(g, out=g)
    np.log(g, out=g)
    np.multiply(g, -temperature / logit_scale, out=g)
    return g

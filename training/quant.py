"""Fake quantization for quantization-aware training (QAT), at exactly the tensors the int8 step graph quantizes.

The full-int8 step graph (``export --quantize int8``) holds int8 tensors with one scale each. A QAT model
(``Config.qat``) rounds the same tensors to the same grids during training, so that the network learns to live
with the rounding, and the exported graph carries the learned ranges: the step graph of a QAT run has a
``FakeQuantWithMinMaxVars`` at each of these tensors, whose ranges the TFLite converter takes as the int8 scales
(measured: every scale of the int8 graph equals its fake quant's, no calibration involved).

Quantization points, by name (one definition, used by :func:`training.model.gated_unit` and
:func:`training.model.output_head` in both the training model and the step graph):

=========  ======================================================  ==========================================
name       tensor                                                  range
=========  ======================================================  ==========================================
state      every layer's output x_{l+1} (site l) and the sample     moving min/max per site; one shared range,
           embedding x_0 (site L-1): the residual stream, the      or per layer and symmetric (see below)
           step's ``state`` input and ``new_state`` output
cond       layer l's conditioning gate input c' V_l + s U_l        moving, shared (one ``cond`` input)
pre        the dilated convolution's output (FULLY_CONNECTED)      moving, per layer
gate       its sum with the conditioning (the gate pre-activation) moving, per layer
tanh       tanh half of the gate                                   fixed: TFLite's int8 TANH output
sigmoid    sigmoid half                                            fixed: TFLite's int8 LOGISTIC output
z          their product, the gate output                          fixed, as tanh (it lies in (-1, 1))
res        the residual 1x1's output                               moving, per layer
skip       relu of the skip sum (the relu fuses into the FC)       moving
head       relu of the first head layer                            moving
logits     the logits                                              moving
=========  ======================================================  ==========================================

The ``state`` input is one int8 tensor, so one scale for every layer's rows. ``Config.qat_state_scales``
"shared" quantizes every site at the union of their ranges: the sample embedding (|x| < 1) then gets a few
dozen levels of a grid sized for the last layers (|x| ~ 9). "per_layer" gives each site its own symmetric
range [-m_l, m_l * 127/128] (zero point exactly 0) and the step graph stores layer l's rows as g_l x with
g_l = M / m_l (M the largest m_l): every layer's values land on the one grid [-M, M] with the same integer codes
as on its own, and the graph multiplies them back by 1/g_l (an exact requantization in int8) before using them.

Weights of every FULLY_CONNECTED (dilated convolutions, residual, skip, head) are rounded per output channel,
symmetric, to 127 steps each side: the converter's own int8 weight scheme, so weights snapped to this grid
(:func:`snap_weights`) convert to exactly the same int8 values. The conditioning projections, speaker biases and
the sample embedding stay float (they live in the float conditioner graph and the manifest's tables).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

# TFLite's int8 TANH output has scale 1/128 and zero point 0, LOGISTIC's 1/256 and -128: a fake quant over
# these exact ranges rounds like the kernels do (another range would make the converter requantize).
TANH_RANGE = (-1.0, 127.0 / 128.0)
SIGMOID_RANGE = (0.0, 255.0 / 256.0)
FIXED_RANGES = {"tanh": TANH_RANGE, "sigmoid": SIGMOID_RANGE, "z": TANH_RANGE}
# Tracked tensors: name -> whether all its sites share one range (one int8 tensor in the step graph; "state"
# only with qat_state_scales "shared").
SHARED = {"state": True, "cond": True, "pre": False, "gate": False, "res": False, "skip": False, "head": False,
          "logits": False}


def fake_quant(x, lo, hi):
    """Rounds ``x`` to the 256-level int8 grid of [lo, hi] (nudged so that 0 is exact, as TFLite does).

    ``tf.quantization.fake_quant_with_min_max_vars`` on the TensorFlow backend: the op the converter reads.
    Gradients pass straight through inside the range.
    """
    return keras.quantizers.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=False)


def snap_weights(w):
    """Weights rounded per output channel (the last axis), symmetric, 127 steps each side.

    A convolution kernel [k, R, G] is one channel per column of the step graph's [k * R, G] matrix. A
    straight-through estimator: the forward pass sees the grid, the gradient goes to the float weights.
    """
    axes = tuple(range(len(w.shape) - 1))
    m = ops.stop_gradient(ops.max(ops.abs(w), axis=axes, keepdims=True))
    scale = ops.where(m > 0, m / 127.0, ops.ones_like(m))
    return w + ops.stop_gradient(ops.round(w / scale) * scale - w)


def snap_numpy(w: np.ndarray) -> np.ndarray:
    """:func:`snap_weights` as numpy (the step graph's constants)."""
    return np.asarray(snap_weights(ops.convert_to_tensor(w, "float32")), np.float32)


def effective_ranges(minmax, shared: bool, symmetric: bool = False):
    """The range each site quantizes with: its own [sites, 2], or for a shared name the union of all sites.

    Sites not yet observed hold [0, 0], which only adds 0 to the union: the grid contains 0 anyway.
    ``symmetric`` (per-site ranges only): [-m, m * 127/128] with m the larger bound's magnitude, so that the
    zero point is exactly 0 and grids of different sites are multiples of each other.
    """
    if symmetric:
        m = ops.maximum(ops.abs(minmax[:, 0]), ops.abs(minmax[:, 1]))
        return ops.stack([-m, m * (127.0 / 128.0)], axis=1)
    if not shared:
        return minmax
    union = ops.stack([ops.min(minmax[:, 0]), ops.max(minmax[:, 1])])
    return ops.broadcast_to(union[None], ops.shape(minmax))


class RangeTracker(layers.Layer):
    """Moving min/max of one named tensor at ``sites`` places (layers), and its fake quantization.

    In training, each call first folds the batch's min/max into the site's moving average (decay ``decay``
    after a warm-up in which it is the plain mean of the batches seen, like the weights' EMA), then rounds.
    The ranges are non-trainable weights: saved with checkpoints, exported to the step graph.
    """

    def __init__(self, sites: int, shared: bool, decay: float, symmetric: bool = False, **kwargs):
        super().__init__(**kwargs)
        if shared and symmetric:
            raise ValueError("a shared range is the union of its sites' ranges, not symmetric")
        self.sites, self.shared, self.decay, self.symmetric = sites, shared, decay, symmetric

    def build(self, input_shape=None):
        # aggregation "mean": replicas of a mirrored strategy each fold in their own batch, then agree
        self.minmax = self.add_weight(shape=(self.sites, 2), initializer="zeros", trainable=False, name="minmax",
                                      aggregation="mean", autocast=False)
        self.count = self.add_weight(shape=(self.sites,), initializer="zeros", trainable=False, name="count",
                                     aggregation="mean", autocast=False)

    def call(self, x, site: int = 0, training=None):
        if training:
            self._observe(x, site)
        ranges = effective_ranges(self.minmax, self.shared, self.symmetric)
        quantized = fake_quant(x, ranges[site, 0], ranges[site, 1])
        # an untracked tensor (a model not yet calibrated) passes through: [0, 0] would zero it
        return ops.where(ops.max(self.count) > 0, quantized, ops.cast(x, quantized.dtype))

    def _observe(self, x, site: int) -> None:
        x = ops.stop_gradient(ops.cast(x, "float32"))
        seen = ops.stack([ops.min(x), ops.max(x)])
        n = self.count[site]
        decay = ops.minimum(self.decay, n / (n + 1.0))  # n = 0: take the batch's range as it is
        row = decay * self.minmax[site] + (1.0 - decay) * seen
        hot = ops.one_hot(site, self.sites)
        self.minmax.assign(self.minmax * (1.0 - hot[:, None]) + row[None] * hot[:, None])
        self.count.assign(self.count + hot)

    def get_config(self):
        return {**super().get_config(), "sites": self.sites, "shared": self.shared, "decay": self.decay,
                "symmetric": self.symmetric}


def make_trackers(n_layers: int, decay: float, conditioned: bool, state_per_layer: bool = False) -> dict:
    """Every tracked name's RangeTracker (sites: one per layer, or one) for a model of ``n_layers`` layers.

    ``state_per_layer``: the residual stream on a symmetric range per site (``qat_state_scales`` "per_layer").
    """
    sites = {"state": n_layers, "pre": n_layers, "res": n_layers - 1, "skip": 1, "head": 1, "logits": 1}
    if conditioned:
        sites.update(cond=n_layers, gate=n_layers)
    per_site = {"state"} if state_per_layer else set()
    return {name: RangeTracker(n, SHARED[name] and name not in per_site, decay, symmetric=name in per_site,
                               name=f"{name}_range") for name, n in sites.items()}


def quantizer(trackers: dict | None, site: int = 0):
    """``q(name, x)`` for one site: fake quantization by name (fixed or tracked), the identity without QAT."""
    if trackers is None:
        return lambda name, x: x

    def q(name, x):
        if name in FIXED_RANGES:
            return fake_quant(x, *FIXED_RANGES[name])
        return trackers[name](x, site=site)

    return q


def constant_quantizer(ranges: dict | None, site: int = 0):
    """``q(name, x)`` over exported ranges (``{name: [sites, 2]}`` numpy, see :func:`export_ranges`)."""
    if ranges is None:
        return lambda name, x: x

    def q(name, x):
        lo, hi = FIXED_RANGES[name] if name in FIXED_RANGES else ranges[name][site]
        return fake_quant(x, float(lo), float(hi))

    return q


def export_ranges(trackers: dict) -> dict:
    """``{name: float32 [sites, 2]}``: the range every site of the step graph quantizes with."""
    return {name: np.asarray(effective_ranges(t.minmax, t.shared, t.symmetric), np.float32)
            for name, t in trackers.items()}

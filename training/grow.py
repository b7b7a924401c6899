"""Growing a trained model into a larger one that computes exactly the same function (``--finetune-from`` with a
larger ``stacks``, width or conditioning frame): the source's weights are copied into the new shapes, and every
weight that *reads* a new channel starts at zero, so the new channels change nothing until training moves those
weights (Net2Net's function-preserving growth, with zero instead of copied units).

Weights that *write* new channels keep the new model's random initialisation: a channel that started at zero
everywhere would get no gradient through the relu after the skip sum, and random values are harmless where every
reader is zero. New layers (a larger ``stacks``, appended after the old ones with the same dilations) are likewise
random, and their rows of the skip projection start at zero.

Axes by kind: R residual channels, G the dilated convolution's output (filter half, then gate half: a wider gate
grows both halves), H a gate half, LH the concatenated gate outputs of all layers (the skip projection's input),
S skip, D head, C conditioning channels, F the conditioning frame's values (log-mel bands, then pitch features).
"""

from __future__ import annotations

import re

import numpy as np

from training.config import Config

# Fields a float fine-tune may increase (see training/qat.py).
GROWABLE = ("stacks", "residual_channels", "gate_channels", "skip_channels", "head_channels", "cond_channels")

# Variable path (under wavenet/) -> the kind of each axis; None: an axis whose size never changes.
_AXES = [
    (r"(sample|signal|prediction|period)_embedding/embeddings", (None, "R")),
    (r"upsampler/smooth_\d+", (None,)),
    (r"upsampler/frame_conv_0/kernel", (None, "F", "C")),
    (r"upsampler/frame_conv_\d+/kernel", (None, "C", "C")),
    (r"upsampler/frame_conv_\d+/bias", ("C",)),
    (r"speaker_embedding/embeddings", (None, None)),
    (r"layer_\d+/conv/kernel", (None, "R", "G")),
    (r"layer_\d+/conv/bias", ("G",)),
    (r"layer_\d+/cond/kernel", ("cond_in", "G")),
    (r"layer_\d+/speaker/kernel", (None, "G")),
    (r"layer_\d+/res/kernel", ("H", "R")),
    (r"layer_\d+/res/bias", ("R",)),
    (r"skip/kernel", ("LH", "S")),
    (r"skip/bias", ("S",)),
    (r"head_1/kernel", ("S", "D")),
    (r"head_1/bias", ("D",)),
    (r"head_2/kernel", ("D", None)),
    (r"head_2/bias", (None,)),
]


def axis_kinds(path: str) -> tuple:
    """The kinds of ``path``'s axes (see the module docstring)."""
    name = path.removeprefix("wavenet/")
    for pattern, kinds in _AXES:
        if re.fullmatch(pattern, name):
            return kinds
    raise ValueError(f"no growth rule for the weight {path}")


def index_maps(old: Config, new: Config) -> dict[str, np.ndarray]:
    """For each axis kind, where the old model's indices go in the new model's axis."""
    oh, nh = old.gate_channels // 2, new.gate_channels // 2
    maps = {"R": np.arange(old.residual_channels), "H": np.arange(oh), "S": np.arange(old.skip_channels),
            "D": np.arange(old.head_channels), "C": np.arange(old.cond_channels),
            "F": np.arange(old.frame_width),
            "G": np.concatenate([np.arange(oh), nh + np.arange(oh)]),
            "LH": np.concatenate([layer * nh + np.arange(oh) for layer in range(old.n_layers)])}
    maps["cond_in"] = maps["C"] if old.cond_layers else maps["F"]
    return maps


def grow_arrays(arrays: dict[str, np.ndarray], old: Config, new: Config,
                fresh: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights of ``new`` computing what ``arrays`` (weights of ``old``) compute.

    ``fresh``: the new model's initial weights {path: array}, which supply the values of new output channels and
    new layers. Weights of equal shape pass through unchanged.
    """
    maps = index_maps(old, new)
    grown = {}
    for path, init in fresh.items():
        if path not in arrays:  # a new layer's weights, or the residual output of the old last layer
            grown[path] = init
            continue
        source = arrays[path]
        if source.shape == init.shape:
            grown[path] = source
            continue
        index = [np.arange(n) if kind is None else maps[kind] for kind, n in zip(axis_kinds(path), source.shape)]
        w = init.copy()
        if w.ndim >= 2:  # the input axis: rows reading new channels start at zero
            w[..., np.setdiff1d(np.arange(w.shape[-2]), index[-2]), :] = 0
        w[np.ix_(*index)] = source
        grown[path] = w
    return grown

"""TFLite conversion of the step and conditioner graphs, per quantization variant, and graph inspection."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

VARIANTS = ("float32", "float16", "dynamic", "int8")

# Ops the Edge TPU compiler maps (coral.ai/docs/edgetpu/models-intro, "Supported operations"), as TFLite names.
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD",
    "PRELU", "QUANTIZE", "DEQUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT",
    "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})


def convert(concrete_fn, variant: str, representative: Callable[[], Iterable[dict]] | None = None) -> bytes:
    """Converts one concrete function to a TFLite flatbuffer.

    Args:
        concrete_fn: the graph (fixed input shapes).
        variant: ``float32``; ``float16`` (float16 weights); ``dynamic`` (int8 weights, float activations);
            ``int8`` (full integer, int8 inputs and outputs, calibrated on ``representative``).
        representative: for ``int8``, a callable yielding input dicts keyed by signature input name.
    """
    # A SignatureDef (named inputs/outputs) needs the function as a tf.Module's signature.
    module = tf.Module()
    module.fn = concrete_fn
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_fn], module)
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if representative is None:
            raise ValueError("int8 conversion needs calibration data")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative  # dicts keyed by signature input name
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif variant != "float32":
        raise ValueError(f"unknown variant {variant!r}")
    return converter.convert()


def graph_summary(model_bytes: bytes) -> dict:
    """Op counts and the dtypes/shapes of every tensor of a TFLite graph (for `info` and the Edge TPU check)."""
    from edge_runtime.interpreter import graph_details

    ops, tensors = graph_details(model_bytes)
    return {"ops": ops,
            "dtypes": sorted({np.dtype(t["dtype"]).name for t in tensors}),
            "max_rank": max(len(t["shape"]) for t in tensors),
            "dynamic_shapes": any(-1 in list(t.get("shape_signature", t["shape"])) for t in tensors)}


def edgetpu_problems(summary: dict) -> list[str]:
    """What keeps a graph from the Edge TPU compiler, as far as can be checked without it."""
    problems = [f"op {op} is not on the Edge TPU's supported list" for op in summary["ops"] if op not in EDGETPU_OPS]
    float_types = [d for d in summary["dtypes"] if d.startswith("float")]
    if float_types:
        problems.append(f"float tensors ({', '.join(float_types)})")
    if summary["max_rank"] > 3:
        problems.append(f"tensors of rank {summary['max_rank']} (> 3)")
    if summary["dynamic_shapes"]:
        problems.append("dynamic shapes")
    return problems

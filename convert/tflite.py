"""TFLite conversion of the step and conditioner graphs, per quantization variant."""

from __future__ import annotations

from typing import Callable, Iterable

import tensorflow as tf

VARIANTS = ("float32", "float16", "dynamic", "int8")


def convert(concrete_fn, variant: str, representative: Callable[[], Iterable[dict]] | None = None) -> bytes:
    """Converts one concrete function to a TFLite flatbuffer (the arguments of :func:`converter_for`)."""
    return converter_for(concrete_fn, variant, representative).convert()


def converter_for(concrete_fn, variant: str,
                  representative: Callable[[], Iterable[dict]] | None = None) -> tf.lite.TFLiteConverter:
    """The TFLite converter of one concrete function, configured for a variant (not yet run).

    Also what ``tools/quant_debug.py`` hands to TensorFlow Lite's quantization debugger, so that it quantizes
    exactly as the export does.

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
    return converter

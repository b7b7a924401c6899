"""The edge runtime: numpy + LiteRT only (never TensorFlow, training or convert).

The public API, in the style of pycoral::

    from edge_runtime import Synthesizer, make_interpreter

    synth = Synthesizer.load()                      # the shipped voice; or Synthesizer.load("MODEL_DIR")
    for chunk in synth.stream(mel=frames, speaker="lucas", seed=0):
        ...                                         # float32 audio in [-1, 1]
    interpreter = make_interpreter("MODEL_DIR/step.tflite", device="cpu", threads=1)

Names are imported on first use, so ``import edge_runtime.audio`` (which training uses for its numpy
definitions) never loads LiteRT.
"""

from __future__ import annotations

__all__ = ["Synthesizer", "make_interpreter", "load_manifest", "default_model_dir", "example_clips",
           "read_wav", "WavenetEdgeError", "ModelError", "InputError", "DeviceError"]

_HOME = {
    "Synthesizer": "edge_runtime.synth", "default_model_dir": "edge_runtime.files",
    "example_clips": "edge_runtime.files", "make_interpreter": "edge_runtime.interpreter",
    "load_manifest": "edge_runtime.manifest", "read_wav": "edge_runtime.wavio",
    "WavenetEdgeError": "edge_runtime.errors", "ModelError": "edge_runtime.errors",
    "InputError": "edge_runtime.errors", "DeviceError": "edge_runtime.errors",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

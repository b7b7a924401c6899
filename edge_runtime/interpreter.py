"""One place that creates TFLite interpreters: backend choice, XNNPACK, Edge TPU delegate and their errors."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
import sys
from pathlib import Path

from edge_runtime.errors import DeviceError, ModelError, first_line

EDGETPU_LIBRARY = "libedgetpu.so.1"


@contextlib.contextmanager
def quiet_native_stderr():
    """Drops what native libraries print on file descriptor 2 meanwhile (start-up banners like LiteRT's
    "Created TensorFlow Lite XNNPACK delegate"), so errors stay one line. Python exceptions pass untouched."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def interpreter_backend():
    """Returns ``(name, Interpreter, load_delegate)``: ai-edge-litert, else the legacy tflite-runtime.

    ``WAVENET_EDGE_INTERPRETER=tflite_runtime`` forces the legacy backend (for comparisons).
    """
    wanted = os.environ.get("WAVENET_EDGE_INTERPRETER", "ai_edge_litert")
    order = ["ai_edge_litert", "tflite_runtime"] if wanted != "tflite_runtime" else ["tflite_runtime"]
    for name in order:
        try:
            if name == "ai_edge_litert":
                from ai_edge_litert.interpreter import Interpreter, load_delegate
            else:
                from tflite_runtime.interpreter import Interpreter, load_delegate
        except ImportError:
            continue
        return name, Interpreter, load_delegate
    raise DeviceError("no TFLite interpreter installed: pip install ai-edge-litert")


def parse_device(device: str) -> tuple[str, dict]:
    """``cpu`` | ``edgetpu[:usb|:pci][:N]`` -> (kind, delegate options)."""
    m = re.fullmatch(r"edgetpu(?::(usb|pci))?(?::(\d+))?", device)
    if device == "cpu":
        return "cpu", {}
    if not m:
        raise DeviceError(f"unknown device {device!r}: use cpu or edgetpu[:usb|:pci][:N]")
    bus, index = m.group(1), m.group(2)
    if bus is None and index is None:
        return "edgetpu", {}
    # libedgetpu's names: "usb", "usb:N", "pci", "pci:N", or ":N" (the N-th Edge TPU of any kind)
    return "edgetpu", {"device": f"{bus or ''}{'' if index is None else ':' + index}"}


def make_interpreter(path: str | os.PathLike, device: str = "cpu", threads: int = 1):
    """Creates and allocates an interpreter for one ``.tflite`` file.

    Args:
        path: the model file.
        device: ``cpu`` (XNNPACK, applied by default by LiteRT) or ``edgetpu[:usb|:pci][:N]``.
        threads: CPU threads for the interpreter (1 is fastest for these small graphs).

    Returns:
        An allocated ``Interpreter``.

    Raises:
        DeviceError: the Edge TPU library or device is missing, or no interpreter is installed.
        ModelError: the file is missing or not a model this interpreter can run (names the op when it can).
    """
    kind, options = parse_device(device)
    if threads < 1:
        raise DeviceError(f"threads must be >= 1, got {threads}")
    backend, Interpreter, load_delegate = interpreter_backend()
    delegates = []
    if kind == "edgetpu":
        try:
            ctypes.CDLL(EDGETPU_LIBRARY)  # fails cleanly if the library is absent
            with quiet_native_stderr():
                try:
                    delegates.append(load_delegate(EDGETPU_LIBRARY, options))
                finally:
                    gc.collect()  # a failed Delegate's __del__ complains on stderr: let it do so in here
        except (OSError, ValueError, RuntimeError) as e:
            detail = first_line(e)
            raise DeviceError(f"cannot use the Edge TPU ({device}): {EDGETPU_LIBRARY} or the device is missing "
                              f"({detail}); install libedgetpu1-std from Coral's package repository") from None
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        with quiet_native_stderr():
            interpreter = Interpreter(model_path=str(path), num_threads=threads, experimental_delegates=delegates)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        text = " ".join(str(e).split())
        op = re.search(r"builtin opcode '(\w+)' version '(\d+)'", text)
        if op:
            raise ModelError(f"{backend} cannot run {path.name}: op {op.group(1)} version {op.group(2)} is not "
                             "supported by this interpreter (use ai-edge-litert)") from None
        raise ModelError(f"cannot load {path.name} with {backend}: {text[:200]}") from None
    return interpreter


def graph_details(model: str | os.PathLike | bytes) -> tuple[dict[str, int], list[dict]]:
    """(op counts, tensor details) of a graph as written, without delegates (which would fold ops away)."""
    from collections import Counter

    _, Interpreter, _ = interpreter_backend()
    from ai_edge_litert.interpreter import OpResolverType

    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    try:
        interp = Interpreter(**source, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ValueError, RuntimeError) as e:
        raise ModelError(f"cannot read graph: {' '.join(str(e).split())[:200]}") from None
    ops = Counter(op["op_name"] for op in interp._get_ops_details())  # noqa: SLF001 (no public equivalent)
    return dict(sorted(ops.items())), interp.get_tensor_details()

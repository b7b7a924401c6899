"""The native engine: the step graph's weights run by one compiled sample loop (``edge_runtime/_stepkernel.c``).

The exported ``step.tflite`` stays the one definition of the model: this module reads its FULLY_CONNECTED
weights (int8 with per-channel scales, float16 or float32) in execution order, packs them for the kernels, and
checks the compiled loop against LiteRT on the same random history and inputs before it is used (a graph it
does not reproduce is refused, and ``auto`` falls back to LiteRT). LiteRT still runs the conditioner graph, the
int8 (Edge TPU) variant, batch exports and delegates.

Engines (``Synthesizer.load(..., engine=)``, the CLI's ``--engine``): ``auto`` (native where it applies, else
LiteRT), ``native`` (an error where it does not apply), ``litert``.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.audio import mu_law_decode, mu_law_encode
from edge_runtime.errors import ModelError
from edge_runtime.features import lag_range

PERIOD_RING = 1024  # the generated classes _stepkernel.c keeps for a period input: above every lag

ENGINES = ("auto", "native", "litert")
GROUP = 32  # outputs per packed group, as in _stepkernel.c
# Largest |logit difference| accepted against LiteRT, relative to the logits' spread: a dynamic-range graph
# rounds each product's input to int8 the same way in both, so what differs is float summation order (and a
# rare input landing on a rounding boundary); a wrong weight, tap or activation is off by far more.
TOLERANCE = 1e-3


def kernel_module():
    """The compiled extension, or None where it was not built (no compiler at install, another platform)."""
    try:
        from edge_runtime import _stepkernel
    except ImportError:
        return None
    return _stepkernel


def why_not(manifest, graph, device: str, batch: int) -> str | None:
    """Why the native engine cannot run this model (None: it can)."""
    if kernel_module() is None:
        return "the compiled step loop (edge_runtime._stepkernel) is not built in this installation"
    if device != "cpu":
        return f"device {device} runs the graph through its delegate"
    if batch != 1:
        return "batch exports run through LiteRT"
    if graph.inputs["state"].quantized:
        return "full-integer (int8) graphs run through LiteRT"
    if manifest.version not in (1, 2, 3, 4):
        return f"manifest format {manifest.version}"
    longest = lag_range(int(manifest.config["sample_rate"]))[1]
    if manifest.version == 4 and longest >= PERIOD_RING:
        return f"a period input's lags reach {longest} samples, beyond the {PERIOD_RING} the compiled loop keeps"
    return None


def _weights(graph_path) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """(weights [out, in], per-channel scales or None, bias or None) of every FULLY_CONNECTED, in execution order."""
    from edge_runtime.interpreter import interpreter_backend, quiet_native_stderr

    _, Interpreter, _ = interpreter_backend()
    from ai_edge_litert.interpreter import OpResolverType

    with quiet_native_stderr():
        interp = Interpreter(model_path=str(graph_path),
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
    details = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # noqa: SLF001 (no public equivalent)
    made_by = {int(out): op for op in ops for out in op["outputs"]}

    def constant(index: int) -> int:
        """The tensor holding a constant operand: float16 constants are widened by a DEQUANTIZE at load."""
        source = made_by.get(index)
        if source is not None and source["op_name"] == "DEQUANTIZE":
            return constant(int(source["inputs"][0]))
        if source is not None:
            raise ModelError(f"{graph_path}: a FULLY_CONNECTED operand is computed ({source['op_name']}), not stored")
        return index

    found = []
    for op in ops:
        if op["op_name"] != "FULLY_CONNECTED":
            continue
        w_index = constant(int(op["inputs"][1]))
        b_index = constant(int(op["inputs"][2])) if len(op["inputs"]) > 2 and op["inputs"][2] >= 0 else -1
        weights = interp.get_tensor(w_index)
        scales = None
        if weights.dtype == np.int8:
            q = details[w_index]["quantization_parameters"]
            scales = np.broadcast_to(np.asarray(q["scales"], np.float32), weights.shape[:1]).copy()
            if np.any(np.asarray(q["zero_points"]) != 0) or (q["scales"].size > 1 and q["quantized_dimension"] != 0):
                raise ModelError(f"{graph_path}: int8 weights that are not symmetric per output channel")
        bias = None if b_index < 0 else interp.get_tensor(b_index).astype(np.float32)
        found.append((weights, scales, bias))
    return found


def _pack(weights: np.ndarray, scales, bias, relu: bool) -> tuple:
    """One matrix in the kernels' layout (see _stepkernel.c): outputs padded to groups of 32, inputs to pairs."""
    out, inputs = weights.shape
    out_pad, in_pad = -(-out // GROUP) * GROUP, inputs + inputs % 2
    quantized = scales is not None
    padded = np.zeros((out_pad, in_pad), np.int8 if quantized else np.float32)
    padded[:out, :inputs] = weights
    groups = padded.reshape(out_pad // GROUP, GROUP, in_pad)
    if quantized:
        packed = groups.reshape(out_pad // GROUP, GROUP, in_pad // 2, 2).transpose(0, 2, 1, 3)  # [g][pair][32][2]
        scale = np.zeros(out_pad, np.float32)
        scale[:out] = scales
        colsum = padded.astype(np.int32).sum(axis=1).astype(np.int32)
    else:
        packed, scale, colsum = groups.transpose(0, 2, 1), None, None  # [g][input][32]
    full_bias = np.zeros(out_pad, np.float32)
    if bias is not None:
        full_bias[:out] = bias
    return (out, inputs, out_pad, in_pad, int(quantized), int(relu), np.ascontiguousarray(packed), scale, full_bias,
            colsum)


class NativeStep:
    """The compiled loop for one batch-1 model; owns its ring buffer. Build with :meth:`create`."""

    def __init__(self, engine, version: int, views: dict, layers: int, gates: int, extra: int):
        self.engine, self.version, self._views = engine, version, views
        self._layers, self._gates, self._extra = layers, gates, extra

    @classmethod
    def create(cls, manifest, graph, views: dict, dilations: list[int], ring: int) -> "NativeStep":
        """Reads the weights of ``graph`` (a loaded step :class:`Graph`) and builds the engine; ModelError if the
        graph's matrices are not those of the manifest's architecture."""
        cfg = manifest.config
        L, R, G = len(dilations), int(cfg["residual_channels"]), int(cfg["gate_channels"])
        k = int(cfg.get("kernel_size", 2))
        extra = graph.inputs["cond"].shape[1] if manifest.version == 1 and "cond" in graph.inputs else 0
        found = _weights(manifest.step_path)
        if len(found) != 2 * L + 2:
            raise ModelError(f"{manifest.step_path.name}: {len(found)} matrices, the architecture has {2 * L + 2}")
        # execution order is layer 0, residual 0, layer 1, ..., layer L-1, skip, head 1, head 2
        layers, residuals = found[0:2 * L - 1:2], found[1:2 * L - 1:2]
        ordered = [*layers, *residuals, *found[2 * L - 1:]]
        relu = [False] * (2 * L - 1) + [True, True, False]  # relu(skip), relu(head 1), logits
        mats = [_pack(w, s, b, r) for (w, s, b), r in zip(ordered, relu)]
        S, HD, Q = mats[-3][0], mats[-2][0], mats[-1][0]
        dims = (L, R, G, S, HD, Q, k, extra, ring)
        embedding = np.ascontiguousarray(manifest.embedding, np.float32)
        try:
            engine = kernel_module().Engine(dims, np.asarray(dilations, np.int32), embedding, mats)
            if manifest.lpc_inputs is not None:  # the s and p tables, and the µ-law decode the filter reads
                decode = mu_law_decode(np.arange(Q), Q).astype(np.float64)
                engine.set_lpc(*(np.ascontiguousarray(t, np.float32) for t in manifest.lpc_inputs[:2]), decode,
                               manifest.lpc_order)
            if manifest.lpc_inputs is not None and len(manifest.lpc_inputs) == 3:  # format 4: the period table
                engine.set_period(np.ascontiguousarray(manifest.lpc_inputs[2], np.float32),
                                  int(mu_law_encode(0.0, Q)))
        except ValueError as e:
            raise ModelError(f"{manifest.step_path.name}: the native engine cannot run it ({e})") from None
        return cls(engine, manifest.version, views, L, G, extra)

    @property
    def kernels(self) -> str:
        return self.engine.kernels

    def reset(self) -> None:
        self.engine.reset()

    def run(self, n: int, prev: int, cond: np.ndarray | None, noise: np.ndarray | None,
            forced: np.ndarray | None, logits_out: np.ndarray | None, lpc: np.ndarray | None = None,
            lags: np.ndarray | None = None) -> np.ndarray:
        """n steps of the one stream: samples [n, 1] (int64), as ``Synthesizer._run``. ``lpc``: an lpc_inputs
        model's coefficients [n, p] of each sample generated (the engine runs the synthesis filter itself);
        ``lags``: a period_input model's lag [n] of each (the engine keeps the generated classes itself)."""
        extra = None
        if self.version >= 2:  # (3: as 2)
            # per-sample gate inputs [n, L, G], or the speaker's constant ones from the graph's own input buffer
            constant = self._views.get("cond") if cond is None else None
            stride = 0 if cond is None else self._layers * self._gates
        else:  # format 1: c' goes into every layer's product, the speaker biases are a constant add
            extra, constant, stride = cond, self._views.get("speaker_bias"), 0
            cond = None
        gate_in = cond if cond is not None else constant
        samples = np.empty((n, 1), np.int64)
        self.engine.run(n, int(prev), _c(gate_in, np.float32), stride, _c(extra, np.float32), _c(noise, np.float32),
                        _c(forced, np.int64), logits_out, samples, _c(lpc, np.float64), _c(lags, np.int64))
        return samples


def _c(a: np.ndarray | None, dtype) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a, dtype)

"""Where full-int8 quantization loses accuracy in a run's step graph, per WaveNet layer and op kind.

    python tools/quant_debug.py RUN_DIR [--checkpoint last] [--json OUT.json] [--samples 300] [--calibration-data DIR]

TensorFlow Lite's quantization debugger (https://www.tensorflow.org/lite/performance/quantization_debugger) runs
the int8 step graph of ``export --quantize int8`` (same weights, calibration, converter) on real step inputs beside
a float copy of each quantized op fed the same dequantized inputs: every number is one op's own error. rmse/scale
is it in int8 steps (0.29: rounding alone; more: clipping or a kernel's approximation), rel is it over the float
tensor's rms (large where a grid is coarse for its values, e.g. one range shared by tensors of different sizes).
Prints both per layer (with the input rows it reads) and per op kind, then the ten worst tensors by rmse/scale;
``--json`` adds every tensor. A QAT run's fake quantization becomes int8 ops before the debugger can instrument
them: the tool then debugs the graph without it at the learned ranges, checked against the QAT export's scales.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from convert.calibration import calibration_samples  # noqa: E402
from convert.export import validation_utterances  # noqa: E402
from edge_runtime.errors import WavenetEdgeError  # noqa: E402
from edge_runtime.interpreter import quiet_native_stderr  # noqa: E402
from training.checkpoint import load_model, read_state  # noqa: E402
from training.step import make_step_function, state_layout, step_weights  # noqa: E402

EXACT = 1e-3  # rmse/scale below this: an op that moves int8 values unchanged (SPLIT, CONCATENATION at one scale)
GROUP_ORDER = {"head": 1, "new_state": 2}  # after the layers (0)


def op_groups(step_fn, n_layers: int) -> dict[str, str]:
    """{TF op name: "state" | "cond" | "0".."L-1" | "head" | "new_state"} for the step graph's ops.

    The converter names each TFLite tensor after the TF ops fused into it ("MatMul_4;add_8"), and
    make_step_function builds the graph in program order: split the inputs (state, then cond), then layer after
    layer, each starting with the ConcatV2 of its taps (the only concatenations that read the state's Split,
    directly or through the MUL of a per-layer state gain),
    then the head from the concatenation of the gate outputs (the first ConcatV2 or MatMul after the last
    layer's Tanh) to the logits, then new_state. So creation order, cut at those ops, gives every op its group.
    """
    ops = step_fn.graph.get_operations()
    splits = [op for op in ops if op.type == "Split"]
    # per-layer state gains: each row is multiplied back onto its layer's grid before the layer reads it
    scaled = {op for op in ops if op.type == "Mul" and any(t.op is splits[0] for t in op.inputs)}
    starts = [i for i, op in enumerate(ops)
              if op.type == "ConcatV2" and any(t.op is splits[0] or t.op in scaled for t in op.inputs)]
    last_tanh = max(i for i, op in enumerate(ops) if op.type == "Tanh")
    head = next(i for i, op in enumerate(ops) if i > last_tanh and op.type in ("ConcatV2", "MatMul"))
    logits = ops.index(step_fn.structured_outputs["logits"].op.inputs[0].op)  # the head's last op
    if len(starts) != n_layers:
        raise SystemExit(f"error: found {len(starts)} layers in the step graph, the config has {n_layers}")
    groups = {op.name: "new_state" if i > logits else "head" if i >= head
              else str(sum(s <= i for s in starts) - 1) if i >= starts[0] else "input" for i, op in enumerate(ops)}
    for op in scaled:  # a row's MUL belongs to the layer that reads it
        groups[op.name] = groups[op.outputs[0].consumers()[0].name]
    for op in ops:  # and a layer's input scaled onto the state's grid, to new_state
        if op.type == "Mul" and {groups.get(c.name) for c in op.outputs[0].consumers()} == {"new_state"}:
            groups[op.name] = "new_state"
    groups[splits[0].name] = "state"
    if len(splits) > 1 and groups[splits[1].name] == "input":  # a model with conditioning splits it next
        groups[splits[1].name] = "cond"
    # the converter names a signature output "PartitionedCall:k": the function's k-th output (an Identity)
    for k, t in enumerate(step_fn.outputs):
        groups[f"PartitionedCall:{k}"] = groups[t.op.inputs[0].op.name]
    return groups


def int8_scales(model: bytes) -> dict[str, tuple[float, int]]:
    """{tensor name: (scale, zero point)} of a TFLite model's int8 tensors."""
    from ai_edge_litert.interpreter import Interpreter

    return {t["name"]: (float(t["quantization"][0]), int(t["quantization"][1]))
            for t in Interpreter(model_content=model).get_tensor_details()
            if t["dtype"] == np.int8 and t["quantization"][0]}


def with_ranges(calibrated: bytes, reference: bytes) -> bytes:
    """The calibrated model with each tensor's min/max replaced by the range of ``reference``'s int8 tensor of
    the same name (the fake quant's learned range: its scale and zero point round-trip through min/max)."""
    from tensorflow.lite.tools import flatbuffer_utils

    scales = int8_scales(reference)
    model = flatbuffer_utils.read_model_from_bytearray(calibrated)
    for t in model.subgraphs[0].tensors:
        if t.quantization is not None and t.quantization.min is not None and t.name.decode() in scales:
            scale, zero = scales[t.name.decode()]
            t.quantization.min = np.array([(-128 - zero) * scale], np.float32)
            t.quantization.max = np.array([(127 - zero) * scale], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def debug_model(cfg, weights: dict, calibration) -> tuple[bytes, object, str]:
    """(the int8 step graph instrumented with NumericVerify ops, the step function it was built from, note)."""
    import tensorflow as tf
    from convert.tflite import convert, converter_for

    def debugger(step_fn):
        with quiet_native_stderr():  # the quantizer prints its settings on stderr
            return tf.lite.experimental.QuantizationDebugger(converter=converter_for(step_fn, "int8", calibration),
                                                            debug_dataset=lambda: iter(()))

    # as convert/export.py does: a QAT run's int8 graph carries fake quantization with its learned ranges
    step_fn = make_step_function(cfg, weights, 1, fake_quant=cfg.qat)
    try:
        return debugger(step_fn).quant_model, step_fn, "post-training int8"
    except ValueError as e:
        if not cfg.qat:
            raise
        print(f"the quantization debugger cannot instrument the QAT graph, whose fake quantization the converter "
              f"already makes int8 ops ({e}): debugging it without, at the learned ranges", file=sys.stderr)
    plain_fn = make_step_function(cfg, weights, 1, scaled_state=True)  # per-layer state gains (if any) kept
    dbg = debugger(plain_fn)
    with quiet_native_stderr():
        reference = convert(step_fn, "int8", calibration)  # the exported graph: scales = learned ranges
        dbg.calibrated_model = with_ranges(dbg.calibrated_model, reference)
        dbg.options = dbg.options  # re-quantizes the calibrated model (the debugger's public setter)
        ours, theirs = int8_scales(dbg.get_nondebug_quantized_model()), int8_scales(reference)
    common = set(ours) & set(theirs)
    off = sorted(n for n in common if ours[n][1] != theirs[n][1] or not np.isclose(ours[n][0], theirs[n][0], 1e-5))
    if off or not common:
        raise SystemExit(f"error: the debugged graph does not have the QAT export's scales at {off or 'any tensor'}")
    return dbg.quant_model, plain_fn, f"QAT int8 at the learned ranges, {len(common)} scales equal the export's"


def layer_statistics(model: bytes, calibration, samples: int) -> list[dict]:
    """The debugger's per-tensor statistics (its CSV dump) over the first ``samples`` calibration inputs."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    # the debugger feeds lists in the model's input order, not dicts
    order = [d["name"].removeprefix("serving_default_").split(":")[0]
             for d in Interpreter(model_content=model).get_input_details()]
    dataset = lambda: ([inputs[name] for name in order] for inputs in itertools.islice(calibration(), samples))  # noqa

    # built from the model's bytes, the debugger keeps every tensor, so it can also read the float reference
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"signal_ms": lambda f, q, scale, zero: float(np.mean(np.square(f)))})
    dbg = tf.lite.experimental.QuantizationDebugger(quant_debug_model_content=model, debug_dataset=dataset,
                                                    debug_options=options)
    with quiet_native_stderr():  # the interpreter's delegate banner
        dbg.run()
    dbg.layer_statistics_dump(dump := io.StringIO())
    return list(csv.DictReader(io.StringIO(dump.getvalue())))


def annotate(rows: list[dict], model: bytes, groups: dict[str, str], cfg) -> list[dict]:
    """Each tensor's layer, op kind and errors in int8 steps and relative to its signal."""
    from tensorflow.lite.tools import flatbuffer_utils

    # which output of its op a tensor is: the inputs' SPLITs give one tensor per row, and rows map to layers
    graph = flatbuffer_utils.read_model_from_bytearray(model).subgraphs[0]
    output_of = {t: k for op in graph.operators for k, t in enumerate(op.outputs)}
    layout, seen = state_layout(cfg), {}
    for r in rows:
        r.update({k: float(v) for k, v in r.items() if k not in ("op_name", "tensor_name")})
        group = groups.get(r["tensor_name"].split(";")[0], "?")
        row = output_of.get(int(r["tensor_idx"]), 0)
        r["layer"] = {"state": str(layout[row][0]), "cond": str(row)}.get(group, group)  # batch 1: row = layer
        r.update({f"{m}/scale": r[m] / r["scale"] for m in ("mean_error", "max_abs_error")})
        r["rmse/scale"] = float(np.sqrt(r["mean_squared_error"]) / r["scale"])
        r["rel"] = float(np.sqrt(r["mean_squared_error"] / r["signal_ms"])) if r["signal_ms"] > 0 else float("nan")
        # ops that occur twice in a layer differ by role: FULLY_CONNECTED#0 is the dilated convolution, #1 the
        # residual 1x1; with conditioning ADD#0 adds it, ADD#1 is the residual sum (in the head the FCs are skip,
        # head and logits); numbered in the dump's order, the execution order, which data flow fixes
        k = seen[(r["layer"], r["op_name"])] = seen.get((r["layer"], r["op_name"]), -1) + 1
        kind = f"{r['op_name']}#{k}" if r["op_name"] in ("FULLY_CONNECTED", "ADD") else r["op_name"]
        r["kind"] = f"{group} {kind}" if group in ("state", "cond", "head", "new_state") else kind
    return rows


def summary(rows: list[dict], key: str) -> dict:
    """{value of ``key``: count, worst and mean rmse/scale and rel, the tensor of the worst rel}."""
    out = {}
    order = lambda r: (GROUP_ORDER.get(r["layer"], 0), int(r["layer"]) if r["layer"].isdigit() else 0)  # noqa: E731
    for r in sorted(rows, key=order):
        out.setdefault(r[key], []).append(r)
    stats = lambda v, m: (float(np.nanmax([x[m] for x in v])), float(np.nanmean([x[m] for x in v])))  # noqa: E731
    return {k: {"n": len(v), "rmse/scale": stats(v, "rmse/scale"), "rel": stats(v, "rel"),
                "worst_rel_tensor": max(v, key=lambda x: np.nan_to_num(x["rel"]))["tensor_name"]}
            for k, v in out.items()}


def table(title: str, stats: dict) -> str:
    lines = [f"{title:<22} {'n':>3}  rmse/scale worst mean   rel worst  mean  tensor of the worst rel"]
    lines += [f"{k:<22} {s['n']:>3}  {s['rmse/scale'][0]:16.2f} {s['rmse/scale'][1]:4.2f} {s['rel'][0]:9.2%} "
              f"{s['rel'][1]:5.1%}  {s['worst_rel_tensor'][:36]}" for k, s in stats.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--checkpoint", default="last", help="best, last, or a checkpoint folder.")
    parser.add_argument("--samples", type=int, default=300, help="Step inputs run through the debugger.")
    parser.add_argument("--calibration-data", default=None, help="Validation recordings (default: the run's split).")
    parser.add_argument("--json", type=Path, default=None, help="Write everything here.")
    args = parser.parse_args()
    for message in ("tf.lite.Interpreter is deprecated", "Enabling `experimental_preserve_all_tensors`"):
        warnings.filterwarnings("ignore", message=f".*{message}")  # the debugger's interpreters, as intended
    start = time.time()
    # exactly as convert/export.py's export(): EMA weights, calibration on real step inputs, batch 1
    try:
        model, cfg, ckpt = load_model(args.run, args.checkpoint)
        utterances = validation_utterances(args.run, cfg, args.calibration_data)
    except (OSError, WavenetEdgeError) as e:  # no run, checkpoint or data there: one line, as the CLIs say it
        raise SystemExit(f"error: {e}")
    weights = step_weights(model)
    calibration = calibration_samples(model, utterances, weights, 1,
                                      state_gains=weights["state_gains"])  # the rows as the int8 graph holds them
    debug, step_fn, note = debug_model(cfg, weights, calibration)
    rows = annotate(layer_statistics(debug, calibration, args.samples), debug, op_groups(step_fn, cfg.n_layers), cfg)
    # exact ops would only pull the means down: the tables count the tensors that are rounded
    rounded = [r for r in rows if r["rmse/scale"] >= EXACT]
    layers, kinds = summary(rounded, "layer"), summary(rounded, "kind")
    top = sorted(rows, key=lambda r: -r["rmse/scale"])[:10]
    seconds = time.time() - start
    print(f"{args.run.name} {ckpt.name} ({note}): {args.samples} samples, {len(rounded)} rounded tensors "
          f"(+{len(rows) - len(rounded)} exact), {seconds:.0f} s")
    print(table("layer", layers) + "\n" + table("op kind", kinds))
    print(f"{'top 10 tensor':<36} {'layer':>5} {'kind':<22} rmse/scale mean err max err    rel")
    for r in top:
        print(f"{r['tensor_name'][:36]:<36} {r['layer'][:5]:>5} {r['kind']:<22} {r['rmse/scale']:10.2f} "
              f"{r['mean_error/scale']:8.2f} {r['max_abs_error/scale']:7.2f} {r['rel']:6.2%}")
    if args.json:
        out = {"run": str(args.run), "checkpoint": ckpt.name, "step": read_state(ckpt)["step"], "method": note,
               "samples": args.samples, "seconds": seconds, "layers": layers, "op_kinds": kinds, "top": top}
        args.json.write_text(json.dumps({**out, "tensors": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

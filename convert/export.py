"""Export a training run to edge model folders: TFLite step + conditioner graphs, manifest, quality report.

    python convert/export.py RUN_DIR --out MODEL_DIR [--quantize dynamic|float32|float16|int8|all] [--batch B]

(the same as ``wavenet-edge export``). A model folder::

    MODEL_DIR/manifest.json      format version, config, state layout, signatures, quantization, tables, checksums
    MODEL_DIR/step.tflite        one autoregressive step with external state
    MODEL_DIR/conditioner.tflite log-mel frames -> per-sample conditioning, one chunk of frames at a time
    MODEL_DIR/report.json        teacher-forced NLL, KL and argmax agreement against the float32 TF model

Folders are built under a temporary name and renamed into place, so an interrupted export leaves nothing
that looks like a model folder.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from edge_runtime.evaluate import log_softmax, nll_nats
from edge_runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST, encode_array, sha256_file
from training.checkpoint import load_model, read_run_info, read_state
from training.config import Config, receptive_field

DEFAULT_CHUNK_FRAMES = 4  # small: streamed mel input waits for chunk + 2 × context frames


class ExportError(ValueError):
    """The export cannot be done as asked (the message says why)."""


def validation_utterances(run_dir: Path, config: Config, data_dir: str | None):
    """Validation audio: every file of ``data_dir``, else the run's own validation split."""
    from training.data import load_corpus, load_utterances

    info = read_run_info(run_dir).get("data", {})
    regex = info.get("speaker_regex")
    if data_dir:
        return load_utterances(data_dir, config, regex)
    if not info.get("data_dir") or not Path(info["data_dir"]).is_dir():
        raise ExportError(f"the run's data folder {info.get('data_dir')!r} is not here: give --calibration-data DIR")
    corpus = load_corpus(info["data_dir"], config, speaker_regex=regex, val_regex=info.get("val_regex"),
                         val_fraction=info.get("val_fraction", 0.05))
    if not corpus.val:
        raise ExportError("the run has no validation files: give --calibration-data DIR")
    return corpus.val


def calibration_samples(model, utterances, weights: dict, batch: int, count: int = 1500, seed: int = 0):
    """Step inputs taken from real teacher-forced runs: the ring-buffer states the runtime will hold.

    Each layer's input history comes from the full model's trunk, so these are exactly the states that stepping
    through validation audio produces, at random time steps.
    """
    from training.evaluate import utterance_inputs
    from training.model import state_layout

    cfg = model.config
    rng = np.random.default_rng(seed)
    layout = state_layout(cfg)
    per_utt = max(1, count // max(1, len(utterances)))
    rows = []
    for u in utterances:
        inputs = utterance_inputs(u, cfg)
        _, xs, c = model.trunk(inputs)
        xs = np.stack([x.numpy()[0] for x in xs], axis=1)  # [T, L, R]
        c = None if c is None else c.numpy()[0]
        for t in rng.integers(0, u.num_samples - 1, size=per_utt):
            # row (l, d): layer l's input d steps ago (row (0, 0) is the current sample's embedding)
            state = np.stack([xs[t - d, l] if t >= d else np.zeros(cfg.residual_channels, np.float32)
                              for l, d in layout])  # [rows, R]
            sample = {"state": state}
            if c is not None:
                sample["cond"] = c[t]
            if cfg.use_speaker:
                sample["speaker_bias"] = weights["speaker_bias"][u.speaker]  # [L, G]
            rows.append(sample)
    rng.shuffle(rows)

    def batched():
        # streams side by side within each row: [rows, B, R] -> [rows * B, R]; cond [B, C]
        for i in range(0, len(rows) - batch + 1, batch):
            group = rows[i:i + batch]
            out = {k: np.stack([g[k] for g in group], axis=1 if k != "cond" else 0) for k in group[0]}
            yield {k: (v.reshape(-1, v.shape[-1]) if k != "cond" else v).astype(np.float32) for k, v in out.items()}

    return batched


def port_info(model_bytes: bytes) -> dict:
    """Signature inputs/outputs with shape, dtype and quantization, read back from the converted graph."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    key = next(iter(interp.get_signature_list()))
    runner = interp.get_signature_runner(key)

    def describe(details):
        return {name: {"tensor": d["name"] if "name" in d else None, "shape": [int(n) for n in d["shape"]],
                       "dtype": np.dtype(d["dtype"]).name, "scale": float(d["quantization"][0]),
                       "zero_point": int(d["quantization"][1])} for name, d in sorted(details.items())}

    return {"signature": key, "inputs": describe(runner.get_input_details()),
            "outputs": describe(runner.get_output_details())}


def conditioner_graph(model, batch: int, chunk_frames: int) -> bytes | None:
    """The conditioner graph (None without local conditioning), converted once for every variant.

    It runs once per chunk of frames, not per sample, so float32 keeps it exact and cheap.
    """
    from convert.tflite import convert
    from training.model import make_conditioner_function

    return convert(make_conditioner_function(model, batch, chunk_frames), "float32") if model.config.use_mel else None


def write_model_folder(folder: Path, model, weights: dict, variant: str, batch: int, chunk_frames: int,
                       cond_bytes: bytes | None, calibration, source: dict) -> None:
    """Converts the step graph for one variant and writes it, the conditioner and the manifest into ``folder``."""
    from convert.tflite import convert
    from edge_runtime.interpreter import graph_details
    from training.model import conditioning_context, make_step_function, state_layout

    import tensorflow as tf

    cfg = model.config
    folder.mkdir(parents=True)
    step_bytes = convert(make_step_function(cfg, weights, batch), variant,
                         calibration if variant == "int8" else None)
    (folder / "step.tflite").write_bytes(step_bytes)
    files = {"step.tflite": sha256_file(folder / "step.tflite")}
    conditioner = None
    if cond_bytes is not None:
        (folder / "conditioner.tflite").write_bytes(cond_bytes)
        files["conditioner.tflite"] = sha256_file(folder / "conditioner.tflite")
        conditioner = {"file": "conditioner.tflite", "chunk_frames": chunk_frames,
                       "context_frames": conditioning_context(cfg), "lookahead_frames": conditioning_context(cfg),
                       "pad_value": float(np.log(cfg.log_floor)), **port_info(cond_bytes)}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "variant": variant, "batch": batch,
        "config": cfg.to_dict(), "sample_rate": cfg.sample_rate, "speakers": list(cfg.speakers),
        "dilations": list(cfg.dilations), "receptive_field": receptive_field(cfg),
        "state": {"rows": [list(r) for r in state_layout(cfg)],
                  "layout": "state[row * B + b, c] = channel c of stream b's input of layer rows[row][0] from "
                            "rows[row][1] steps ago (row 0: the current sample's embedding); "
                            "new_state[(l - 1) * B + b, c] = layer l's current input, l = 1..L-1; "
                            "speaker_bias[l * B + b, g]"},
        "step": {"file": "step.tflite", "ops": graph_details(step_bytes)[0], **port_info(step_bytes)},
        "conditioner": conditioner,
        "tables": {"embedding": encode_array(weights["embedding"].astype(np.float32)),
                   "speaker_bias": None if weights["speaker_bias"] is None
                   else encode_array(weights["speaker_bias"].astype(np.float32))},
        "files": files,
        "data": source.get("data", {}),
        "producer": {"package": f"wavenet-edge {metadata.version('wavenet-edge')}", "tensorflow": tf.__version__,
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     **{k: v for k, v in source.items() if k != "data"}},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def quality(folder: Path, cases: Path) -> dict:
    """Teacher-forced NLL of an exported folder through the edge runtime, in a process without TensorFlow."""
    out = cases.with_suffix(".json")
    result = subprocess.run([sys.executable, "-m", "edge_runtime.quality", str(folder), str(cases), str(out)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ExportError(f"scoring {folder.name} with the edge runtime failed: {result.stderr.strip()[-300:]}")
    report = json.loads(out.read_text())
    out.unlink()
    report["file_bytes"] = {p.name: p.stat().st_size for p in sorted(folder.glob("*.tflite"))}
    return report


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike, quantize: str = "dynamic", *, batch: int = 1,
           checkpoint: str = "best", calibration_data: str | None = None, force: bool = False,
           chunk_frames: int = DEFAULT_CHUNK_FRAMES, eval_samples: int = 200_000, log=print) -> dict:
    """Exports one or all variants of a run's checkpoint (EMA weights); returns the quality report.

    Args:
        run_dir: a training run folder.
        out_dir: the model folder to create (with ``all``: one sub-folder per variant).
        quantize: ``float32``, ``float16``, ``dynamic``, ``int8`` or ``all``.
        batch: independent streams per step (the batch dimension of both graphs).
        checkpoint: ``best``, ``last`` or a checkpoint folder.
        calibration_data: folder of validation recordings (default: the run's validation split).
        force: replace an existing ``out_dir``.
        chunk_frames: mel frames per conditioner call.
        eval_samples: at most this many samples scored per variant for the report.
        log: where progress lines go.
    """
    from convert.tflite import VARIANTS
    from training.evaluate import utterance_inputs
    from training.model import step_weights

    out_dir = Path(out_dir)
    variants = list(VARIANTS) if quantize == "all" else [quantize]
    if any(v not in VARIANTS for v in variants):
        raise ExportError(f"unknown --quantize {quantize!r}; choose {', '.join(VARIANTS)} or all")
    if batch < 1 or chunk_frames < 1:
        raise ExportError("--batch and the chunk size must be >= 1")
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} exists: choose a new folder or pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    model, config, ckpt = load_model(run_dir, checkpoint)
    utterances = validation_utterances(Path(run_dir), config, calibration_data)
    weights = step_weights(model)
    calibration = calibration_samples(model, utterances, weights, batch) if "int8" in variants else None
    cond_bytes = conditioner_graph(model, batch, chunk_frames)
    scored = []
    for u in utterances:
        if sum(s.num_samples for s in scored) >= eval_samples:
            break
        scored.append(u)
    reference = [model(utterance_inputs(u, config)).numpy()[0, :-1] for u in scored]
    source = {"run": str(Path(run_dir).resolve()), "checkpoint": ckpt.name, "step": read_state(ckpt)["step"],
              "weights": "ema", "data": read_run_info(Path(run_dir)).get("data", {})}
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    report = {"run": source["run"], "checkpoint": ckpt.name, "batch": batch, "variants": {}}
    cases = out_dir.with_name(f".{out_dir.name}.cases-{os.getpid()}.npz")
    arrays = {}
    for i, (u, ref) in enumerate(zip(scored, reference)):
        arrays.update({f"classes_{i}": u.classes, f"speaker_{i}": np.int32(u.speaker), f"reference_{i}": ref})
        if u.mel is not None:
            arrays[f"mel_{i}"] = u.mel
    try:
        np.savez(cases, **arrays)
        for variant in variants:
            folder = tmp / variant if quantize == "all" else tmp
            log(f"converting {variant} ...")
            write_model_folder(folder, model, weights, variant, batch, chunk_frames, cond_bytes, calibration, source)
            if batch == 1:
                report["variants"][variant] = quality(folder, cases)
            else:
                sizes = {p.name: p.stat().st_size for p in sorted(folder.glob("*.tflite"))}
                report["variants"][variant] = {"file_bytes": sizes, "note": "quality is measured on batch-1 exports"}
        ref = {"nll_bits_per_sample": float(sum(nll_nats(log_softmax(r), u.classes) for r, u in zip(reference, scored))
                                            / sum(r.shape[0] for r in reference) / np.log(2)),
               "samples": sum(r.shape[0] for r in reference)}
        report["tensorflow_float32"] = ref
        for variant, r in report["variants"].items():
            if "nll_bits_per_sample" in r:
                r["nll_ratio_to_tf_float32"] = r["nll_bits_per_sample"] / ref["nll_bits_per_sample"]
        for folder in ([tmp / v for v in variants] if quantize == "all" else [tmp]):
            variant = folder.name if quantize == "all" else variants[0]
            (folder / "report.json").write_text(json.dumps({**report, "variants": {variant: report["variants"][variant]}},
                                                           indent=2) + "\n")
        if quantize == "all":
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        replace_folder(tmp, out_dir)
    finally:
        cases.unlink(missing_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    return report


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Deletes temporary siblings of ``out_dir`` left by killed exports (their process is gone)."""
    for p in out_dir.parent.glob(f".{out_dir.name}.*-*"):
        pid = p.name.rsplit("-", 1)[-1].split(".")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def replace_folder(tmp: Path, out_dir: Path) -> None:
    """Moves the finished folder into place (the old one, with --force, only goes once the new one is there)."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old.exists():
        shutil.rmtree(old)


def format_report(report: dict) -> str:
    """The report as a small table."""
    lines = [f"{'variant':<9} {'NLL bits':>9} {'ratio':>7} {'KL nats':>9} {'argmax':>7} {'step.tflite':>12}"]
    for variant, r in report["variants"].items():
        if "nll_bits_per_sample" not in r:
            lines.append(f"{variant:<9} {r['note']}")
            continue
        lines.append(f"{variant:<9} {r['nll_bits_per_sample']:9.4f} {r['nll_ratio_to_tf_float32']:7.4f} "
                     f"{r['mean_kl_nats']:9.2e} {r['argmax_agreement']:7.3f} {r['file_bytes']['step.tflite']:12,d}")
    ref = report.get("tensorflow_float32", {})
    if ref:
        lines.append(f"{'TF fp32':<9} {ref['nll_bits_per_sample']:9.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    from wavenet_edge.cli import export_command

    export_command()

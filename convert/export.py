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

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from convert.calibration import calibration_samples
from convert.errors import ExportError, OutputExists  # noqa: F401 (OutputExists: part of this module's API)
from convert.postfilters import (FORMANT_HELP, MEL_MATCH_HELP, check_formant, check_mel_match, parse_formant,
                                 parse_mel_match, postfilters)
from edge_runtime.errors import WavenetEdgeError, first_line
from edge_runtime.evaluate import log_softmax, nll_nats
from edge_runtime.files import portable_path, remove_stale_temporaries
from edge_runtime.manifest import (FORMAT, FORMAT_VERSION, LPC_INPUT_TABLES, LPC_INPUTS_VERSION, MANIFEST,
                                   PERIOD_INPUT_VERSION, PERIOD_TABLE, encode_array, sha256_file)
from training.checkpoint import load_model, read_run_info, read_state
from training.config import Config, receptive_field

DEFAULT_CHUNK_FRAMES = 4  # small: streamed mel input waits for chunk + 2 × context frames


def validation_utterances(run_dir: Path, config: Config, data_dir: str | None):
    """Validation audio: every file of ``data_dir``, else the run's own validation split."""
    from training.data import load_corpus, load_utterances

    info = read_run_info(run_dir).get("data", {})
    regex = info.get("speaker_regex")
    if data_dir:
        return load_utterances(data_dir, config, regex)
    if not info.get("data_dir") or not Path(info["data_dir"]).is_dir():
        raise ExportError(f"the run's data folder {info.get('data_dir')!r} is not here: name a folder of calibration recordings")
    corpus = load_corpus(info["data_dir"], config, speaker_regex=regex, val_regex=info.get("val_regex"),
                         val_fraction=info.get("val_fraction", 0.05))
    if not corpus.val:
        raise ExportError("the run has no validation files: name a folder of calibration recordings")
    return corpus.val


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


def conditioner_graph(model, weights: dict, batch: int, chunk_frames: int) -> bytes | None:
    """The conditioner graph (None without local conditioning), converted once for every variant.

    It runs once per chunk of frames, not per sample, so float32 keeps it exact and cheap.
    """
    from convert.tflite import convert
    from training.step import make_conditioner_function

    if not model.config.use_mel:
        return None
    return convert(make_conditioner_function(model, weights, batch, chunk_frames), "float32")


def format_version(cfg: Config) -> int:
    """The manifest format of a model: 4 with a period input, 3 with LPCNet's inputs, else 2."""
    if cfg.period_input:
        return PERIOD_INPUT_VERSION
    return LPC_INPUTS_VERSION if cfg.lpc_inputs else FORMAT_VERSION


def input_tables(cfg: Config) -> tuple[str, ...]:
    """The input tables summed into layer 0's row besides the sample embedding (the manifest's names)."""
    if not cfg.lpc_inputs:
        return ()
    return LPC_INPUT_TABLES + ((PERIOD_TABLE,) if cfg.period_input else ())


def state_scaling(weights: dict, fake_quant: bool) -> dict:
    """The manifest's note of per-layer state gains (the int8 graph of a per-layer QAT run), else nothing."""
    from training.step import graph_state_gains

    gains = graph_state_gains(weights, fake_quant)
    return {} if gains is None else {
        "gains": [float(g) for g in gains],
        "gains_note": "layer l's rows (and new_state rows) hold gains[l] x its input; tables.embedding is scaled "
                      "by gains[0] already: the runtime moves rows as they are"}


def write_model_folder(folder: Path, model, weights: dict, variant: str, batch: int, chunk_frames: int,
                       cond_bytes: bytes | None, calibration, source: dict, sampling: dict | None = None,
                       formant: tuple[float, float] | None = None, mel_match: float | None = None) -> None:
    """Converts the step graph for one variant and writes it, the conditioner and the manifest into ``folder``."""
    from convert.tflite import convert
    from edge_runtime.interpreter import graph_details
    from training.model import conditioning_context
    from training.step import make_step_function, state_embedding, state_layout

    import tensorflow as tf

    cfg = model.config
    folder.mkdir(parents=True)
    # A QAT model's int8 graph carries its fake quantization: the converter takes the learned ranges as the scales
    # (the calibration data then only fills what the ranges do not cover: nothing, in this graph).
    step_fake_quant = cfg.qat and variant == "int8"
    step_fn = make_step_function(cfg, weights, batch, fake_quant=step_fake_quant)
    step_bytes = convert(step_fn, variant, calibration if variant == "int8" else None)
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
        "format": FORMAT, "format_version": format_version(cfg),
        "variant": variant, "batch": batch,
        "config": cfg.to_dict(), "sample_rate": cfg.sample_rate, "speakers": list(cfg.speakers),
        "dilations": list(cfg.dilations), "receptive_field": receptive_field(cfg),
        "state": {"rows": [list(r) for r in state_layout(cfg)],
                  "layout": "state[row * B + b, c] = channel c of stream b's input of layer rows[row][0] from "
                            "rows[row][1] steps ago (row 0: the current sample's embedding); "
                            "new_state[(l - 1) * B + b, c] = layer l's current input, l = 1..L-1; "
                            "cond[l * B + b, g] = layer l's gate input for stream b: the conditioner's channel "
                            "l * G + g (of the sample being predicted) + tables.speaker_bias[speaker, l, g]",
                  **state_scaling(weights, step_fake_quant)},
        "step": {"file": "step.tflite", "ops": graph_details(step_bytes)[0], **port_info(step_bytes)},
        "conditioner": conditioner,
        "postfilter": postfilters(cfg, formant, mel_match),
        "sampling": sampling or {},
        "tables": {"embedding": encode_array(state_embedding(weights, step_fake_quant).astype(np.float32)),
                   "speaker_bias": None if weights["speaker_bias"] is None
                   else encode_array(weights["speaker_bias"].astype(np.float32)),
                   **{name: encode_array(state_embedding(weights, step_fake_quant, name).astype(np.float32))
                      for name in input_tables(cfg)}},
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
           chunk_frames: int = DEFAULT_CHUNK_FRAMES, eval_samples: int = 200_000, temperature: float | None = None,
           formant: tuple[float, float] | None = None, mel_match: float | None = None, log=print) -> dict:
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
        temperature: the sampling temperature to recommend in the manifest (chosen by listening tests or the
            quality report; the runtime's default when a caller gives none).
        formant: the formant postfilter's (numerator, denominator) gammas (an LPC model; None: no postfilter).
        mel_match: the mel-matching postfilter's largest gain in dB (a mel-conditioned model; None: none).
        log: where progress lines go.
    """
    from training.step import step_weights

    out_dir = Path(out_dir)
    variants = check_request(out_dir, quantize, batch, chunk_frames, temperature, force)
    check_formant(formant)
    check_mel_match(mel_match)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # left by killed exports (their process is gone)
    model, config, ckpt = load_model(run_dir, checkpoint)
    check_formant(formant, config)
    check_mel_match(mel_match, config)
    utterances = validation_utterances(Path(run_dir), config, calibration_data)
    weights = step_weights(model)
    # the int8 graph of a per-layer QAT run stores layer l's state rows x its gain: so do the calibration inputs
    calibration = (calibration_samples(model, utterances, weights, batch, state_gains=weights["state_gains"])
                   if "int8" in variants else None)
    cond_bytes = conditioner_graph(model, weights, batch, chunk_frames)
    scored, reference = reference_logits(model, utterances, eval_samples)
    source = {"run": Path(run_dir).resolve().name,  # the run folder's name: no path of the build machine
              "checkpoint": ckpt.name, "step": read_state(ckpt)["step"],
              "weights": "ema", "data": portable_data(read_run_info(Path(run_dir)).get("data", {}))}
    sampling = {} if temperature is None else {"temperature": float(temperature)}
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    report = {"run": source["run"], "checkpoint": ckpt.name, "batch": batch, "variants": {}}
    cases = out_dir.with_name(f".{out_dir.name}.cases-{os.getpid()}.npz")
    folders = {v: tmp / v if quantize == "all" else tmp for v in variants}
    try:
        write_cases(cases, scored, reference)
        for variant, folder in folders.items():
            log(f"converting {variant} ...")
            write_model_folder(folder, model, weights, variant, batch, chunk_frames, cond_bytes, calibration, source,
                               sampling, formant, mel_match)
            report["variants"][variant] = quality(folder, cases) if batch == 1 else {
                "file_bytes": {p.name: p.stat().st_size for p in sorted(folder.glob("*.tflite"))},
                "note": "quality is measured on batch-1 exports"}
        add_reference(report, scored, reference)
        write_reports(report, folders, tmp if quantize == "all" else None)
        replace_folder(tmp, out_dir)
    finally:
        cases.unlink(missing_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    return report


def check_request(out_dir: Path, quantize: str, batch: int, chunk_frames: int, temperature: float | None,
                  force: bool) -> list[str]:
    """The variants to build; raises ExportError (before anything is read or written) for a bad request."""
    from convert.tflite import VARIANTS

    variants = list(VARIANTS) if quantize == "all" else [quantize]
    if any(v not in VARIANTS for v in variants):
        raise ExportError(f"unknown quantization {quantize!r}; choose {', '.join(VARIANTS)} or all")
    if batch < 1 or chunk_frames < 1:
        raise ExportError("the batch and the chunk size must be >= 1")
    if temperature is not None and not 0 <= temperature < 100:
        raise ExportError(f"the recommended temperature must be in [0, 100), got {temperature}")
    if out_dir.exists() and not force:
        raise OutputExists(f"{out_dir} exists: choose a new folder, or force its replacement")
    return variants


def reference_logits(model, utterances, eval_samples: int):
    """The first utterances (up to ``eval_samples`` samples) and the float32 TF model's logits for them."""
    from training.evaluate import utterance_inputs

    scored = []
    for u in utterances:
        if sum(s.num_samples for s in scored) >= eval_samples:
            break
        scored.append(u)
    return scored, [model(utterance_inputs(u, model.config)).numpy()[0, :-1] for u in scored]


def write_cases(path: Path, scored, reference) -> None:
    """The scoring cases for the TF-free quality subprocess (classes, mel, speaker, reference logits)."""
    arrays = {}
    for i, (u, ref) in enumerate(zip(scored, reference)):
        arrays.update({f"classes_{i}": u.classes, f"speaker_{i}": np.int32(u.speaker), f"reference_{i}": ref})
        if u.mel is not None:
            arrays[f"mel_{i}"] = u.mel
    np.savez(path, **arrays)


def add_reference(report: dict, scored, reference) -> None:
    """The TF float32 NLL of the scored utterances, and each variant's ratio to it."""
    samples = sum(r.shape[0] for r in reference)
    nats = sum(nll_nats(log_softmax(r), u.classes) for r, u in zip(reference, scored))
    report["tensorflow_float32"] = {"nll_bits_per_sample": float(nats / samples / np.log(2)), "samples": samples}
    for r in report["variants"].values():
        if "nll_bits_per_sample" in r:
            r["nll_ratio_to_tf_float32"] = r["nll_bits_per_sample"] / report["tensorflow_float32"]["nll_bits_per_sample"]


def write_reports(report: dict, folders: dict[str, Path], all_folder: Path | None) -> None:
    """Each variant folder's ``report.json`` (its own variant), and the whole report beside them with ``all``."""
    for variant, folder in folders.items():
        (folder / "report.json").write_text(json.dumps({**report, "variants": {variant: report["variants"][variant]}},
                                                       indent=2) + "\n")
    if all_folder is not None:
        (all_folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def portable_data(data: dict, base: str | os.PathLike | None = None) -> dict:
    """A run's data description without an absolute path of the build machine (see files.portable_path)."""
    return {**data, "data_dir": portable_path(data.get("data_dir"), base)} if "data_dir" in data else dict(data)


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


def main(argv: list[str] | None = None) -> None:
    """``python convert/export.py RUN_DIR --out MODEL_DIR ...``: the options of ``wavenet-edge export``."""
    from convert.tflite import VARIANTS

    parser = argparse.ArgumentParser(prog="convert/export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="The training run folder.")
    parser.add_argument("--out", dest="out_dir", required=True, help="Model folder to create.")
    parser.add_argument("--quantize", default="dynamic", choices=[*VARIANTS, "all"],
                        help="Quantization variant ('all': one sub-folder each).")
    parser.add_argument("--batch", type=int, default=1, help="Independent streams per step.")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint folder.")
    parser.add_argument("--calibration-data", default=None, help="Validation recordings (default: the run's split).")
    parser.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES, help="Mel frames per conditioner call.")
    parser.add_argument("--eval-samples", type=int, default=200_000, help="Samples scored per variant for the report.")
    parser.add_argument("--temperature", type=float, default=None, help="Sampling temperature the manifest recommends.")
    parser.add_argument("--formant-postfilter", default=None, help=FORMANT_HELP)
    parser.add_argument("--mel-match", default=None, metavar="DB", help=MEL_MATCH_HELP)
    parser.add_argument("--force", action="store_true", help="Replace an existing model folder.")
    args = parser.parse_args(argv)
    from edge_runtime.interpreter import quiet_native_stderr

    with quiet_native_stderr():  # TensorFlow's start-up banners, as the CLI drops them
        import tensorflow  # noqa: F401
    try:
        report = export(args.run_dir, args.out_dir, args.quantize, batch=args.batch, checkpoint=args.checkpoint,
                        calibration_data=args.calibration_data, force=args.force, chunk_frames=args.chunk_frames,
                        eval_samples=args.eval_samples, temperature=args.temperature,
                        formant=parse_formant(args.formant_postfilter), mel_match=parse_mel_match(args.mel_match),
                        log=lambda m: print(m, file=sys.stderr))
    except (OSError, WavenetEdgeError) as e:
        hint = OutputExists.HINT if isinstance(e, OutputExists) else ""
        print(f"error: {first_line(e)}{hint}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report))
    print(f"wrote {args.out_dir}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()


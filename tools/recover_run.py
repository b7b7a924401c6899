"""Rebuilds a finished float training run from an exported float16/float32 model folder whose checkpoint is gone.

    python tools/recover_run.py edge_runtime/models/default-float16 --out runs/default_recovered [--data DIR]

Every variable of ``build_model(config)`` is read back from the graphs and the manifest's tables, in either step
form of training/step.py: format 1 (the shipped ``default`` voices; no code of today writes it, so a fresh export
cannot serve as a map) and format 2 (today's exports). The checkpoint (weights = EMA = the recovered ones) is
written only once the rebuilt Keras model's logits match the folder's graphs through the edge runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edge_runtime.errors import WavenetEdgeError, first_line  # noqa: E402
from edge_runtime.files import remove_stale_temporaries, temporary_sibling  # noqa: E402
from edge_runtime.manifest import load_manifest  # noqa: E402

TOLERANCE = 1e-3  # |logit difference| / logit spread (native.py's bar): a misplaced weight is far above it


class RecoverError(WavenetEdgeError):
    """The model folder cannot be turned back into a training run (the message says why)."""


def graph_ops(path: Path) -> dict[str, list[list]]:
    """Op name -> the inputs of each such op, in execution order: stored constants (float16 widened), else None."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    ops = interp._get_ops_details()  # noqa: SLF001 (no public equivalent; native.py reads it too)
    made_by = {int(o): op for op in ops for o in op["outputs"]}
    fed = {d["index"] for d in interp.get_input_details()}

    def value(i: int):
        source = made_by.get(i)
        if source is not None and source["op_name"] == "DEQUANTIZE":  # how a float16 graph stores its weights
            return value(int(source["inputs"][0]))
        if i < 0 or source is not None or i in fed:
            return None
        a = interp.get_tensor(i)
        return a.astype(np.float32) if a.dtype == np.float16 else a

    found = defaultdict(list)
    for op in ops:
        found[op["op_name"]].append([value(int(i)) for i in op["inputs"]])
    return found


def put(var, value) -> None:
    """One variable's value, shape-checked (a graph of another config fails here with its variable's name)."""
    shape = None if value is None else np.shape(value)
    if shape != tuple(var.shape):
        raise RecoverError(f"{var.path}: the graphs hold {shape or 'no constant'}, the config needs {tuple(var.shape)}")
    var.assign(np.asarray(value, np.float32))


def fill_step(model, ops, version: int) -> None:
    """FULLY_CONNECTED ops in execution order (native.py's reading): layer 0, its residual, ..., skip, head 1, 2."""
    k, R, L = model.config.kernel_size, model.config.residual_channels, model.config.n_layers
    # TFLite stores [out, in], Keras [in, out]
    fcs = [(None if i[1] is None else i[1].T, i[2] if len(i) > 2 else None) for i in ops["FULLY_CONNECTED"]]
    if len(fcs) != 2 * L + 2 or any(w is None for w, _ in fcs):
        raise RecoverError(f"the step graph has {len(fcs)} matrices, not the {2 * L + 2} stored ones of the config")
    for l, block in enumerate(model.blocks):
        w, b = fcs[2 * l]  # rows: k taps of R channels, oldest first (+ c' in format 1)
        put(block.conv.kernel, w[:k * R].reshape(k, R, -1) if w.shape[0] >= k * R else None)
        put(block.conv.bias, b)
        if version == 1 and block.cond is not None:
            put(block.cond.kernel, w[k * R:])
        if block.res is not None:
            put(block.res.kernel, fcs[2 * l + 1][0])
            put(block.res.bias, fcs[2 * l + 1][1])
    for layer, (w, b) in zip((model.skip, model.head1, model.head2), fcs[2 * L - 1:]):
        put(layer.kernel, w)
        put(layer.bias, b)


def fill_conditioner(model, ops, version: int) -> None:
    """Frame convolutions, smoothing filters and (format 2) every layer's conditioning projection."""
    up, G = model.upsampler, model.config.gate_channels
    if len(ops["CONV_2D"]) != len(up.convs):
        raise RecoverError(f"the conditioner has {len(ops['CONV_2D'])} convolutions, the config {len(up.convs)}")
    for conv, (_, w, b) in zip(up.convs, ops["CONV_2D"]):
        put(conv.kernel, None if w is None else w[:, 0].transpose(1, 2, 0))  # [out, 1, 3, in] -> [3, in, out]
        put(conv.bias, b)
    if version == 1:  # one DEPTHWISE_CONV_2D per stage, its filter tiled over the channels
        filters = [i[1] for i in ops["DEPTHWISE_CONV_2D"]]
        if len(filters) != len(up.kernels) or any(f is None or np.ptp(f, axis=-1).max() > 0 for f in filters):
            raise RecoverError("the conditioner's smoothing filters are not one tiled filter per upsampling stage")
        for var, f in zip(up.kernels, filters):
            put(var, f[0, 0, :, 0])
        return
    projections, matrices = [i[1] for i in ops["FULLY_CONNECTED"]], [i[0] for i in ops["BATCH_MATMUL"]]
    if len(projections) != 1 or len(matrices) != 1 or projections[0] is None or matrices[0] is None:
        raise RecoverError("the conditioner is not one stored projection and one upsampling matrix (format 2)")
    for l, block in enumerate(model.blocks):
        put(block.cond.kernel, projections[0].T[:, l * G:(l + 1) * G])
    matrix = matrices[0][0][:, :-1] if model.config.use_speaker else matrices[0][0]  # drop the speakers' ones
    for var, f in zip(up.kernels, fit_smoothing(model, matrix)):
        put(var, f)


def fit_smoothing(model, matrix: np.ndarray, iterations: int = 50) -> list[np.ndarray]:
    """Filters whose stages multiply out to ``matrix`` (training/step.py's ``upsampling_matrix``).

    The matrix is linear in each filter given the others, so those products are the Jacobian: Gauss-Newton from box
    filters. The scale between stages is free (any exact factorisation is the same model).
    """
    from training.step import upsampling_matrix

    up, frames, target = model.upsampler, matrix.shape[1], matrix.astype(np.float64).ravel()

    def stages(filters):  # Upsampler.upsample of the identity: repeat, 'valid' correlation, crop
        x = np.eye(frames)
        for s, f in zip(up.upsample_scales, filters):
            x = np.repeat(x, s, axis=0)
            x = sum(w * x[j:len(x) - len(f) + 1 + j] for j, w in enumerate(f))
        return x[up.crop():len(x) - up.crop()].ravel()

    filters = [np.full(2 * s + 1, 1 / (2 * s + 1)) for s in up.upsample_scales]
    for _ in range(iterations):
        jacobian = [stages(filters[:i] + [row] + filters[i + 1:])
                    for i, f in enumerate(filters) for row in np.eye(len(f))]
        step = np.linalg.lstsq(np.stack(jacobian, 1), target - stages(filters), rcond=None)[0]
        filters = np.split(np.concatenate(filters) + step, np.cumsum([len(f) for f in filters])[:-1])
    for var, f in zip(up.kernels, filters):
        var.assign(f.astype(np.float32))
    error = np.abs(upsampling_matrix(model, frames) - matrix).max() / np.abs(matrix).max()
    if not error < 1e-5:
        raise RecoverError(f"the upsampling matrix does not factor into the config's smoothing stages ({error:.1e})")
    return filters


def fill_speakers(model, table: np.ndarray) -> None:
    """Export multiplies the speaker embedding into every layer's gate biases s U_l [speakers, L, G]; any
    factorisation is the same model. SVD, split evenly; spare embedding dimensions get a random init (Keras's)
    with zero projections (exact, and still trainable)."""
    (S, L, G), D = table.shape, model.config.speaker_dim
    p, sv, qt = np.linalg.svd(table.reshape(S, L * G).astype(np.float64), full_matrices=False)
    if sv.size > D and sv[D] > 1e-5 * sv[0]:
        raise RecoverError(f"the speaker bias table has rank > speaker_dim {D}: not an export of this config")
    r, emb, proj = min(D, sv.size), np.random.default_rng(0).uniform(-0.05, 0.05, (S, D)), np.zeros((D, L * G))
    emb[:, :r], proj[:r] = p[:, :r] * np.sqrt(sv[:r]), np.sqrt(sv[:r])[:, None] * qt[:r]
    put(model.speaker_embed.embeddings, emb)
    for l, block in enumerate(model.blocks):
        put(block.speaker.kernel, proj[:, l * G:(l + 1) * G])


def logit_error(model, folder: Path, frames: int = 12) -> float:
    """max |logit difference| / logit spread between the Keras model and the folder's graphs (edge runtime,
    LiteRT) on a random clip: what catches a weight put in the wrong place or transposed."""
    from edge_runtime.synth import Synthesizer
    from training.data import lpc_inputs

    cfg, rng = model.config, np.random.default_rng(0)
    classes = rng.integers(0, cfg.mu_classes, frames * cfg.frame_length)
    mel = rng.uniform(np.log(cfg.log_floor), 0, (frames, cfg.frame_width)).astype(np.float32) if cfg.use_mel else None
    lpc = lpc_inputs(classes, mel, cfg)  # an lpc_inputs model's s and p classes, as the runtime builds them
    inputs = {"audio": classes[None].astype(np.int32), "mel": None if mel is None else mel[None],
              "speaker": np.zeros(1, np.int32) if cfg.use_speaker else None, "lpc": None if lpc is None else lpc[None]}
    reference = np.asarray(model({k: v for k, v in inputs.items() if v is not None}))[0, :-1]
    edge = Synthesizer.load(folder, engine="litert").teacher_forced_logits(
        classes, mel, cfg.speakers[0] if cfg.use_speaker else None)
    return float(np.abs(edge - reference).max() / np.ptp(reference))


def read_weights(model, manifest) -> None:
    """Every variable from the graphs and tables; NaN until read back, so that one the graphs lack shows."""
    for v in model.weights:
        v.assign(np.full(v.shape, np.nan, np.float32))
    fill_step(model, graph_ops(manifest.step_path), manifest.version)
    if model.config.use_mel:
        fill_conditioner(model, graph_ops(manifest.conditioner_path), manifest.version)
    put(model.embed.embeddings, manifest.embedding)
    for table, values in zip(model.embed_lpc, manifest.lpc_inputs or ()):  # format 3: the s and p tables
        put(table.embeddings, values)
    if model.config.use_speaker:
        fill_speakers(model, manifest.speaker_bias)
    missing = [v.path for v in model.weights if np.isnan(v.numpy()).any()]
    if missing:
        raise RecoverError(f"the graphs give no value for {len(missing)} variables, e.g. {missing[0]}")


def recover(folder: str | os.PathLike, out: str | os.PathLike, data_dir: str | None = None) -> dict:
    """Builds the run folder ``out`` from a float model folder; returns where it came from."""
    import tensorflow as tf

    from training import checkpoint as ckpt_io
    from training.config import Config
    from training.train import Learner

    manifest, out = load_manifest(folder), Path(out)
    variant, producer = manifest.data.get("variant"), manifest.data.get("producer", {})
    step = producer.get("step")
    if variant not in ("float32", "float16"):
        raise RecoverError(f"{folder} is the {variant} variant (int8-rounded weights): use a float16 or float32 export")
    if not isinstance(step, int) or step < 1:
        raise RecoverError(f"{folder}'s manifest names no training step (producer.step)")
    if out.exists():
        raise RecoverError(f"{out} exists: choose a new folder")
    # steps = the exported step: a finished run for --qat-from, and the schedule's last rate is the one it had there
    config = Config.from_dict(manifest.config).replace(steps=step)
    if config.qat:
        raise RecoverError(f"{folder} is a QAT export (its ranges are not in a float graph): recover its float source")
    learner = Learner(config, tf.distribute.get_strategy())
    read_weights(learner.model, manifest)
    origin = {"model": manifest.folder.name, "run": producer.get("run"), "checkpoint": producer.get("checkpoint"),
              "variant": variant, "format_version": manifest.version,
              "logit_error": logit_error(learner.model, manifest.folder)}
    if not origin["logit_error"] <= TOLERANCE:
        raise RecoverError(f"the rebuilt model's logits are off by {origin['logit_error']:.1e} of their spread")
    for e, v in zip(learner.ema, learner.variables):
        e.assign(v)
    learner.optimizer.iterations.assign(step)  # a resume continues the schedule there; Adam's moments start at zero
    data = {**(manifest.data.get("data") or {}), **({"data_dir": data_dir} if data_dir else {})}
    remove_stale_temporaries(out)  # left by killed recoveries
    tmp = temporary_sibling(out, "tmp")
    try:  # built under a temporary name and renamed: a folder named --out is always whole
        tmp.mkdir(parents=True)
        config.to_json(tmp / "config.json")
        ckpt_io.save_checkpoint(tmp, step, learner.saved, learner.saved_ema, learner.optimizer.variables,
                                {"val_nll_bits": None, "recovered_from": origin})
        ckpt_io.write_json_atomic(tmp / "run.json", {"data": data, "best_step": step, "recovered_from": origin})
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**origin, "out": str(out), "step": step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="An exported float16 or float32 model folder.")
    parser.add_argument("--out", type=Path, required=True, help="The run folder to create.")
    parser.add_argument("--data", default=None, help="The recordings it was trained on (default: the manifest's).")
    args = parser.parse_args(argv)
    from edge_runtime.interpreter import quiet_native_stderr

    with quiet_native_stderr():  # TensorFlow's start-up banners, as the CLI drops them
        import tensorflow  # noqa: F401
    try:
        print(json.dumps(recover(args.model_dir, args.out, args.data)))
    except (OSError, WavenetEdgeError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

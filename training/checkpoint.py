"""Run folders and checkpoints: plain ``.npz`` arrays and JSON, written atomically, loaded without pickle.

A run folder::

    RUN_DIR/config.json            the Config (identical on resume, except `steps`)
    RUN_DIR/run.json               data arguments of the last start, best checkpoint
    RUN_DIR/log.jsonl              one line per validation: step, losses, samples/s, time
    RUN_DIR/tb/                    TensorBoard events
    RUN_DIR/checkpoints/ckpt-00001000/{weights.npz, ema.npz, optimizer.npz, state.json}

A checkpoint folder is written under a temporary name and renamed when complete, so a folder named
``ckpt-*`` is always whole; a kill during a write leaves only a ``.tmp-*`` folder, removed at the next start.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from edge_runtime.errors import WavenetEdgeError
from edge_runtime.files import remove_stale_temporaries, temporary_sibling, write_text_atomic
from training.config import Config

CKPT_PREFIX = "ckpt-"


class CheckpointError(WavenetEdgeError):
    """A run folder or checkpoint is missing, incomplete or does not fit the model."""


def write_json_atomic(path: Path, obj) -> None:
    """Writes JSON to a temporary file, fsyncs it and renames it over ``path``."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        with open(path, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # disk full, file-size limit, read-only folder: the checkpoint stays a .tmp- folder
        raise CheckpointError(f"cannot write checkpoint file {path}: {e.strerror or e}") from None


def _remove_folder(path: Path) -> None:
    """Deletes a checkpoint folder so that a kill midway never leaves a partial ``ckpt-*`` behind.

    ``rmtree`` unlinks file by file; renaming to a ``.tmp-`` name first (atomic) hides the folder from
    :func:`checkpoints` before any file goes, and :func:`clean_temporaries` finishes the job after a kill.
    """
    doomed = path.with_name(f".tmp-del-{path.name}-{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def variable_arrays(variables) -> dict[str, np.ndarray]:
    """Variables as ``{path: array}`` (paths are unique within a Keras model)."""
    return {v.path: np.asarray(v.numpy()) for v in variables}


def assign_arrays(variables, arrays: dict[str, np.ndarray], what: str) -> None:
    """Assigns ``{path: array}`` to variables, failing on any missing, extra or mis-shaped entry."""
    names = {v.path for v in variables}
    if names != set(arrays):
        diff = sorted(names ^ set(arrays))
        raise CheckpointError(f"{what} does not fit the model: differing variables {diff[:3]}")
    for v in variables:
        if tuple(v.shape) != arrays[v.path].shape:
            raise CheckpointError(f"{what}: {v.path} has shape {arrays[v.path].shape}, model has {tuple(v.shape)}")
        v.assign(arrays[v.path])


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX)
                  and p.name[len(CKPT_PREFIX):].isdigit())


def step_of(ckpt: Path) -> int:
    """Training step of a checkpoint folder."""
    return int(ckpt.name[len(CKPT_PREFIX):])


def save_checkpoint(run_dir: Path, step: int, model_vars, ema_vars, optimizer_vars, state: dict) -> Path:
    """Writes one checkpoint folder atomically and returns its path."""
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{CKPT_PREFIX}{step:08d}"
    if final.exists():  # same step saved twice (interrupted right after a periodic save): same weights, keep it
        return final
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_npz(tmp / "weights.npz", variable_arrays(model_vars))
    _save_npz(tmp / "ema.npz", {v.path: np.asarray(e.numpy()) for v, e in zip(model_vars, ema_vars)})
    _save_npz(tmp / "optimizer.npz", {f"{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer_vars)})
    write_json_atomic(tmp / "state.json", {"step": step, **state})
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(folder)
    return final


def clean_temporaries(run_dir: Path) -> None:
    """Removes half-written checkpoint folders left by a killed run."""
    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)


def prune(run_dir: Path, keep: int, best_step: int | None) -> None:
    """Keeps the last ``keep`` checkpoints and the best one; removes the rest."""
    ckpts = checkpoints(run_dir)
    for ckpt in ckpts[:-keep]:
        if step_of(ckpt) != best_step:
            _remove_folder(ckpt)


def read_state(ckpt: Path) -> dict:
    """The ``state.json`` of a checkpoint."""
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {ckpt / 'state.json'}: {e}") from None


def restore_checkpoint(ckpt: Path, model_vars, ema_vars, optimizer_vars) -> dict:
    """Loads a checkpoint into the given variables; returns its state dict."""
    assign_arrays(model_vars, _load_npz(ckpt / "weights.npz"), f"{ckpt}/weights.npz")
    ema = _load_npz(ckpt / "ema.npz")
    for v, e in zip(model_vars, ema_vars):
        if v.path not in ema or ema[v.path].shape != tuple(e.shape):
            raise CheckpointError(f"{ckpt}/ema.npz does not fit the model at {v.path}")
        e.assign(ema[v.path])
    opt = _load_npz(ckpt / "optimizer.npz")
    if len(opt) != len(optimizer_vars):
        raise CheckpointError(f"{ckpt}/optimizer.npz holds {len(opt)} variables, optimizer has {len(optimizer_vars)}")
    for i, v in enumerate(optimizer_vars):
        v.assign(opt[f"{i:05d}"])
    return read_state(ckpt)


def load_ema(ckpt: Path) -> dict[str, np.ndarray]:
    """A checkpoint's EMA weights (and a QAT model's ranges) as ``{path: array}``."""
    return _load_npz(Path(ckpt) / "ema.npz")


def find_checkpoint(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """Resolves ``best``, ``last`` or a checkpoint folder path inside a run folder."""
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        path = Path(which)
        if not (path / "weights.npz").is_file():
            raise CheckpointError(f"{which} is not a checkpoint folder")
        return path
    ckpts = checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"no checkpoints in {run_dir} (train first, or train 0 steps for an initial one)")
    if which == "best":
        best = read_run_info(run_dir).get("best_step")
        for c in ckpts:
            if step_of(c) == best:
                return c
    return ckpts[-1]


def read_log(run_dir: str | os.PathLike) -> list[dict]:
    """The entries of the run's ``log.jsonl`` (one per validation), oldest first; empty if it has none yet."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def read_run_info(run_dir: Path) -> dict:
    """The run's ``run.json`` (empty if absent)."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def load_run_config(run_dir: str | os.PathLike) -> Config:
    """The config of a run folder."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.json)")
    return Config.from_json(path)


def load_model(run_dir: str | os.PathLike, which: str = "best", ema: bool = True):
    """Rebuilds the model of a run from its config and loads a checkpoint's (EMA) weights.

    Returns:
        (model, config, checkpoint path).
    """
    from training.model import build_model

    config = load_run_config(run_dir)
    ckpt = find_checkpoint(run_dir, which)
    model = build_model(config)
    assign_arrays(model.weights, load_ema(ckpt) if ema else _load_npz(ckpt / "weights.npz"), str(ckpt))
    return model, config, ckpt


def snapshot_run(run_dir: str | os.PathLike, step: int, out: str | os.PathLike) -> Path:
    """A finished run of ``step`` steps made from a longer (possibly still running) run: what QAT and shipping take.

    ``out`` gets the source's config with ``steps`` = ``step``, its ``run.json`` (best checkpoint: this one; CPU
    time up to it; ``snapshot_of`` naming the source), the validation log up to ``step`` and a copy of the
    checkpoint. A cosine schedule is refused: it depends on the planned length, so the first ``step`` steps of a
    longer run are not a ``step``-step run. Built under a temporary name and renamed, so ``out`` is whole or absent.
    """
    run_dir, out = Path(run_dir), Path(out)
    config = load_run_config(run_dir)
    if config.lr_schedule == "cosine":
        raise CheckpointError(f"{run_dir} uses a cosine schedule over {config.steps} steps: its step {step} is not "
                              "the end of a run (snapshot an exponential or inverse_time run, or finish it)")
    ckpt = run_dir / "checkpoints" / f"{CKPT_PREFIX}{step:08d}"
    if ckpt not in checkpoints(run_dir):
        have = ", ".join(str(step_of(c)) for c in checkpoints(run_dir)) or "none"
        raise CheckpointError(f"{run_dir} has no checkpoint at step {step} (have: {have})")
    if out.exists():
        raise CheckpointError(f"{out} exists: choose a new folder")
    state, info = read_state(ckpt), read_run_info(run_dir)
    log = [e for e in read_log(run_dir) if e.get("step", 0) <= step]
    info.update(best_step=step, best_val_nll_bits=state.get("val_nll_bits"),
                cpu_seconds=state.get("cpu_seconds", _cpu_seconds_estimate(log, step)),
                snapshot_of={"run": str(run_dir.resolve()), "step": step, "planned_steps": config.steps})
    remove_stale_temporaries(out, ("snapshot",))
    tmp = temporary_sibling(out, "snapshot")
    (tmp / "checkpoints").mkdir(parents=True)
    try:
        shutil.copytree(ckpt, tmp / "checkpoints" / ckpt.name)
        config.replace(steps=step).to_json(tmp / "config.json")
        write_json_atomic(tmp / "run.json", info)
        write_text_atomic(tmp / "log.jsonl", "".join(json.dumps(e) + "\n" for e in log))
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _cpu_seconds_estimate(log: list[dict], step: int) -> float | None:
    """CPU time at ``step`` from the last validation before it, at that stretch's pace (checkpoints written
    before ``cpu_seconds`` was saved in them)."""
    timed = [e for e in log if e.get("cpu_seconds") is not None and e.get("step")]
    if not timed:
        return None
    last = timed[-1]
    return last["cpu_seconds"] * step / last["step"]

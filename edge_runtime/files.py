"""File utilities shared by the whole project (stdlib only): atomic text writes, stale-temporary cleanup, and
where the package keeps its shipped models and example clips.

Every temporary file or folder we write sits next to its target as ``.NAME.KIND-PID`` (optionally with a
suffix, e.g. ``.NAME.cases-PID.npz``), so a later run can tell a leftover of a killed process (its PID is gone)
from the work of one still running.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path


def temporary_sibling(path: str | os.PathLike, kind: str, suffix: str = "") -> Path:
    """``.NAME.KIND-PID[SUFFIX]`` next to ``path``: this process's temporary for it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}{suffix}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to a temporary sibling, fsyncs it and renames it over ``path``."""
    path = Path(path)
    tmp = temporary_sibling(path, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    return True


def remove_stale_temporaries(path: str | os.PathLike, kinds: tuple[str, ...] | None = None) -> None:
    """Deletes the ``.NAME.KIND-PID*`` siblings of ``path`` (files or folders) whose process is gone.

    ``kinds`` limits it to those KINDs (e.g. ``("partial",)``); None removes every kind.
    """
    path = Path(path)
    try:
        siblings = list(path.parent.glob(f".{glob.escape(path.name)}.*-*"))
    except OSError:
        return  # an unreadable folder: the writer's own open() reports it
    for p in siblings:
        kind, _, tail = p.name[len(path.name) + 2:].rpartition("-")
        pid = tail.split(".")[0]
        if (kinds is not None and kind not in kinds) or not pid.isdigit() or pid_alive(int(pid)):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        except FileNotFoundError:
            pass  # another run cleaned it first


def portable_path(path: str | os.PathLike | None, base: str | os.PathLike | None = None) -> str | None:
    """``path`` as it may be written into a shipped or shared file: never an absolute path of this machine.

    A relative path stays as it is; an absolute one becomes relative to ``base`` if given, else its last part.
    """
    if path is None or not os.path.isabs(path):
        return None if path is None else str(path)
    return os.path.relpath(path, base) if base is not None else Path(path).name


def example_clips() -> list[Path]:
    """The held-out recordings shipped as example inputs (``edge_runtime/examples``), sorted."""
    return sorted((Path(__file__).resolve().parent / "examples").glob("*.wav"))


def default_model_dir() -> Path:
    """The model folder shipped inside the package (``edge_runtime/models/default``)."""
    from edge_runtime.errors import ModelError

    path = Path(__file__).resolve().parent / "models" / "default"
    if not (path / "manifest.json").exists():
        raise ModelError("no model is shipped with this installation yet: give a MODEL_DIR")
    return path

"""Helpers shared by the test suites: running the CLI, checking clean errors, generated audio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from make_demo_data import voice, write_demo_folder, write_wav  # noqa: E402,F401


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 300):
    """Runs ``python -m wavenet_edge.cli ARGS`` in a fresh process; returns the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "wavenet_edge.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)


def assert_clean_error(result, *fragments: str) -> None:
    """Exit code 2, one line on stderr starting with 'error:', no traceback, mentioning each fragment."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("I0000", "W0000"))]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for f in fragments:
        assert f in lines[0], (f, lines[0])


EDGE_TPU_OPS = {"ADD", "CONCATENATION", "FULLY_CONNECTED", "LOGISTIC", "MUL", "QUANTIZE", "SPLIT", "TANH"}


def assert_edge_tpu_graph(step_tflite, layers: int) -> None:
    """Only ops on the Edge TPU compiler's list, integer tensors only, rank <= 3, static shapes."""
    import numpy as np

    from edge_runtime.interpreter import graph_details

    ops, tensors = graph_details(step_tflite)
    assert set(ops) <= EDGE_TPU_OPS, ops
    assert ops["FULLY_CONNECTED"] == layers + (layers - 1) + 1 + 2  # dilated, residual (not the last), skip, head
    assert {np.dtype(t["dtype"]).name for t in tensors} == {"int8", "int32"}  # no float tensor anywhere
    # int32 only for FULLY_CONNECTED biases and shape/axis constants (rank <= 1); every activation is int8
    assert all(len(t["shape"]) <= 1 for t in tensors if np.dtype(t["dtype"]) == np.int32)
    assert max(len(t["shape"]) for t in tensors) <= 3
    assert all(-1 not in list(t["shape_signature"]) for t in tensors)


def edited_model(source: Path, tmp_path: Path, change) -> Path:
    """A copy of the model folder ``source`` whose manifest ``change(data)`` edited in place."""
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(source, folder)
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder

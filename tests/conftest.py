"""Shared fixtures: seeded tiny configs and tiny generated recordings (no dependence on ../shared)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from make_demo_data import voice, write_demo_folder, write_wav  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Two speakers (VCTK-style folders), 8 kHz, files named like FSDD; index 0 is validation."""
    return write_demo_folder(tmp_path_factory.mktemp("tiny_data"), speakers=2, files=8, seconds=0.4, rate=8000)


@pytest.fixture()
def tiny_config():
    """The tiny preset with two speakers (seeded)."""
    from training.config import Config

    return Config.preset("tiny", speakers=("alice", "bob"), seed=7)


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


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """A tiny model trained for a few seconds on ``tiny_data`` (validation: files with index 0 and 1)."""
    from training.config import Config
    from training.train import DataArgs, train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = Config.preset("tiny", seed=7, steps=300, val_every=150, checkpoint_every=150)
    summary = train(config, DataArgs(str(tiny_data), val_regex=r"_[01]\.wav$"), run_dir, progress=False,
                    log=lambda m: None)
    return run_dir, summary

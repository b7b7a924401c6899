"""Faults injected for real into training: SIGKILL at random moments and inside a checkpoint write, a file-size
limit during checkpointing. A run must always resume from its last complete checkpoint, and no ``ckpt-*`` folder
may ever be unreadable."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, run_cli
from training import checkpoint as ckpt_io

HERE = Path(__file__).resolve().parent


def _train_args(data, run_dir, steps=100000):
    # a checkpoint every 2 steps and only 2 kept: writes and prunes take most of the time, so kills land in them
    return ["--preset", "tiny", "--data", str(data), "--out", str(run_dir), "--steps", str(steps), "--quiet",
            "--set", "checkpoint_every=2", "--set", "keep_checkpoints=2", "--set", "val_every=1000"]


def _assert_all_checkpoints_readable(run_dir: Path) -> list[int]:
    """Every visible checkpoint loads without pickle and names its own step; returns their steps."""
    steps = []
    for ckpt in ckpt_io.checkpoints(run_dir):
        for name in ("weights.npz", "ema.npz", "optimizer.npz"):
            with np.load(ckpt / name, allow_pickle=False) as data:
                assert data.files and all(np.all(np.isfinite(data[k])) for k in data.files), (ckpt, name)
        assert ckpt_io.read_state(ckpt)["step"] == ckpt_io.step_of(ckpt)
        steps.append(ckpt_io.step_of(ckpt))
    json.loads((run_dir / "run.json").read_text())  # never torn either
    return steps


def _listing(run_dir: Path) -> list[str]:
    try:
        return sorted(os.listdir(run_dir / "checkpoints"))
    except FileNotFoundError:
        return []


def _resumed_step(stderr: str) -> int | None:
    for line in stderr.splitlines():
        if line.startswith("resumed from "):
            return int(line.split("(step ")[1].rstrip(")"))
    return None


@pytest.mark.slow
def test_sigkill_at_random_moments_always_resumes_from_the_last_complete_checkpoint(tiny_data, tmp_path):
    run_dir, rng, last = tmp_path / "run", random.Random(1234), None
    cmd = [sys.executable, "-m", "wavenet_edge.cli", "train", *_train_args(tiny_data, run_dir)]
    for kill in range(4):
        log = tmp_path / f"stderr-{kill}.txt"
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        deadline = time.time() + 120
        while time.time() < deadline and not any(s > (last or 0) for s in map(ckpt_io.step_of,
                                                                               ckpt_io.checkpoints(run_dir))):
            time.sleep(0.02)  # wait until this run has saved something of its own
        # then a random moment counted in events, not seconds: after 0-6 further changes of the checkpoint
        # folder (a .tmp- folder appearing, a rename, a prune), so the kill lands in a step, a save or a prune
        # however fast the machine is
        changes, seen = rng.randint(0, 6), _listing(run_dir)
        while changes and time.time() < deadline and proc.poll() is None:
            now = _listing(run_dir)
            if now != seen:
                changes, seen = changes - 1, now
            else:
                time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert _resumed_step(log.read_text()) == last  # it resumed from the last complete checkpoint (or none)
        steps = _assert_all_checkpoints_readable(run_dir)
        assert steps and max(steps) > (last or 0)
        last = max(steps)
    result = run_cli("train", *_train_args(tiny_data, run_dir, steps=last + 4))
    assert result.returncode == 0, result.stderr
    assert _resumed_step(result.stderr) == last
    assert max(_assert_all_checkpoints_readable(run_dir)) == last + 4
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_write(tiny_data, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    # the 4th file written is weights.npz of the second checkpoint (step 4): stop there
    proc = subprocess.Popen([sys.executable, str(HERE / "pause_in_checkpoint.py"), "4", str(marker),
                             *_train_args(tiny_data, run_dir)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline and not marker.exists():
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "no pause within 120 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    half = Path(marker.read_text()).parent
    assert half.name.startswith(".tmp-ckpt-00000004") and (half / "weights.npz").exists()
    assert not (half / "state.json").exists()  # really half-written
    assert _assert_all_checkpoints_readable(run_dir) == [2]  # invisible: only the complete one counts
    result = run_cli("train", *_train_args(tiny_data, run_dir, steps=6))
    assert result.returncode == 0, result.stderr
    assert _resumed_step(result.stderr) == 2
    assert _assert_all_checkpoints_readable(run_dir) == [4, 6] and not half.exists()


def test_checkpoint_write_error_is_clean_and_leaves_the_last_checkpoint(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli("train", *_train_args(tiny_data, run_dir, steps=2)).returncode == 0
    size = (ckpt_io.checkpoints(run_dir)[0] / "weights.npz").stat().st_size
    # RLIMIT_FSIZE below one weights file: the next checkpoint's write fails with EFBIG (Python ignores SIGXFSZ)
    limit = f"ulimit -f {max(1, size // 1024 // 2)}"
    cmd = " ".join([sys.executable, "-m", "wavenet_edge.cli", "train", *[f"'{a}'" for a in
                                                                          _train_args(tiny_data, run_dir, steps=4)]])
    result = subprocess.run(["bash", "-c", f"{limit} && {cmd}"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and "cannot write checkpoint file" in errors[0] and "File too large" in errors[0]
    assert _assert_all_checkpoints_readable(run_dir) == [2]
    result = run_cli("train", *_train_args(tiny_data, run_dir, steps=4))  # space back: it resumes and finishes
    assert result.returncode == 0 and _resumed_step(result.stderr) == 2, result.stderr
    assert _assert_all_checkpoints_readable(run_dir) == [2, 4]


def test_export_write_error_is_clean_and_leaves_nothing(tiny_run, tiny_data, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "model"
    cmd = " ".join([sys.executable, "-m", "wavenet_edge.cli", "export", str(run_dir), "--out", str(out),
                    "--quantize", "dynamic", "--calibration-data", str(tiny_data)])
    result = subprocess.run(["bash", "-c", f"ulimit -f 1 && {cmd}"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and "File too large" in errors[0], errors
    assert not out.exists() and not list(tmp_path.glob(".model*"))

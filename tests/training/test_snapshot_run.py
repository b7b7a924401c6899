"""tools/snapshot_run.py: one checkpoint of a longer run frozen as a finished run, which QAT and shipping take."""

import json
import shutil

import numpy as np

from tests.helpers import REPO  # noqa: F401 (puts tools/ on the path)
from training import checkpoint as ckpt_io
from training.config import Config


def snapshot(capsys, *argv):
    """The tool's main in this process: (exit code, stdout, stderr lines)."""
    from snapshot_run import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def test_snapshot_is_a_finished_run_of_that_step(tiny_run, tmp_path, capsys):
    from training.qat import FineTuneSource

    source, out = tiny_run[0], tmp_path / "snap"
    code, stdout, _ = snapshot(capsys, source, "--step", 150, "--out", out)
    assert code == 0 and json.loads(stdout)["planned_steps"] == 300
    config = Config.from_json(out / "config.json")
    assert config == Config.from_json(source / "config.json").replace(steps=150)
    ckpt = ckpt_io.find_checkpoint(out, "best")
    assert ckpt.name == "ckpt-00000150" and FineTuneSource.open(out).checkpoint == ckpt  # QAT takes it as finished
    original = source / "checkpoints" / "ckpt-00000150"
    for name in ("weights.npz", "ema.npz", "optimizer.npz"):
        a, b = ckpt_io._load_npz(original / name), ckpt_io._load_npz(ckpt / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    info, state = ckpt_io.read_run_info(out), ckpt_io.read_state(original)
    assert info["snapshot_of"] == {"run": str(source.resolve()), "step": 150, "planned_steps": 300}
    assert info["best_step"] == 150 and info["best_val_nll_bits"] == state["val_nll_bits"]
    # the CPU time saved with the checkpoint: less than the whole run's, and the log stops at the step
    assert 0 < info["cpu_seconds"] == state["cpu_seconds"] < ckpt_io.read_run_info(source)["cpu_seconds"]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [150] and info["data"] == ckpt_io.read_run_info(source)["data"]


def test_cpu_time_of_an_older_checkpoint_is_estimated_from_the_log():
    log = [{"step": 100, "cpu_seconds": 50.0}, {"step": 200, "cpu_seconds": 130.0}]
    assert ckpt_io._cpu_seconds_estimate(log, 300) == 130.0 * 300 / 200
    assert ckpt_io._cpu_seconds_estimate([], 300) is None


def test_bad_requests_are_one_line_errors_and_write_nothing(tiny_run, tmp_path, capsys):
    source = tiny_run[0]
    code, _, err = snapshot(capsys, source, "--step", 200, "--out", tmp_path / "a")
    assert code == 2 and len(err) == 1 and "no checkpoint at step 200 (have: 150, 300)" in err[0]
    (tmp_path / "b").mkdir()
    code, _, err = snapshot(capsys, source, "--step", 150, "--out", tmp_path / "b")
    assert code == 2 and len(err) == 1 and "exists" in err[0] and not any((tmp_path / "b").iterdir())

    cosine = tmp_path / "cosine"
    shutil.copytree(source, cosine)
    Config.from_json(source / "config.json").replace(lr_schedule="cosine").to_json(cosine / "config.json")
    code, _, err = snapshot(capsys, cosine, "--step", 150, "--out", tmp_path / "c")
    assert code == 2 and len(err) == 1 and "cosine schedule over 300 steps" in err[0]
    code, _, err = snapshot(capsys, tmp_path / "nowhere", "--step", 150, "--out", tmp_path / "d")
    assert code == 2 and len(err) == 1 and "not a run folder" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "cosine"]  # nothing half-written

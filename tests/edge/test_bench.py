"""`wavenet-edge bench` end to end on tiny models (numbers consistent, not timed), and the report tool."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, assert_clean_error, run_cli

FIXTURE = REPO / "tests/data/bench_s16k_dev.json"  # a real run of this machine (s preset, 16 kHz)


def check_consistent(r):
    us = r["us_per_sample"]
    assert us["p50"] <= us["p90"] <= us["p99"] <= us["max"]
    assert min(us["runs"]) <= us["median"] <= max(us["runs"]) and len(us["runs"]) == r["runs"]
    assert r["rtf"] == pytest.approx(us["median"] * r["sample_rate"] / 1e6)
    for rate, ok in r["real_time"].items():
        assert ok == (us["median"] * int(rate) / 1e6 <= 1.0)
    assert r["streams_per_core_16k"] == pytest.approx(r["batch"] / (us["median"] * 16000 / 1e6))
    assert 0 < r["time_to_first_audio_ms"] < 1e4 and r["load_s"] > 0 and r["peak_rss_mb"] > 10
    assert (r["warning"] is not None) == (r["spread"] > 0.10)


def test_bench_end_to_end(built, tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", str(built / "models"), "--seconds", "0.5", "--runs", "2", "--threads", "1,2",
                "--json", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["schema"] == "wavenet-edge-bench/1" and data["device"]["cores"] >= 1
    assert [(x["variant"], x["threads"]) for x in data["results"]] == [
        (v, t) for v in ("dynamic", "float16", "float32", "int8") for t in (1, 2)]
    for x in data["results"]:
        check_consistent(x)
        assert x["samples_per_run"] == 4000 and x["conditioner_us_per_frame"] > 0


def test_bench_streams_and_baselines(built, tmp_path):
    out = tmp_path / "b2.json"
    r = run_cli("bench", str(built / "models_b2"), "--streams", "2", "--seconds", "0.25", "--runs", "1",
                "--baselines", "--baseline-samples", "40", "--json", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    x = data["results"][0]
    check_consistent(x)
    assert x["batch"] == 2
    base = data["baselines"][str(built / "models_b2")]
    assert base["weights"] == "run" and base["tf_step_us_per_sample"] > 0 and base["naive_us_per_sample"] > 0
    assert base["speedup_vs_tf_step"] == pytest.approx(base["tf_step_us_per_sample"] / x["us_per_sample"]["median"])
    assert_clean_error(run_cli("bench", str(built / "models/dynamic"), "--streams", "2"), "--batch 2")
    assert_clean_error(run_cli("bench", str(tmp_path)), "not a model folder")


def report(*args):
    return subprocess.run([sys.executable, str(REPO / "tools/bench_report.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_report_table_plot_and_regressions(tmp_path):
    data = json.loads(FIXTURE.read_text())
    r = report(FIXTURE, "--out", tmp_path / "r.md", "--plot", tmp_path / "r.png")
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "r.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # minus the header
    assert len(rows) == len(data["results"]) == 4
    assert "| s @ 16 kHz | dynamic | 1 | 1 | 31.8 |" in table and "TF tf.function step" in table
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert report(FIXTURE, "--compare", FIXTURE).returncode == 0  # identical: no regression
    slower = json.loads(FIXTURE.read_text())
    slower["results"][0]["us_per_sample"]["median"] *= 1.5
    (tmp_path / "slow.json").write_text(json.dumps(slower))
    r = report(tmp_path / "slow.json", "--compare", FIXTURE)
    assert r.returncode == 1 and r.stderr.count("regression:") == 1 and "50% slower" in r.stderr
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    r = report(tmp_path / "bad.json")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr

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
    from edge_runtime.bench import cpu_features

    assert data["device"]["cpu_features"] == cpu_features()  # recorded, and printed above the table
    assert (", ".join(cpu_features()) or "none of") in r.stderr
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


X86_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2\n"
X86_VNNI = ("model name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx avx2 fma f16c avx512f avx512bw avx512_vnni "
            "avx_vnni avx512_bf16\n")
PI4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n"
PI5 = ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
       "asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n")


@pytest.mark.parametrize("cpuinfo, expected", [
    (X86_AVX2, ["AVX2", "FMA", "F16C"]),
    (X86_VNNI, ["AVX2", "FMA", "F16C", "AVX-512", "AVX-512 VNNI", "AVX-VNNI", "AVX-512 BF16"]),
    (PI4, ["NEON"]),
    (PI5, ["NEON", "dotprod", "fp16"]),
    ("", []),
])
def test_cpu_features(cpuinfo, expected):
    from edge_runtime.bench import cpu_features

    assert cpu_features(cpuinfo) == expected


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
    assert "| CPU features not recorded |" in table  # the fixture predates cpu_features
    featured = {**data, "device": {**data["device"], "cpu_features": ["AVX2", "FMA"]}}
    (tmp_path / "featured.json").write_text(json.dumps(featured))
    assert report(tmp_path / "featured.json", "--out", tmp_path / "f.md").returncode == 0
    assert "| AVX2, FMA |" in (tmp_path / "f.md").read_text()
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

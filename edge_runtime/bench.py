"""Latency benchmark of the whole streaming loop of exported models (numpy + LiteRT only).

Each (model, threads) pair is measured in a fresh process (``python -m edge_runtime.bench ONE.json``), so load
time and peak resident memory belong to that model alone. The JSON written by ``wavenet-edge bench --json`` is
documented in ``tools/README.md`` (schema ``wavenet-edge-bench/1``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCHEMA = "wavenet-edge-bench/1"
RATES = (8000, 16000, 22050, 24000)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip().strip("\x00") or None
    except OSError:
        return None


# /proc/cpuinfo flags that decide how fast LiteRT's (XNNPACK's) kernels run, and their usual names.
CPU_FEATURES = {
    "x86": [("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"), ("avx512f", "AVX-512"),
            ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX-512 BF16"),
            ("avx512_fp16", "AVX-512 FP16"), ("amx_int8", "AMX-INT8")],
    "arm": [("neon", "NEON"), ("asimd", "NEON"), ("asimddp", "dotprod"), ("fphp", "fp16"), ("asimdhp", "fp16"),
            ("i8mm", "i8mm"), ("sve", "SVE")],
}


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The CPU's features that matter for these kernels (e.g. ``["AVX2", "FMA", "AVX-512", "AVX-512 VNNI"]``, or
    ``["NEON", "dotprod", "fp16"]`` on ARM), from the flags of ``/proc/cpuinfo``; empty where it has none."""
    cpuinfo = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM; every core lists the same
            flags = set(value.split())
            break
    names: list[str] = []
    for flag, name in CPU_FEATURES["x86"] + CPU_FEATURES["arm"]:
        if flag in flags and name not in names:
            names.append(name)
    return names


def device_info() -> dict:
    """What the numbers were measured on: CPU and its features, cores, board, OS, versions, governor, frequency."""
    cpu = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.split(":")[0].strip() in ("model name", "Model", "Hardware") and ":" in line:
            cpu = line.split(":", 1)[1].strip()
            break
    from importlib import metadata

    try:
        litert = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        litert = None
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    return {"cpu": cpu or platform.processor() or None, "cpu_features": cpu_features(), "machine": platform.machine(),
            "cores": os.cpu_count(),
            "board": _read("/proc/device-tree/model"), "os": platform.platform(), "kernel": platform.release(),
            "python": platform.python_version(), "numpy": np.__version__, "interpreter": f"ai-edge-litert {litert}",
            "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "cpu_mhz": int(freq) / 1000 if freq and freq.isdigit() else None}


def bench_mel(synth, seconds: float) -> np.ndarray | None:
    """Log-mel frames of a voiced test signal (150 Hz harmonic tone, 3 Hz envelope), ``seconds`` long.

    The signal repeats every second, so one second of frames is tiled: preparing the input costs no memory that
    would blur the peak-memory figure of long runs.
    """
    if not synth.use_mel:
        return None
    rate, hop = synth.sample_rate, synth.config["hop_length"]
    t = np.arange(3 * rate) / rate
    audio = (0.3 * np.sin(2 * np.pi * 150 * t) * (1.2 + np.sin(2 * np.pi * 3 * t)) / 2.2).astype(np.float32)
    second = synth.features(audio)[0][rate // hop: 2 * rate // hop]  # a middle second
    frames = int(seconds * rate) // hop
    return np.tile(second, (frames // second.shape[0] + 1, 1))[:frames]


def measure(model_dir: str, seconds: float, runs: int, threads: int, device: str, engine: str = "auto") -> dict:
    """Benchmarks one model folder in this process; see the module docstring for the fields."""
    from edge_runtime.synth import Synthesizer

    t0 = time.perf_counter()
    synth = Synthesizer.load(model_dir, device=device, threads=threads, engine=engine)
    load_s = time.perf_counter() - t0
    b = synth.batch
    mel = bench_mel(synth, seconds)
    if mel is not None and b > 1:
        mel = np.repeat(mel[:, None], b, axis=1)  # B copies of the utterance, one per stream
    speakers = [i % max(1, len(synth.manifest.speakers)) for i in range(b)] if synth.use_speaker else None
    speaker = speakers if b > 1 else (speakers[0] if speakers else None)

    def one_run(seed: int, secs: float, frames) -> tuple[float, float, list[float], int]:
        chunk_us, n, start = [], 0, time.perf_counter()
        first, last = None, start
        for chunk in synth.stream(frames, speaker=speaker, seed=seed, seconds=secs):
            now = time.perf_counter()
            first = first if first is not None else now - start
            chunk_us.append((now - last) / chunk.shape[0] * 1e6)
            n, last = n + chunk.shape[0], now
        return (time.perf_counter() - start) / n * 1e6, first, chunk_us, n

    warm = None if mel is None else mel[: max(1, mel.shape[0] // 8)]
    one_run(0, seconds / 8, warm)  # warm-up: first-call allocations and caches
    totals, firsts, chunks, samples = [], [], [], 0
    for r in range(runs):
        total, first, chunk_us, samples = one_run(r + 1, seconds, mel)
        totals.append(total)
        firsts.append(first)
        chunks.extend(chunk_us)
    cond_us = None
    if mel is not None:
        t = time.perf_counter()
        frames = sum(c.shape[0] for c in synth.conditioner.stream(mel, copy=False)) // synth.conditioner.hop
        cond_us = (time.perf_counter() - t) / frames * 1e6
    us = statistics.median(totals)
    spread = (max(totals) - min(totals)) / us
    rate = synth.sample_rate
    data = synth.manifest.data
    result = {
        "model": str(model_dir), "variant": data["variant"], "preset": synth.config["name"], "batch": b,
        "threads": threads, "device": device, "engine": synth.engine, "engine_note": synth.engine_note,
        "sample_rate": rate, "seconds": seconds, "runs": runs,
        "samples_per_run": samples,
        "us_per_sample": {"median": us, "runs": totals, "p50": float(np.percentile(chunks, 50)),
                          "p90": float(np.percentile(chunks, 90)), "p99": float(np.percentile(chunks, 99)),
                          "max": float(np.max(chunks))},
        "rtf": us * rate / 1e6,
        "real_time": {str(r): bool(us * r / 1e6 <= 1.0) for r in RATES},
        "streams_per_core_16k": b / (us * 16000 / 1e6),
        "time_to_first_audio_ms": statistics.median(firsts) * 1000,
        "conditioner_us_per_frame": cond_us, "load_s": load_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_bytes": synth.manifest.step_path.stat().st_size, "spread": spread,
        "warning": f"runs spread {spread:.0%} (> 10 %): the machine was busy" if spread > 0.10 else None,
    }
    return result


def run_isolated(model_dir: str, seconds: float, runs: int, threads: int, device: str, engine: str = "auto") -> dict:
    """:func:`measure` in a fresh Python process (isolated load time and peak memory)."""
    args = json.dumps({"model_dir": str(model_dir), "seconds": seconds, "runs": runs, "threads": threads,
                       "device": device, "engine": engine})
    proc = subprocess.run([sys.executable, "-m", "edge_runtime.bench", args], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        from edge_runtime.errors import EdgeError

        raise EdgeError(lines[-1] if lines else f"benchmark of {model_dir} failed")
    return json.loads(proc.stdout)


def main() -> None:
    from edge_runtime.errors import EdgeError

    try:
        print(json.dumps(measure(**json.loads(sys.argv[1]))))
    except EdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

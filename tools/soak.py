"""Soak test: one synthesizer streams without pause for N minutes; resident memory and latency must stay flat.

The input never ends: the shipped example clips' log-mels, cycled, are fed to ``Synthesizer.stream`` as an
iterator (as a TTS front end would), so this is one continuous stream, not many short ones::

    python tools/soak.py --minutes 10 --json docs/soak.json --plot docs/soak.png

Per window of ``--window`` seconds it records µs per sample (wall time of the window / its samples), the
slowest chunk's µs per sample and the process's resident memory (VmRSS). "Flat" is checked on the medians of
the first and last 20 % of the windows: memory grows by less than ``--max-rss-growth-mb``, latency by less than
``--max-latency-growth`` (a ratio); the exit code says whether it held.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_runtime.corpus import speaker_of  # noqa: E402
from edge_runtime.files import portable_path, write_text_atomic  # noqa: E402
from edge_runtime.synth import Synthesizer, example_clips  # noqa: E402
from edge_runtime.wavio import read_wav  # noqa: E402


def rss_mb() -> float:
    """Resident memory of this process (MB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def soak(model: str | None, minutes: float, window_s: float, seed: int) -> dict:
    """Streams for ``minutes``; returns the per-window records and a summary."""
    synth = Synthesizer.load(model)
    clips = example_clips()
    mels = [synth.features(read_wav(c)[0])[0] for c in clips]  # the output stays at the model's level: the soak times, not listens
    regex = synth.manifest.data.get("data", {}).get("speaker_regex")
    speaker = speaker_of(clips[0], clips[0].parent, regex) if synth.use_speaker and regex else None
    frames = (frame for mel in itertools.cycle(mels) for frame in mel)  # endless, frame by frame
    windows, t_start = [], time.perf_counter()
    t_window, n_window, worst = t_start, 0, 0.0
    t_chunk = t_start
    for chunk in synth.stream(frames, speaker=speaker, seed=seed):
        now = time.perf_counter()
        n_window += chunk.shape[0]
        worst = max(worst, (now - t_chunk) * 1e6 / chunk.shape[0])
        t_chunk = now
        if now - t_window >= window_s:
            windows.append({"t_s": round(now - t_start, 2), "samples": n_window,
                            "us_per_sample": (now - t_window) * 1e6 / n_window,
                            "worst_chunk_us_per_sample": worst, "rss_mb": rss_mb()})
            t_window, n_window, worst = now, 0, 0.0
            if now - t_start >= minutes * 60:
                break
    return {"model": portable_path(synth.manifest.folder, os.getcwd()), "variant": synth.manifest.data["variant"],
            "sample_rate": synth.sample_rate, "minutes": minutes, "window_s": window_s,
            "audio_seconds": sum(w["samples"] for w in windows) / synth.sample_rate, "windows": windows}


def summarize(result: dict, max_rss_growth_mb: float, max_latency_growth: float) -> dict:
    """First-fifth vs last-fifth medians and a linear memory slope; ``flat`` if both stay within bounds."""
    w = result["windows"]
    k = max(1, len(w) // 5)
    median = lambda key, part: float(np.median([x[key] for x in part]))  # noqa: E731
    t = np.array([x["t_s"] for x in w]) / 60
    slope = float(np.polyfit(t, [x["rss_mb"] for x in w], 1)[0]) if len(w) > 2 else 0.0
    s = {"windows": len(w), "rss_mb_first": median("rss_mb", w[:k]), "rss_mb_last": median("rss_mb", w[-k:]),
         "rss_mb_max": max(x["rss_mb"] for x in w), "rss_slope_mb_per_min": slope,
         "us_per_sample_first": median("us_per_sample", w[:k]), "us_per_sample_last": median("us_per_sample", w[-k:]),
         "us_per_sample_p50": median("us_per_sample", w), "worst_chunk_us_per_sample_max":
             max(x["worst_chunk_us_per_sample"] for x in w)}
    s["rss_growth_mb"] = s["rss_mb_last"] - s["rss_mb_first"]
    s["latency_ratio_last_to_first"] = s["us_per_sample_last"] / s["us_per_sample_first"]
    s["flat"] = bool(s["rss_growth_mb"] < max_rss_growth_mb and s["latency_ratio_last_to_first"] < 1 + max_latency_growth)
    return s


def plot(result: dict, path: Path) -> None:
    """Memory and latency over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = result["windows"]
    t = [x["t_s"] / 60 for x in w]
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    a.plot(t, [x["rss_mb"] for x in w], color="tab:blue")
    a.set_ylabel("resident MB")
    a.set_ylim(0, max(x["rss_mb"] for x in w) * 1.2)
    b.plot(t, [x["us_per_sample"] for x in w], color="tab:orange", label="window mean")
    b.plot(t, [x["worst_chunk_us_per_sample"] for x in w], color="tab:red", alpha=0.4, label="slowest chunk")
    b.set_ylabel("µs / sample")
    b.set_xlabel("minutes of continuous streaming")
    b.set_ylim(0, None)
    b.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"soak: {result['variant']} model, {result['audio_seconds'] / 60:.0f} min of audio in "
                 f"{result['minutes']:g} min", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="Model folder (default: the shipped model).")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=10.0, help="Seconds per record.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-growth-mb", type=float, default=5.0)
    parser.add_argument("--max-latency-growth", type=float, default=0.10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    result = soak(args.model, args.minutes, args.window, args.seed)
    result["summary"] = s = summarize(result, args.max_rss_growth_mb, args.max_latency_growth)
    print(f"{result['audio_seconds']:.0f} s of audio in {args.minutes:g} min ({s['windows']} windows): "
          f"RSS {s['rss_mb_first']:.1f} -> {s['rss_mb_last']:.1f} MB (max {s['rss_mb_max']:.1f}, "
          f"{s['rss_slope_mb_per_min']:+.3f} MB/min); µs/sample {s['us_per_sample_first']:.2f} -> "
          f"{s['us_per_sample_last']:.2f} (x{s['latency_ratio_last_to_first']:.3f}); "
          f"{'flat' if s['flat'] else 'NOT flat'}")
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0 if s["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())

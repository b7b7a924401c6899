"""Turns `wavenet-edge bench --json` results into a markdown table and a bar chart, and flags regressions.

    python tools/bench_report.py results/*.json --out report.md [--plot report.png] [--compare REFERENCE.json]

Rows are device x model x variant x threads x batch. ``--compare`` matches rows by (preset, variant, threads, batch,
device) against a reference file and exits 1 when one is more than 30 % slower (``--tolerance``).
The JSON format (schema ``wavenet-edge-bench/1``) is described in tools/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCHEMA = "wavenet-edge-bench/1"
RATES = ("8000", "16000", "22050", "24000")


class ReportError(ValueError):
    """A results file is missing, malformed or of another schema."""


def load(path: str | Path) -> dict:
    """Reads and checks one results file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError(f"{path} is not a {SCHEMA} file")
    for r in data.get("results", []):
        missing = {"preset", "variant", "threads", "batch", "us_per_sample", "rtf", "sample_rate"} - set(r)
        if missing:
            raise ReportError(f"{path}: a result lacks {sorted(missing)}")
    return data


def device_name(data: dict) -> str:
    """A short label for the machine: the board if known, else the CPU."""
    d = data.get("device", {})
    return d.get("board") or f"{d.get('cpu') or d.get('machine')} ({d.get('cores')} cores)"


def cpu_features(data: dict) -> str:
    """The CPU features the file recorded (AVX2, AVX-512, VNNI; NEON, dotprod, fp16), or that it has none."""
    features = data.get("device", {}).get("cpu_features")
    if features is None:
        return "CPU features not recorded"
    return ", ".join(features) or "none of AVX2/AVX-512/VNNI/NEON/dotprod/fp16"


def key(data: dict, r: dict) -> tuple:
    return (device_name(data), r["preset"], r["variant"], r["threads"], r["batch"], r.get("device", "cpu"))


def rows(files: list[dict]) -> list[tuple[dict, dict]]:
    """(file, result) pairs in a stable order."""
    pairs = [(f, r) for f in files for r in f["results"]]
    return sorted(pairs, key=lambda p: key(*p))


def markdown(files: list[dict]) -> str:
    """The comparison table (one row per device x model x variant x threads x batch)."""
    lines = ["| device | CPU features | model | variant | threads | streams | µs/sample (median) | p99 | RTF "
             "| real time at (kHz) | first audio ms | peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f, r in rows(files):
        rt = ", ".join(f"{int(k) / 1000:g}" for k in RATES if r["real_time"].get(k)) or "none"
        lines.append(f"| {device_name(f)} | {cpu_features(f)} | {r['preset']} @ {r['sample_rate'] / 1000:g} kHz | {r['variant']} | "
                     f"{r['threads']} | {r['batch']} | {r['us_per_sample']['median']:.1f} | "
                     f"{r['us_per_sample']['p99']:.1f} | {r['rtf']:.3f} | {rt} | "
                     f"{r['time_to_first_audio_ms']:.1f} | {r['peak_rss_mb']:.0f} |")
    for f in files:
        for model, b in (f.get("baselines") or {}).items():
            lines.append(f"\nBaselines on {device_name(f)}, {model}: TF tf.function step "
                         f"{b['tf_step_us_per_sample']:.0f} µs/sample ({b['speedup_vs_tf_step']:.1f}× slower than the "
                         f"edge loop), naive regeneration {b['naive_us_per_sample']:.0f} µs/sample "
                         f"({b['speedup_vs_naive']:.0f}× slower); weights: {b['weights']}.")
    return "\n".join(lines) + "\n"


def plot(files: list[dict], out: Path) -> None:
    """Horizontal bars of µs/sample per stream step with the real-time budget of each rate as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = rows(files)
    labels = [f"{device_name(f)[:24]} {r['preset']} {r['variant']} t{r['threads']} b{r['batch']}" for f, r in pairs]
    values = [r["us_per_sample"]["median"] for _, r in pairs]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(pairs) + 1.5))
    ax.barh(range(len(pairs)), values, color="#4878a8")
    for rate, style in zip(RATES, [":", "--", "-.", "-"]):
        ax.axvline(1e6 / int(rate), color="#c44", linestyle=style, linewidth=1,
                   label=f"real time at {int(rate) / 1000:g} kHz ({1e6 / int(rate):.1f} µs)")
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("µs per generated sample (whole streaming loop, per step of all streams)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def regressions(files: list[dict], reference: dict, tolerance: float) -> list[str]:
    """Rows more than ``tolerance`` slower than the reference row with the same preset/variant/threads/batch."""
    ref = {key(reference, r)[1:]: r for r in reference["results"]}
    found = []
    for f, r in rows(files):
        base = ref.get(key(f, r)[1:])
        if base is None:
            continue
        ratio = r["us_per_sample"]["median"] / base["us_per_sample"]["median"]
        if ratio > 1 + tolerance:
            found.append(f"{r['preset']} {r['variant']} threads {r['threads']} batch {r['batch']}: "
                         f"{r['us_per_sample']['median']:.1f} µs vs {base['us_per_sample']['median']:.1f} "
                         f"({ratio - 1:.0%} slower)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", type=Path, help="markdown file (default: print)")
    parser.add_argument("--plot", type=Path, help="bar chart (PNG)")
    parser.add_argument("--compare", help="reference results JSON")
    parser.add_argument("--tolerance", type=float, default=0.30)
    args = parser.parse_args(argv)
    try:
        files = [load(p) for p in args.results]
        reference = load(args.compare) if args.compare else None
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(files)
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    if args.plot:
        plot(files, args.plot)
    if reference is not None:
        found = regressions(files, reference, args.tolerance)
        for line in found:
            print(f"regression: {line}", file=sys.stderr)
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Validation NLL of several training runs at equal CPU time (the fair comparison of two recipes).

    python tools/compare_runs.py runs/a runs/b [--at 600,1200,1800]

Reads each run's ``log.jsonl`` (``cpu_seconds`` is the CPU time of its training processes, summed over
resumes) and prints, for each CPU budget, the last validation NLL each run had reached within it. NLLs are
only comparable between runs that predict the same targets: a run with another ``preemphasis`` or ``lpc_order``
is listed, but needs an audio score (tools/quality_report.py) to be compared.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.checkpoint import read_log  # noqa: E402


def history(run: Path) -> list[dict]:
    """(cpu_seconds, step, val_nll_bits) of every validation with a CPU time, in order."""
    return [e for e in read_log(run) if e.get("cpu_seconds") is not None and e.get("val_nll_bits") is not None]


def at_budget(entries: list[dict], cpu_seconds: float) -> dict | None:
    """The last validation reached within ``cpu_seconds``."""
    within = [e for e in entries if e["cpu_seconds"] <= cpu_seconds]
    return within[-1] if within else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--at", default=None, help="CPU-second budgets (default: each run's last, the smallest).")
    args = parser.parse_args(argv)
    try:
        runs = {run: history(run) for run in args.runs}
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if any(not entries for entries in runs.values()):
        print("error: a run has no validation with a CPU time in its log.jsonl", file=sys.stderr)
        return 2
    budgets = ([float(b) for b in args.at.split(",")] if args.at
               else [min(entries[-1]["cpu_seconds"] for entries in runs.values())])
    print("| CPU s | " + " | ".join(run.name for run in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for budget in budgets:
        cells = []
        for entries in runs.values():
            e = at_budget(entries, budget)
            cells.append("–" if e is None else f"{e['val_nll_bits']:.3f} (step {e['step']})")
        print(f"| {budget:.0f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

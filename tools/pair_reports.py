"""Pairs a method of one quality report with a method of another, clip by clip: an A/B across two runs of
``tools/quality_report.py --json`` (e.g. a re-shipped voice against the report of the voice it replaces).

    python tools/pair_reports.py NEW.json OLD.json "WaveNet s dynamic (default)" [--baseline LABEL]

Only reports made on the same clips with the same seeds pair (checked); each metric gets the method's wins, the
mean difference and its 95 % interval (``quality_report.paired``) over the clips both scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_report import METRICS, paired  # noqa: E402


class PairError(ValueError):
    """The two reports cannot be paired (the message says why)."""


def clips_of(report: dict, label: str, path: str) -> list[dict]:
    """The method's per-clip scores, in file order."""
    if label not in report.get("per_clip", {}):
        raise PairError(f"{path} has no method {label!r} (has: {', '.join(report.get('per_clip', {}))})")
    return sorted(report["per_clip"][label], key=lambda clip: clip["file"])


def pair(new: dict, old: dict, label: str, baseline: str, paths=("NEW", "OLD")) -> dict:
    """{metric: paired(new's method, old's baseline)} for the metrics both reports have (reports made before the
    pitch errors lack them); lower is better for ``lmd_db``, ``gpe`` and ``vde``, as in the reports."""
    if new["settings"]["seeds"] != old["settings"]["seeds"]:
        raise PairError(f"seeds differ: {new['settings']['seeds']} and {old['settings']['seeds']}")
    a, b = clips_of(new, label, paths[0]), clips_of(old, baseline, paths[1])
    if [c["file"] for c in a] != [c["file"] for c in b]:
        raise PairError("the reports scored different clips")
    return {metric: paired(a, b, metric) for metric in METRICS if metric in a[0] and metric in b[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("new", type=Path)
    parser.add_argument("old", type=Path)
    parser.add_argument("method", help="The method's label in NEW (a row of its table).")
    parser.add_argument("--baseline", default=None, help="The label in OLD (default: the same).")
    args = parser.parse_args(argv)
    try:
        new, old = (json.loads(p.read_text()) for p in (args.new, args.old))
        result = pair(new, old, args.method, args.baseline or args.method, (str(args.new), str(args.old)))
    except PairError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as e:  # unreadable, not JSON, not a quality report
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

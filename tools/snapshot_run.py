"""Freezes one checkpoint of a longer (possibly still running) training run as a finished run, to fine-tune and ship.

    python tools/snapshot_run.py runs/s_lpc --step 3000 --out runs/s_lpc3000
    wavenet-edge train --qat-from runs/s_lpc3000 --steps 150 --set learning_rate=3e-4 --out runs/s_lpc3000_qat
    python tools/ship_model.py runs/s_lpc3000 --data DIR --int8-from runs/s_lpc3000_qat

The new folder is a finished run of ``--step`` steps (``training/checkpoint.py:snapshot_run``): ``train --qat-from``
and ``ship_model.py`` take it like any other, and its ``run.json`` names the run it came from. The source keeps
training untouched (its checkpoints are pruned as it goes, so snapshot a step while it still exists).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_runtime.errors import WavenetEdgeError, first_line  # noqa: E402
from training.checkpoint import snapshot_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="The training run folder.")
    parser.add_argument("--step", type=int, required=True, help="A step that has a checkpoint in the run.")
    parser.add_argument("--out", type=Path, required=True, help="The run folder to create.")
    args = parser.parse_args(argv)
    try:
        out = snapshot_run(args.run, args.step, args.out)
    except (OSError, WavenetEdgeError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    print(json.dumps({"run": str(out), "step": args.step, **json.loads((out / "run.json").read_text())["snapshot_of"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

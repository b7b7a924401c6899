"""``python pause_in_checkpoint.py N MARKER TRAIN-ARGS...``: runs ``wavenet-edge train`` and stops dead inside the
N-th checkpoint file write (after the file, before the folder is complete), writing MARKER, so that a test can
SIGKILL the process exactly there. The training code itself is unchanged."""

import sys
import time
from pathlib import Path

from training import checkpoint
from wavenet_edge.cli import main

n, marker = int(sys.argv[1]), Path(sys.argv[2])
original, calls = checkpoint._save_npz, [0]


def paused(path, arrays):
    """The real write, then a long sleep on the N-th call."""
    original(path, arrays)
    calls[0] += 1
    if calls[0] == n:
        marker.write_text(str(path))
        time.sleep(600)


checkpoint._save_npz = paused
main(["train", *sys.argv[3:]], prog_name="wavenet-edge")

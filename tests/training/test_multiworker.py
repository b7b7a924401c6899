"""Multi-machine training, for real on one machine: two worker processes on 127.0.0.1 with ``TF_CONFIG``, which
``training.train.choose_strategy`` turns into ``MultiWorkerMirroredStrategy``."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO
from training import checkpoint as ckpt_io

STEPS = 4


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_take_one_step_per_global_batch_and_end_identical(tiny_data, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        # each worker writes its own run folder (on several machines each would have its own disk)
        cmd = [sys.executable, "-m", "wavenet_edge.cli", "train", "--preset", "tiny", "--data", str(tiny_data),
               "--out", str(tmp_path / f"worker{index}"), "--steps", str(STEPS), "--val-regex", r"_[01]\.wav$",
               "--set", f"checkpoint_every={STEPS}", "--set", f"val_every={STEPS}", "--quiet"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    weights = []
    for index, (proc, (out, err)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"worker {index}: {err[-3000:]}"
        assert "2 replica(s)" in err  # one replica per worker, in sync
        assert json.loads(out.strip().splitlines()[-1])["step"] == STEPS
        ckpt = ckpt_io.checkpoints(tmp_path / f"worker{index}")[-1]
        assert ckpt_io.read_state(ckpt)["step"] == STEPS
        with np.load(ckpt / "optimizer.npz") as opt:
            assert int(opt["00000"]) == STEPS  # one optimizer step per global batch, not one per worker batch
        with np.load(ckpt / "weights.npz") as w:
            weights.append({k: w[k] for k in w.files})
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert np.array_equal(weights[0][k], weights[1][k]), k  # the all-reduce kept the workers identical

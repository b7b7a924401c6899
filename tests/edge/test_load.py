"""Several synthesizers at once, in threads and in processes: each gives exactly the audio it gives alone."""

import subprocess
import sys
import threading

import numpy as np

from edge_runtime.synth import Synthesizer
from edge_runtime.wavio import to_pcm16
from tests.helpers import REPO

JOBS = [("alice", 0), ("bob", 1), ("alice", 2), ("bob", 3)]  # (speaker, seed): four different streams


def _alone(model, mel):
    synth = Synthesizer.load(model)
    return [np.concatenate(list(synth.stream(mel, speaker=s, seed=seed))) for s, seed in JOBS]


def test_four_synthesizers_in_threads(built, reference):
    model, mel = built / "models/dynamic", reference[0]["mel"]
    alone = _alone(model, mel)
    results, start = [None] * len(JOBS), threading.Barrier(len(JOBS))

    def run(i):
        synth = Synthesizer.load(model)  # one synthesizer per thread: each owns its interpreter and state
        start.wait()  # all four step at the same time
        speaker, seed = JOBS[i]
        results[i] = np.concatenate(list(synth.stream(mel, speaker=speaker, seed=seed)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(JOBS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for a, r in zip(alone, results):
        assert r is not None and np.array_equal(a, r)
    assert not np.array_equal(alone[0], alone[2])  # different seeds really differ: the comparison can fail


def test_four_synthesizers_in_processes(built, reference, tmp_path):
    model, mel = built / "models/dynamic", reference[0]["mel"]
    np.save(tmp_path / "mel.npy", mel)
    procs = [subprocess.Popen([sys.executable, "-m", "wavenet_edge.cli", "synth", str(model), "--mel",
                               str(tmp_path / "mel.npy"), "--speaker", s, "--seed", str(seed), "--raw"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s, seed in JOBS]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for a, out in zip(_alone(model, mel), outputs):
        assert out == to_pcm16(a)


def test_soak_tool_measures_a_continuous_stream(built):
    from soak import soak, summarize

    result = soak(str(built / "models/dynamic"), minutes=0.1, window_s=1.0, seed=0)
    s = summarize(result, max_rss_growth_mb=5.0, max_latency_growth=1.0)
    assert s["windows"] >= 5 and result["audio_seconds"] > 5  # several windows of one unbroken stream
    assert abs(s["rss_growth_mb"]) < 5.0 and s["flat"]  # the loop allocates nothing that stays
    leaking = {"windows": [dict(w, rss_mb=w["rss_mb"] + 2 * i) for i, w in enumerate(result["windows"])]}
    assert not summarize(leaking, 5.0, 1.0)["flat"]  # and the check sees a leak when there is one

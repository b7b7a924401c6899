"""Faults injected for real into synthesis: kills mid-write, full and read-only disks, file-size limits, a closed
pipe, and playback that runs dry. Output is always absent or complete; errors are one line with exit code 2."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from edge_runtime.wavio import read_wav
from tests.helpers import REPO, assert_clean_error, run_cli

CLI = [sys.executable, "-m", "wavenet_edge.cli"]


def _assert_absent_or_complete(path, samples):
    """The file is absent, or a WAV whose header, size and length are all complete."""
    if not path.exists():
        return False
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and int.from_bytes(raw[4:8], "little") == len(raw) - 8
    assert int.from_bytes(raw[40:44], "little") == len(raw) - 44 == 2 * samples
    audio, rate = read_wav(path)
    assert rate == 8000 and audio.shape == (samples,)
    return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_synth_killed_at_random_moments(built, tmp_path, sig):
    out, rng, outcomes = tmp_path / "out.wav", random.Random(int(sig)), []
    cmd = [*CLI, "synth", str(built / "uncond"), "--seconds", "30", "--seed", "0", "--out", str(out)]
    for attempt in range(6):
        if attempt == 3:  # from now on a complete earlier output exists: it must survive the killed runs
            assert run_cli(*cmd[3:]).returncode == 0
            before = out.read_bytes()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # A random moment measured in progress, not seconds (so it holds on a slow or a fast machine): when the
        # partial file reaches a random fraction of the finished size; above 1, once it has been renamed.
        partial, goal = tmp_path / f".out.wav.partial-{proc.pid}", rng.uniform(0.0, 1.2) * (44 + 2 * 240_000)
        deadline, started, renamed = time.time() + 120, False, False
        while time.time() < deadline and proc.poll() is None:
            try:
                size, started = partial.stat().st_size, True
            except FileNotFoundError:
                renamed = started  # gone after it existed: renamed into place
                size = float("inf") if renamed else -1
            if size >= goal:
                break
            time.sleep(0.002)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        outcomes.append(proc.returncode)
        if sig == signal.SIGTERM:
            # after the rename the process is exiting: past its handler, SIGTERM's default action ends it
            assert (proc.returncode in (0, 143) or renamed and proc.returncode == -signal.SIGTERM), err
            assert b"Traceback" not in err, err
        if attempt < 3:
            if _assert_absent_or_complete(out, 240_000):
                out.unlink()
        else:
            assert _assert_absent_or_complete(out, 240_000) and out.read_bytes() == before
        if sig == signal.SIGTERM:  # a handled signal removes its own partial file
            assert not list(tmp_path.glob(".out.wav.partial-*"))
    assert outcomes.count(-signal.SIGKILL if sig == signal.SIGKILL else 143) >= 3, outcomes  # killed mid-way
    assert run_cli(*cmd[3:]).returncode == 0  # a later run clears what the SIGKILLed ones left behind
    assert _assert_absent_or_complete(out, 240_000) and not list(tmp_path.glob(".out.wav.partial-*"))


@pytest.fixture()
def clip_path(built):
    return str(next((built / "val/alice").glob("*.wav")))


def _in_small_filesystem(tmp_path, options, *args):
    """Runs the CLI with ``tmp_path/fs`` a fresh tmpfs mounted with ``options`` in a private mount namespace;
    returns the process and what the folder held afterwards."""
    fs = tmp_path / "fs"
    fs.mkdir(exist_ok=True)
    script = ('fs="$1"; mount -t tmpfs -o "$2" tmpfs "$fs" || exit 99; shift 2; "$@"; rc=$?; '
              'echo "LISTING:$(ls -A "$fs" | tr "\\n" " ")"; exit $rc')
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(fs), options, *CLI, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 99, "could not mount a tmpfs in a private mount namespace (unshare -rm)"
    return proc, proc.stdout.split("LISTING:")[-1].split()


def test_full_disk_read_only_folder_and_file_size_limit(built, clip_path, tmp_path):
    model = str(built / "models/dynamic")
    fs_out = str(tmp_path / "fs" / "out.wav")
    proc, listing = _in_small_filesystem(tmp_path, "size=4k", "synth", model, "--wav", clip_path, "--out", fs_out)
    assert_clean_error(proc, "cannot write", "No space left on device")
    assert listing == []  # neither out.wav nor a partial file
    proc, listing = _in_small_filesystem(tmp_path, "ro", "synth", model, "--wav", clip_path, "--out", fs_out)
    assert_clean_error(proc, "cannot write", "Read-only file system")
    assert listing == []
    out = tmp_path / "out.wav"
    shell = " ".join([*CLI, "synth", model, "--wav", clip_path, "--out", str(out)])
    proc = subprocess.run(["bash", "-c", f"ulimit -f 2 && {shell}"], cwd=REPO, capture_output=True, text=True)
    assert_clean_error(proc, "cannot write", "File too large")
    assert not out.exists() and not list(tmp_path.glob(".out.wav*"))
    proc = subprocess.run(["bash", "-c", f"{' '.join(CLI)} synth {model} --wav {clip_path} --raw > /dev/full"],
                          cwd=REPO, capture_output=True, text=True)
    assert_clean_error(proc, "cannot write to standard output", "No space left on device")


PLAYER = r"""
import json, sys, time
import numpy as np
from edge_runtime.playback import Player

def chunks():  # 1.5 s of tone; synthesis "stalls" for 1 s after 0.5 s of audio
    for i in range(24):
        if i == 8:
            time.sleep(1.0)
        yield (0.3 * np.sin(2 * np.pi * 440 * np.arange(i * 500, (i + 1) * 500) / 8000)).astype(np.float32)

t0 = time.perf_counter()
stats = Player(8000, device="system").play(chunks(), 12000, 8000)
print(json.dumps({**stats, "wall": time.perf_counter() - t0}))
"""


def test_playback_underrun_is_counted_and_playback_recovers(jack_server):
    proc = subprocess.run([sys.executable, "-c", PLAYER], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **jack_server})
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["underruns"] >= 1  # the stall ran the queue dry: silence was played and counted
    assert stats["played_samples"] == 12000  # and every sample still played afterwards, none dropped
    assert stats["wall"] >= 1.5 + 0.5  # real time plus the stall not covered by the pre-buffer

"""The edge suite: numpy + LiteRT in this process. Models are built by TensorFlow in a subprocess, because
LiteRT returns wrong numbers once TensorFlow is loaded in the same process (see edge_runtime/quality.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def no_tensorflow_here():
    """Fails any edge test that (directly or not) imports TensorFlow into the test process."""
    yield
    assert "tensorflow" not in sys.modules, "an edge test imported TensorFlow: LiteRT results are invalid after it"


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """The trained and exported tiny models of build_fixture.py (about a minute, once per session).

    ``WAVENET_EDGE_TEST_MODELS=DIR`` (a previous ``build_fixture.py DIR`` output) uses that folder instead: for
    machines without TensorFlow, e.g. tools/arm64_check.sh's emulated arm64 root. Tests may read it, never write it."""
    given = os.environ.get("WAVENET_EDGE_TEST_MODELS")
    if given:
        assert (Path(given) / "reference.npz").is_file(), f"{given}: not a build_fixture.py output"
        return Path(given)
    out = tmp_path_factory.mktemp("edge")
    result = subprocess.run([sys.executable, str(HERE / "build_fixture.py"), str(out)], capture_output=True,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def reference(built):
    """Validation utterances and the float32 TF model's logits: a list of dicts."""
    import numpy as np

    with np.load(built / "reference.npz") as data:
        arrays = {k: data[k] for k in data.files}
    cases, i = [], 0
    while f"classes_{i}" in arrays:
        cases.append({k: arrays[f"{k}_{i}"] for k in ("classes", "mel", "speaker", "reference")})
        i += 1
    return cases


@pytest.fixture()
def jack_server(tmp_path):
    """A JACK server on the dummy driver at 8 kHz: a sound sink with a real clock (Debian: jackd2)."""
    import shutil
    import time

    if shutil.which("jackd") is None:
        pytest.fail("jackd is not installed (apt-get install --no-install-recommends jackd2; tools/test.sh does)")
    name = f"wavenet-test-{os.getpid()}"
    proc = subprocess.Popen(["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", "8000", "-p", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Ready when its playback port exists (an event, not a fixed wait): jack_lsp, of jackd2, lists the ports.
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_START_SERVER": "1", "HOME": str(tmp_path)}
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        ports = subprocess.run(["jack_lsp"], capture_output=True, text=True, env=env, timeout=30).stdout
        if "system:playback_1" in ports:
            break
        time.sleep(0.02)
    else:
        exited = proc.poll()
        proc.kill()
        proc.wait()
        pytest.fail(f"jackd exited with {exited}" if exited is not None else "jackd offered no port within 60 s")
    yield {"JACK_DEFAULT_SERVER": name, "HOME": str(tmp_path)}
    proc.terminate()
    proc.wait(timeout=10)

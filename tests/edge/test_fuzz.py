"""Property-based fuzzing (hypothesis drives tools/fuzz.py's mutations) of every reader the edge runtime has:
any input gives a result or a clean one-line error, never a traceback; graphs run in worker processes so that a
crash of the interpreter itself would be caught and counted; loading never executes anything."""

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.errors import ModelError
from edge_runtime.synth import Synthesizer, default_model_dir
from fuzz import Fuzzer
from tests.helpers import REPO, assert_clean_error, run_cli

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    return Fuzzer(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("target", ["wav", "npy", "manifest", "cli"])
def test_mutated_inputs_give_results_or_clean_errors(fuzzer, target):
    outcomes = []

    @FUZZ
    @given(st.randoms(use_true_random=False))
    def check(rnd):
        outcomes.append(fuzzer.run(target, fuzzer.make(target, rnd)))  # raises on anything but a clean error

    check()
    # the mutations must exercise both sides, or the test proves nothing
    assert outcomes.count("accepted") >= 5 and outcomes.count("rejected") >= 5, (target, outcomes.count("accepted"))


def test_mutated_graphs_never_crash_the_process(tmp_path):
    """Damaged .tflite files with matching checksums, in worker processes (a crash is a signal, counted)."""
    r = subprocess.run([sys.executable, str(REPO / "tools/fuzz.py"), "--targets", "tflite", "--cases", "150",
                        "--seed", "11", "--json", str(tmp_path / "f.json")], capture_output=True, text=True,
                       timeout=600)
    counts = json.loads((tmp_path / "f.json").read_text())["targets"]["tflite"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert counts["crashes"] == counts["hangs"] == counts["bugs"] == 0 and counts["cases"] == 150
    assert counts["accepted"] > 0 and counts["rejected"] > 0


def test_manifest_files_outside_the_folder_are_refused(tmp_path):
    folder = shutil.copytree(default_model_dir(), tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    secret = tmp_path / "secret.tflite"
    shutil.copy(folder / "step.tflite", secret)
    (folder / "link.tflite").symlink_to(secret)
    (folder / "inner").mkdir()
    (folder / "inner" / "up.tflite").symlink_to("../../secret.tflite")
    for name in ["../secret.tflite", str(secret), "link.tflite", "inner/up.tflite", "~/x.tflite", "a\\..\\b"]:
        changed = dict(manifest, step={**manifest["step"], "file": name},
                       files={**manifest["files"], name: manifest["files"]["step.tflite"]})
        (folder / "manifest.json").write_text(json.dumps(changed))
        with pytest.raises(ModelError, match="outside the model folder"):
            Synthesizer.load(folder)
    assert_clean_error(run_cli("info", str(folder)), "outside the model folder")


class _Boom:
    """Unpickling this would create a file: proof of whether anything was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_loading_never_executes_code(tmp_path):
    marker = tmp_path / "executed"
    np.save(tmp_path / "evil.npy", np.array([_Boom(str(marker))], dtype=object), allow_pickle=True)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    clip = next(Path(default_model_dir()).parent.parent.glob("examples/*.wav"))
    assert_clean_error(run_cli("synth", "--mel", str(tmp_path / "evil.npy"), "--out", str(tmp_path / "o.wav")),
                       "cannot read mel file")
    assert_clean_error(run_cli("synth", "--wav", str(tmp_path / "evil.pkl"), "--out", str(tmp_path / "o.wav")),
                       "not a WAV file")
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    (folder / "manifest.json").write_bytes(pickle.dumps(_Boom(str(marker))))
    assert_clean_error(run_cli("synth", str(folder), "--wav", str(clip), "--out", str(tmp_path / "o.wav")),
                       "manifest.json")
    assert not marker.exists() and not (tmp_path / "o.wav").exists()

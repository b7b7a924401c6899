"""The CLI surface: help everywhere, and the edge side working where TensorFlow cannot be imported."""

import subprocess
import sys

import pytest

from tests.helpers import REPO, assert_clean_error, run_cli


@pytest.fixture()
def no_tensorflow(tmp_path):
    """A PYTHONPATH entry whose `tensorflow` package raises ImportError on import."""
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow is not installed (simulated)')\n")
    return {"PYTHONPATH": str(tmp_path / "fake")}


@pytest.mark.parametrize("command", [[], ["train"], ["eval"]])
def test_help_shows_defaults(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    if command == ["train"]:
        assert "[default: s]" in result.stdout and "--set KEY=VALUE" in result.stdout


def test_edge_runtime_imports_without_tensorflow(no_tensorflow):
    code = ("import sys, edge_runtime, edge_runtime.audio, wavenet_edge.cli; "
            "assert 'tensorflow' not in sys.modules and 'training.model' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=no_tensorflow, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_training_commands_name_the_extra_without_tensorflow(no_tensorflow, tmp_path):
    result = run_cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), env=no_tensorflow)
    assert_clean_error(result, "pip install 'wavenet-edge[train]'")
    assert not (tmp_path / "r").exists()

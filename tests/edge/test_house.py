"""The house rules, checked on the code: the public runtime API, who may import whom, one error base class,
one file-utility module, and no build-machine path in what the package ships."""

import ast
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

PACKAGES = ["edge_runtime", "training", "convert", "wavenet_edge"]


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of ``package`` imports (at any depth of the code)."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


def _python_ok(code: str) -> None:
    """Runs ``code`` in a fresh interpreter (nothing of ours imported yet) and asserts that it succeeds."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_public_api_pycoral_style():
    code = ("import sys, edge_runtime.audio\n"
            "assert 'edge_runtime.synth' not in sys.modules and 'ai_edge_litert' not in sys.modules\n"
            "from edge_runtime import Synthesizer, make_interpreter, WavenetEdgeError\n"
            "from edge_runtime.synth import Synthesizer as S\n"
            "assert Synthesizer is S\n"
            "synth = Synthesizer.load()\n"
            "from edge_runtime import default_model_dir\n"
            "interpreter = make_interpreter(default_model_dir() / 'step.tflite')\n"
            "assert interpreter.get_input_details()\n"
            "assert 'tensorflow' not in sys.modules\n")
    _python_ok(code)


def test_imports_run_downward_only():
    """edge_runtime imports none of our other packages; nothing below the CLI imports the CLI."""
    for module, names in _imports("edge_runtime").items():
        assert not names & {"training", "convert", "wavenet_edge", "tensorflow", "keras"}, module
    for package in ("training", "convert"):
        for module, names in _imports(package).items():
            assert "wavenet_edge" not in names, f"{module} imports the CLI"


def test_one_error_base_class():
    code = ("from edge_runtime.errors import WavenetEdgeError\n"
            "from edge_runtime.errors import ModelError, InputError, DeviceError\n"
            "from edge_runtime.corpus import DataError\n"
            "from training.config import ConfigError\n"
            "from training.checkpoint import CheckpointError\n"
            "from convert.export import ExportError\n"
            "bad = [e.__name__ for e in (ModelError, InputError, DeviceError, DataError, ConfigError,\n"
            "       CheckpointError, ExportError) if not issubclass(e, WavenetEdgeError)]\n"
            "assert not bad, bad\n")
    _python_ok(code)
    common = (REPO / "wavenet_edge/common.py").read_text()
    assert "sys.modules" not in common and "WavenetEdgeError" in common


def test_file_utilities_live_in_one_module(tmp_path):
    """Atomic writes and stale-temporary cleanup are defined once, in edge_runtime/files.py."""
    for package in PACKAGES + ["tools"]:
        for path in (REPO / package).rglob("*.py"):
            if path.name == "files.py":
                continue
            text = path.read_text()
            for name in ("write_text_atomic", "remove_stale", "_alive", "pid_alive"):
                assert not re.search(rf"^\s*def {name}", text, re.M), f"{path}: defines {name}"

    from edge_runtime.files import remove_stale_temporaries, temporary_sibling, write_text_atomic

    target = tmp_path / "out.wav"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".out.wav.partial-{dead.pid}", tmp_path / f".out.wav.cases-{dead.pid}.npz"]
    for p in stale:
        p.write_text("x")
    (tmp_path / f".out.wav.tmp-{dead.pid}").mkdir()
    mine = temporary_sibling(target, "partial")
    mine.write_text("in use")
    remove_stale_temporaries(target, ("partial",))
    assert not stale[0].exists() and stale[1].exists() and mine.exists()
    remove_stale_temporaries(target)
    assert not stale[1].exists() and not (tmp_path / f".out.wav.tmp-{dead.pid}").exists() and mine.exists()
    from edge_runtime.files import portable_path

    assert portable_path("/home/me/data/fsdd") == "fsdd" and portable_path("../shared/fsdd") == "../shared/fsdd"
    assert portable_path("/work/repo/../shared/x", "/work/repo") == "../shared/x" and portable_path(None) is None
    write_text_atomic(target, "done\n")
    assert target.read_text() == "done\n" and sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "out.wav"]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


ABSOLUTE = re.compile(r"(?<![\w.~/])(/(?:home|root|work|tmp|Users|mnt|opt|srv|var|data|scratch)/[^\s\"'`]*)"
                      r"|[A-Za-z]:\\\\|~/")


def test_shipped_files_hold_no_build_machine_path():
    shipped = [p for p in (REPO / "edge_runtime").rglob("*")
               if p.is_file() and p.suffix in {".json", ".md", ".txt"} and "__pycache__" not in p.parts]
    assert any(p.name == "manifest.json" for p in shipped) and any(p.name == "training.json" for p in shipped)
    for path in shipped:
        text = path.read_text()
        assert not ABSOLUTE.search(text), f"{path.relative_to(REPO)}: {ABSOLUTE.search(text).group(0)!r}"
        if path.suffix == ".json":
            for s in _strings(json.loads(text)):
                assert not os.path.isabs(s), f"{path.relative_to(REPO)}: absolute path {s!r}"


@pytest.mark.parametrize("module", ["edge_runtime", "edge_runtime.synth", "wavenet_edge.cli"])
def test_light_imports_stay_light(module):
    """No TensorFlow behind the runtime or the CLI's start-up (measured by what is loaded, not by time)."""
    result = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('tensorflow' in sys.modules)"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-1000:]


def test_readme_is_short_self_contained_and_runs_what_ci_runs():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "findings.md" not in text  # every number comes with its method from what the repository holds
    block = re.search(r"^#+ *Quick ?start.*?\n```[a-z]*\n(.*?)```", text, re.S | re.M | re.I).group(1)
    lines = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[1] == "tools/test.sh"  # .ci/run runs this very line
    assert "README" in (REPO / ".ci/run").read_text()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+:", target):
                assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)} links to a missing {target}"

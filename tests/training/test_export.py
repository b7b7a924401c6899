"""Export safety: never over an existing folder without --force, never a half-written model folder."""

import json
import signal
import subprocess
import sys
import time

from tests.helpers import REPO, assert_clean_error, run_cli


def test_export_refuses_an_existing_folder_unless_forced(tiny_run, tiny_data, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["export", str(run_dir), "--out", str(out), "--quantize", "float32", "--calibration-data", str(tiny_data)]
    assert_clean_error(run_cli(*args), "exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    r = run_cli(*args, "--force")
    assert r.returncode == 0, r.stderr
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
    report = json.loads((out / "report.json").read_text())["variants"]["float32"]
    assert report["nll_ratio_to_tf_float32"] < 1.0001 and report["argmax_agreement"] == 1.0
    assert "float32" in r.stdout and not list(tmp_path.glob(".model.*"))


def test_killed_export_leaves_no_model_folder(tiny_run, tiny_data, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "wavenet_edge.cli", "export", str(run_dir), "--out", str(out), "--quantize", "all",
           "--calibration-data", str(tiny_data)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".model.tmp-*/dynamic")):
        time.sleep(0.05)  # wait until it is half-way: two variants written, more to come
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # only a hidden temporary folder may remain
    r = run_cli("export", str(run_dir), "--out", str(out), "--quantize", "dynamic", "--calibration-data",
                str(tiny_data))
    assert r.returncode == 0, r.stderr
    nested = tmp_path / "new" / "folders" / "model"  # parents are created
    r = run_cli("export", str(run_dir), "--out", str(nested), "--quantize", "float16", "--calibration-data",
                str(tiny_data))
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.json").exists() and (nested / "step.tflite").exists()
    assert not list(tmp_path.glob(".model.*"))  # the killed run's temporary folder was cleaned up


def test_export_bad_requests(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    assert_clean_error(run_cli("export", str(tmp_path), "--out", str(tmp_path / "m")), "not a run folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run_cli("export", str(run_dir), "--out", str(tmp_path / "m2"), "--calibration-data",
                               str(empty)), "no .wav or .flac files")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


def test_export_refuses_bad_runtime_postfilters_before_writing(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "m"
    for flag, value, message in [
            ("--formant-postfilter", "0.8,0.7", "0 <= numerator <= denominator < 1"),
            ("--formant-postfilter", "0.7", "takes two gammas"), ("--formant-postfilter", "a,b", "takes two gammas"),
            ("--formant-postfilter", "0.7,0.75", "shapes with the LPC filter: this model has none"),  # tiny: no LPC
            ("--mel-match", "0", "needs 0 < max gain <= 60 dB, got 0.0"), ("--mel-match", "61", "got 61.0"),
            ("--mel-match", "12dB", "takes its largest gain in dB")]:
        assert_clean_error(run_cli("export", str(run_dir), "--out", str(out), flag, value), message)
        assert not out.exists() and not list(tmp_path.glob(".m*"))


def test_set_postfilter_changes_only_the_chain_all_folders_or_none(tiny_run, tmp_path):
    """tools/set_postfilter.py on copies of the shipped `pi` voice (an LPC model) and a tiny model without LPC."""
    import shutil

    from convert.export import export
    from edge_runtime.manifest import load_manifest

    voices = [tmp_path / "a", tmp_path / "b"]
    for v in voices:
        shutil.copytree(REPO / "edge_runtime" / "models" / "pi", v)
    original = (voices[0] / "manifest.json").read_bytes()
    plain = tmp_path / "plain"
    export(tiny_run[0], plain, "float32", eval_samples=500, log=lambda m: None)

    def tool(*args):
        return subprocess.run([sys.executable, "tools/set_postfilter.py", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True)

    assert_clean_error(tool(*voices, plain, "--formant", "0.7,0.75"), "this model has none (lpc_order 0)")
    assert_clean_error(tool(*voices, "--formant", "0.9,0.75"), "numerator <= denominator")
    assert_clean_error(tool(*voices, "--mel-match", "0"), "0 < max gain <= 60 dB")
    assert_clean_error(tool(*voices), "give --formant and/or --mel-match")
    assert all((v / "manifest.json").read_bytes() == original for v in voices)  # checked before any was changed
    before = json.loads(original)
    kinds = {f["type"]: f for f in before["postfilter"]}
    lpc, deemphasis = kinds["lpc"], kinds["deemphasis"]
    shipped_match = [kinds["mel_match"]] if "mel_match" in kinds else []
    r = tool(*voices, "--formant", "0.6,0.8")
    assert r.returncode == 0, r.stderr
    for v in voices:
        manifest = load_manifest(v)  # checksums verified: the graphs are untouched
        assert manifest.formant == (0.6, 0.8)
        after = manifest.data
        assert after["postfilter"] == [lpc, {"type": "formant", "numerator": 0.6, "denominator": 0.8}, deemphasis,
                                       *shipped_match]  # mel matching, not named, kept
        assert {k: x for k, x in after.items() if k != "postfilter"} == {k: x for k, x in before.items()
                                                                         if k != "postfilter"}
        assert not list(v.glob(".manifest*"))
    assert tool(voices[0], "--mel-match", "6").returncode == 0
    assert (load_manifest(voices[0]).mel_match, load_manifest(voices[0]).formant) == (6.0, (0.6, 0.8))
    assert load_manifest(voices[0]).data["postfilter"][-1] == {"type": "mel_match", "max_gain_db": 6.0}
    assert tool(voices[0], "--formant", "off", "--mel-match", "off").returncode == 0
    manifest = load_manifest(voices[0])
    assert manifest.formant is None and manifest.mel_match is None and manifest.data["postfilter"] == [lpc, deemphasis]
    restore = ["--formant", "{numerator},{denominator}".format(**kinds["formant"])] if "formant" in kinds else []
    restore += ["--mel-match", str(kinds["mel_match"]["max_gain_db"])] if shipped_match else []
    assert tool(voices[0], *restore).returncode == 0
    assert (voices[0] / "manifest.json").read_bytes() == original  # the shipped voice's own bytes again

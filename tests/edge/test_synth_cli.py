"""`wavenet-edge synth / eval / info` end to end, and every bad input as a one-line error with exit code 2."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edge_runtime.wavio import read_wav
from tests.helpers import REPO, assert_clean_error, run_cli


@pytest.fixture()
def model(built, tmp_path):
    """A private copy of the dynamic model folder (tests may damage it)."""
    return shutil.copytree(built / "models/dynamic", tmp_path / "model")


@pytest.fixture()
def clip(built):
    return next((built / "val/alice").glob("*.wav"))


def test_synth_wav_to_file(built, clip, tmp_path):
    out = tmp_path / "out.wav"
    result = run_cli("synth", str(built / "models/int8"), "--wav", str(clip), "--speaker", "bob", "--seed", "3",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    audio, rate = read_wav(out)
    original, _ = read_wav(clip)
    assert rate == 8000 and audio.shape[0] == original.shape[0] // 32 * 32
    assert "real-time factor" in result.stderr and f"wrote {out}" in result.stderr
    again = tmp_path / "again.wav"
    run_cli("synth", str(built / "models/int8"), "--wav", str(clip), "--speaker", "1", "--seed", "3", "--out", str(again))
    assert again.read_bytes() == out.read_bytes()  # same seed, same speaker (by index) -> same file
    assert not list(tmp_path.glob(".*partial*"))


def test_synth_answers_at_the_level_of_the_recording(built, clip, tmp_path):
    """A model trained at one peak (normalize_peak) hears any recording at that peak: twice as loud a recording
    gives the same voice, twice as loud."""
    from edge_runtime.wavio import AtomicWavWriter

    original, rate = read_wav(clip)
    loud = tmp_path / "loud.wav"
    writer = AtomicWavWriter(loud, rate)
    writer.write(2 * original)  # the same mel at the model's level (to 16-bit rounding)
    writer.close()
    outs = []
    for source in (clip, loud):
        out = tmp_path / f"{source.stem}.out.wav"
        r = run_cli("synth", str(built / "emph"), "--wav", str(source), "--speaker", "bob", "--seed", "3", "--out", str(out))
        assert r.returncode == 0, r.stderr
        outs.append(read_wav(out)[0])
    assert np.abs(outs[0]).max() > 0.01
    np.testing.assert_allclose(outs[1], 2 * outs[0], rtol=0, atol=3 / 32768)  # the files' 16-bit rounding


def test_synth_mel_and_seconds(built, reference, tmp_path):
    np.save(tmp_path / "mel.npy", reference[0]["mel"])
    r = run_cli("synth", str(built / "models/float16"), "--mel", str(tmp_path / "mel.npy"), "--out", str(tmp_path / "a.wav"))
    assert r.returncode == 0, r.stderr
    assert read_wav(tmp_path / "a.wav")[0].shape[0] == reference[0]["mel"].shape[0] * 32
    r = run_cli("synth", str(built / "uncond"), "--seconds", "0.25", "--out", str(tmp_path / "b.wav"))
    assert r.returncode == 0, r.stderr
    assert read_wav(tmp_path / "b.wav")[0].shape[0] == 2000


def test_raw_output_and_broken_pipe(built, clip):
    r = subprocess.run([sys.executable, "-m", "wavenet_edge.cli", "synth", str(built / "models/dynamic"), "--wav",
                        str(clip), "--raw", "--seed", "1"], capture_output=True, cwd=REPO)
    assert r.returncode == 0 and len(r.stdout) == 2 * (read_wav(clip)[0].shape[0] // 32 * 32)
    shell = (f"{sys.executable} -m wavenet_edge.cli synth {built / 'models/dynamic'} --wav {clip} --raw | head -c 1000"
             " | wc -c")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "1000", r.stderr
    assert "Traceback" not in r.stderr and "Broken pipe" not in r.stderr


def test_play_through_portaudio(built, clip, tmp_path):
    # PortAudio -> ALSA's null device (no sound card here): a real stream, callbacks and all.
    (tmp_path / ".asoundrc").write_text("pcm.!default { type null }\nctl.!default { type hw card 0 }\n")
    r = run_cli("synth", str(built / "models/dynamic"), "--wav", str(clip), "--play", env={"HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "played" in r.stderr and "underruns" in r.stderr


def _played(stderr):
    import re

    m = re.search(r"([\d.]+) s of audio in ([\d.]+) s: real-time factor ([\d.]+).*played ([\d.]+) s, pre-buffer "
                  r"([\d.]+) s, (\d+) underruns", stderr)
    assert m, stderr
    return [float(x) for x in m.groups()]


@pytest.mark.parametrize("model", ["models/dynamic", "slow"])
def test_play_paced_by_a_real_clock(built, jack_server, model, tmp_path):
    # JACK's dummy driver consumes audio in real time: a model faster than real time plays at once; one slower
    # than real time (the paper-sized model) must pre-buffer enough that playback never stutters.
    from tests.helpers import voice, write_wav

    clip = tmp_path / "long.wav"
    write_wav(clip, voice(np.random.default_rng(0), 200.0, 1.5, 8000), 8000)
    t0 = __import__("time").perf_counter()
    r = run_cli("synth", str(built / model), "--wav", str(clip), "--play", "--audio-device", "system", env=jack_server)
    wall = __import__("time").perf_counter() - t0
    assert r.returncode == 0, r.stderr
    audio_s, synth_s, rtf, played_s, prebuffer_s, underruns = _played(r.stderr)
    assert underruns == 0 and played_s >= audio_s
    assert wall >= audio_s  # the sink really took its time
    # No speed threshold: whatever this machine's speed, the pre-buffer follows from the measured real-time
    # factor (a ratio), and no sample underruns. The paper-sized "slow" model (13.8 M multiply-adds per sample,
    # 110 G per second at 8 kHz) is slower than real time on any CPU today, so it exercises the pre-buffer.
    assert prebuffer_s >= 0.5 * audio_s * max(0.0, 1 - 1 / rtf)


def test_eval_and_info(built):
    r = run_cli("eval", str(built / "models/float32"), "--data", str(built / "val"), "--json")
    assert r.returncode == 0, r.stderr
    tf_eval = json.loads((built / "tf_eval.json").read_text())
    assert abs(json.loads(r.stdout)["nll_bits_per_sample"] - tf_eval["nll_bits_per_sample"]) < 1e-3
    r = run_cli("info", str(built / "models/int8"))
    assert r.returncode == 0, r.stderr
    assert "int8 tiny WaveNet, 1 x 4 layers, receptive field 16" in r.stdout and "FULLY_CONNECTED 10" in r.stdout
    assert "output: the decoded samples; sampling temperature 0.5 (the runtime default)" in r.stdout
    r = run_cli("info", str(built / "lpc_formant"), "--json")
    assert json.loads(r.stdout)["postfilter"] == ["LPC synthesis (order 8, gamma 0.9)", "formant postfilter (0.6/0.8)",
                                                  "de-emphasis 0.85"]


def test_edge_commands_work_where_tensorflow_cannot_be_imported(built, clip, tmp_path):
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow is not installed (simulated)')\n")
    env = {"PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{REPO}"}
    code = "import edge_runtime.synth, edge_runtime.evaluate, sys; assert 'tensorflow' not in sys.modules; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr
    r = run_cli("synth", str(built / "models/dynamic"), "--wav", str(clip), "--out", str(tmp_path / "o.wav"), env=env)
    assert r.returncode == 0, r.stderr
    assert_clean_error(run_cli("export", str(built / "run"), "--out", str(tmp_path / "m"), env=env),
                       "pip install 'wavenet-edge[train]'")


# ------------------------------------------------------------------------------------------------ bad input
def _synth(model, clip, out, *extra):
    return run_cli("synth", str(model), "--wav", str(clip), "--out", str(out), *extra)


def _rewrite_manifest(model, change):
    manifest = json.loads((model / "manifest.json").read_text())
    change(manifest)
    (model / "manifest.json").write_text(json.dumps(manifest))


def test_damaged_model_folders(model, clip, tmp_path):
    out = tmp_path / "out.wav"
    step = model / "step.tflite"
    original = step.read_bytes()
    step.write_bytes(original[: len(original) // 2])
    assert_clean_error(_synth(model, clip, out), "checksum mismatch for step.tflite")
    # the same truncation with a matching checksum: the interpreter itself refuses it
    from edge_runtime.manifest import sha256_file

    _rewrite_manifest(model, lambda m: m["files"].update({"step.tflite": sha256_file(step)}))
    assert_clean_error(_synth(model, clip, out), "step.tflite")
    step.write_bytes(b"\x00" * 64 + original[64:])
    _rewrite_manifest(model, lambda m: m["files"].update({"step.tflite": sha256_file(step)}))
    assert_clean_error(_synth(model, clip, out), "step.tflite")
    step.write_bytes(original)
    _rewrite_manifest(model, lambda m: m.update(format_version=99))
    assert_clean_error(_synth(model, clip, out), "format version 99")
    _rewrite_manifest(model, lambda m: m.update(format_version=1, files={"../../etc/passwd": "0" * 64}))
    assert_clean_error(_synth(model, clip, out), "outside the model folder")
    (model / "manifest.json").write_text("{not json")
    assert_clean_error(_synth(model, clip, out), "manifest.json")
    assert_clean_error(_synth(tmp_path / "nowhere", clip, out), "does not exist")
    assert not out.exists()


def test_bad_synthesis_inputs(built, reference, clip, tmp_path):
    model, out = built / "models/dynamic", tmp_path / "out.wav"
    mel = reference[0]["mel"]
    np.save(tmp_path / "bands.npy", mel[:, :10])
    assert_clean_error(run_cli("synth", str(model), "--mel", str(tmp_path / "bands.npy"), "--out", str(out)),
                       "16 bands")
    nan = mel.copy()
    nan[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert_clean_error(run_cli("synth", str(model), "--mel", str(tmp_path / "nan.npy"), "--out", str(out)), "NaN")
    (tmp_path / "pickle.npy").write_bytes(b"\x93NUMPY garbage")
    assert_clean_error(run_cli("synth", str(model), "--mel", str(tmp_path / "pickle.npy"), "--out", str(out)),
                       "cannot read mel file")
    assert_clean_error(_synth(model, clip, out, "--speaker", "carol"), "unknown speaker 'carol'", "alice, bob")
    assert_clean_error(_synth(model, clip, out, "--speaker", "7"), "unknown speaker")
    assert_clean_error(_synth(model, clip, out, "--device", "edgetpu"), "libedgetpu.so.1")
    assert_clean_error(_synth(model, clip, out, "--temperature", "-1"), "temperature")
    (tmp_path / "bad.wav").write_bytes(b"RIFF1234WAVEjunk")
    assert_clean_error(_synth(model, tmp_path / "bad.wav", out), "bad.wav")
    assert_clean_error(run_cli("synth", str(model), "--seconds", "1", "--out", str(out)), "conditioned on mel frames")
    assert_clean_error(run_cli("synth", str(model), "--wav", str(clip)), "exactly one of --out FILE, --play or --raw")
    assert_clean_error(_synth(model, clip, tmp_path / "no" / "such" / "dir.wav"), "cannot write")
    assert not out.exists() and not list(tmp_path.glob(".out.wav*"))

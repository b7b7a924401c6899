"""Architecture variants the presets do not use, trained, exported and streamed end to end: kernel_size=3
(two taps per layer in the state) and cond_layers=0 (the mel frames upsampled without frame-rate convolutions,
so the conditioning is n_mels wide, here different from cond_channels), and pitch features (frames wider than the
mel)."""

import json

import numpy as np
import pytest

from tests.helpers import run_cli


@pytest.mark.parametrize("overrides", [
    {"kernel_size": 3},
    {"cond_layers": 0, "cond_channels": 24},  # n_mels is 16: the conditioning width must follow n_mels
    {"pitch_features": True},  # frames of 16 bands + 2 pitch features, through the conditioner graph
    {"pitch_features": True, "cond_layers": 0, "cond_channels": 24, "lpc_order": 8},  # 18 wide, LPC of the bands
], ids=["kernel_size=3", "cond_layers=0", "pitch", "pitch-cond_layers=0-lpc"])
def test_variant_exports_and_streams(overrides, tiny_data, tmp_path):
    from training.config import Config, receptive_field
    from training.train import DataArgs, train

    config = Config.preset("tiny", seed=3, steps=20, val_every=20, checkpoint_every=20, **overrides)
    run_dir, model = tmp_path / "run", tmp_path / "model"
    train(config, DataArgs(str(tiny_data), val_regex=r"_[01]\.wav$"), run_dir, progress=False, log=lambda m: None)
    r = run_cli("export", str(run_dir), "--out", str(model), "--quantize", "float32", "--eval-samples", "4000")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["config"]["kernel_size"] == config.kernel_size
    assert manifest["config"]["pitch_features"] == config.pitch_features
    assert manifest["receptive_field"] == receptive_field(config)
    assert len(manifest["state"]["rows"]) == 1 + (config.kernel_size - 1) * config.n_layers
    # The edge runtime's teacher-forced NLL equals the TensorFlow model's (scored in a TF-free process).
    report = json.loads((model / "report.json").read_text())["variants"]["float32"]
    assert report["nll_ratio_to_tf_float32"] == pytest.approx(1.0, abs=1e-4) and report["argmax_agreement"] > 0.99
    # And the model streams: copy synthesis of a validation clip through the edge runtime (a TF-free process).
    clip = sorted(tiny_data.rglob("*_0.wav"))[0]
    r = run_cli("synth", str(model), "--wav", str(clip), "--speaker", clip.parent.name, "--out", str(tmp_path / "a.wav"))
    assert r.returncode == 0, r.stderr[-3000:]
    from edge_runtime.wavio import read_wav

    audio, rate = read_wav(tmp_path / "a.wav")
    assert rate == config.sample_rate and audio.shape[0] > 0.3 * rate and np.isfinite(audio).all()
    assert np.abs(audio).max() > 0
    if config.pitch_features:  # frames without the pitch features are a one-line error, not a wrong voice
        from tests.helpers import assert_clean_error

        np.save(tmp_path / "mel.npy", np.zeros((20, config.n_mels), np.float32))
        r = run_cli("synth", str(model), "--mel", str(tmp_path / "mel.npy"), "--out", str(tmp_path / "b.wav"))
        assert_clean_error(r, "mel frames must have 16 log-mel bands and 2 pitch features (shape [frames, 18])")
        assert not (tmp_path / "b.wav").exists()

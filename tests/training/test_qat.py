"""Fine-tuning a finished float run: quantization-aware (``train --qat-from``: its checks, resume, the step
graph's fake quantization, the int8 export carrying the learned ranges) and float (``train --finetune-from``)."""

import json
import shutil

import numpy as np
import pytest

from tests.helpers import EDGE_TPU_OPS, assert_clean_error, run_cli
from training import checkpoint as ckpt_io
from training.config import Config



def qat_train(source, out, steps, *overrides, qat=True):
    """``train --qat-from source`` (``--finetune-from`` if not ``qat``) through the library (the CLI's path, in
    this process)."""
    from training.qat import prepare
    from training.train import train

    messages = []
    config, data, src = prepare(source, out, list(overrides), steps, None, qat=qat)
    summary = train(config, data, out, source=src, progress=False, log=messages.append)
    return summary, messages


@pytest.fixture(scope="module")
def qat_run(tiny_run, tmp_path_factory):
    """The tiny float run fine-tuned with fake quantization for 150 steps."""
    out = tmp_path_factory.mktemp("qat") / "run"
    summary, _ = qat_train(tiny_run[0], out, 150, "val_every=150", "checkpoint_every=150")
    return out, summary


def test_qat_run_config_and_provenance(tiny_run, qat_run):
    from training.qat import FineTuneSource

    source, (out, summary) = tiny_run[0], qat_run
    config, float_config = Config.from_json(out / "config.json"), Config.from_json(source / "config.json")
    assert config.qat and not float_config.qat and config.steps == 150 and config.qat_state_scales == "per_layer"
    # fine-tuning continues at the rate the float run ended with: 3e-3 * 0.7 ** (300 / 1000)
    assert config.learning_rate == pytest.approx(3e-3 * 0.7 ** 0.3, rel=1e-5)
    assert FineTuneSource.open(source).final_learning_rate() == pytest.approx(config.learning_rate, rel=1e-5)
    info = ckpt_io.read_run_info(out)
    assert info["qat_from"] == {"run": str(source.resolve()), "checkpoint": "ckpt-00000300", "step": 300}
    assert info["data"] == ckpt_io.read_run_info(source)["data"]  # the source's data and split by default
    ema = np.load(ckpt_io.checkpoints(out)[-1] / "ema.npz")
    # the ranges are saved with the weights: 32 calibration batches, then one update per step
    assert np.all(ema["wavenet/state_range/count"] == 32 + 150)
    assert np.all(ema["wavenet/skip_range/minmax"][:, 0] == 0) and np.all(ema["wavenet/skip_range/minmax"][:, 1] > 0)
    assert summary["val_nll_bits"] < summary["val_unigram_entropy_bits"] - 1.0  # still a trained model


def test_qat_from_bad_sources_are_clean_errors_that_write_nothing(tiny_run, qat_run, tiny_data, tmp_path):
    source, (qat_dir, _) = tiny_run[0], qat_run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(source, unfinished)
    Config.from_json(source / "config.json").replace(steps=1000).to_json(unfinished / "config.json")
    out = tmp_path / "new"
    cases = [
        (["--qat-from", str(unfinished), "--steps", "5"], ["not a finished run", "step 300 of 1000"]),
        (["--qat-from", str(qat_dir), "--steps", "5"], ["is a QAT run already"]),
        (["--qat-from", str(source), "--steps", "5", "--preset", "xs"], ["'tiny' model, not 'xs'"]),
        (["--qat-from", str(source), "--steps", "5", "--set", "residual_channels=8"], ["architecture", "residual_channels"]),
    ]
    for args, fragments in cases:
        assert_clean_error(run_cli("train", "--out", str(out), "--quiet", *args), *fragments)
        assert not out.exists()
    from training.qat import QATError, prepare

    for source_dir, steps, overrides, message in [
        (tmp_path / "missing", 5, [], "not a run folder"),
        (source, None, [], "needs --steps"),
        (source, 5, ["n_mels=8"], "n_mels"),
        (source, 5, ["preemphasis=0.5"], "preemphasis"),  # the data, not only the shapes, must stay
        (source, 5, ["qat=false"], "contradicts"),
    ]:
        with pytest.raises(ckpt_io.CheckpointError if "folder" in message else QATError, match=message):
            prepare(source_dir, out, overrides, steps, None)
    with pytest.raises(QATError, match="is a float run"):  # an existing float run is never the target
        prepare(source, source, [], 5, None)
    assert not out.exists()


def test_qat_run_resumes_with_its_ranges(tiny_run, tmp_path):
    out = tmp_path / "qat"
    settings = ("val_every=10", "checkpoint_every=10", "qat_calibration_batches=4")
    _, messages = qat_train(tiny_run[0], out, 0, *settings)  # --steps 0: the calibrated start, saved
    assert any("calibrated on 4 training batches" in m for m in messages)
    count = lambda: np.load(ckpt_io.checkpoints(out)[-1] / "ema.npz")["wavenet/gate_range/count"]  # noqa: E731
    assert np.all(count() == 4)
    for steps in (10, 20):  # the same command with more steps resumes, from step 0 too, never calibrating again
        ranges = np.load(ckpt_io.checkpoints(out)[-1] / "ema.npz")["wavenet/gate_range/minmax"]
        summary, messages = qat_train(tiny_run[0], out, steps, *settings)
        assert summary["step"] == steps and any(f"resumed from ckpt-{steps - 10:08d}" in m for m in messages)
        assert not any("calibrated" in m or "QAT from" in m for m in messages)
        assert np.all(count() == 4 + steps)  # ten more moving-average updates each time
        moved = np.abs(np.load(ckpt_io.checkpoints(out)[-1] / "ema.npz")["wavenet/gate_range/minmax"] - ranges)
        assert 0 < moved.max() < 0.3 * np.abs(ranges).max(), (moved.max(), np.abs(ranges).max())
    opt = np.load(ckpt_io.checkpoints(out)[-1] / "optimizer.npz")
    assert int(opt["00000"]) == 20


def test_finetune_starts_from_the_source_weights_with_a_fresh_optimizer(tiny_run, tmp_path):
    source, out = tiny_run[0], tmp_path / "ft"
    settings = ("lr_schedule=cosine", "warmup_steps=4", "val_every=10", "checkpoint_every=10")
    summary, messages = qat_train(source, out, 0, *settings, qat=False)  # --steps 0: the start, validated and saved
    config = Config.from_json(out / "config.json")
    assert not config.qat and config.lr_schedule == "cosine" and config.warmup_steps == 4
    assert config.learning_rate == pytest.approx(3e-3 * 0.7 ** 0.3, rel=1e-5)  # where the source's schedule ended
    started = [m for m in messages if "fine-tuning from" in m]
    assert started == [f"fine-tuning from {source} (ckpt-00000300, EMA weights)"]
    source_ema, start = np.load(ckpt_io.checkpoints(source)[-1] / "ema.npz"), ckpt_io.checkpoints(out)[-1]
    for name in ("weights.npz", "ema.npz"):  # both start at the source's EMA weights, bit for bit
        saved = np.load(start / name)
        assert set(saved) == set(source_ema) and all(np.array_equal(saved[k], source_ema[k]) for k in saved)
    assert summary["val_nll_bits"] == pytest.approx(tiny_run[1]["val_nll_bits"], rel=1e-6)  # the same model
    info = ckpt_io.read_run_info(out)
    assert info["finetune_from"] == {"run": str(source.resolve()), "checkpoint": "ckpt-00000300", "step": 300}
    assert "qat_from" not in info and info["data"] == ckpt_io.read_run_info(source)["data"]
    summary, messages = qat_train(source, out, 10, *settings, qat=False)  # resumes from step 0, loads nothing again
    assert summary["step"] == 10 and not any("fine-tuning from" in m for m in messages)
    opt = np.load(ckpt_io.checkpoints(out)[-1] / "optimizer.npz")
    # a fresh Adam: its step counter (bias correction, warm-up) counts this run's steps, not the source's 300
    assert int(opt["00000"]) == 10
    moved = np.load(ckpt_io.checkpoints(out)[-1] / "weights.npz")
    assert 0 < max(np.abs(moved[k] - source_ema[k]).max() for k in moved) < 0.05


def test_finetune_can_add_lpc_inputs_starting_from_the_same_model(tiny_data, tmp_path):
    from training.qat import QATError
    from training.train import DataArgs, train

    source = tmp_path / "lpc"
    config = Config.preset("tiny", seed=2, steps=20, lpc_order=8, val_every=20, checkpoint_every=20)
    before = train(config, DataArgs(str(tiny_data), val_regex=r"_[01]\.wav$"), source, progress=False,
                   log=lambda m: None)
    out = tmp_path / "ft"
    summary, _ = qat_train(source, out, 0, "lpc_inputs=true", "val_every=6", "checkpoint_every=6", qat=False)
    assert Config.from_json(out / "config.json").lpc_inputs
    # zero signal and prediction tables: exactly the source's model (its NLL), everything else its EMA weights
    assert summary["val_nll_bits"] == pytest.approx(before["val_nll_bits"], rel=1e-6)
    start = np.load(ckpt_io.checkpoints(out)[-1] / "ema.npz")
    source_ema = np.load(ckpt_io.checkpoints(source)[-1] / "ema.npz")
    new = sorted(set(start) - set(source_ema))
    assert len(new) == 2 and all("signal_embedding" in k or "prediction_embedding" in k for k in new)
    assert all(not start[k].any() for k in new) and all(np.array_equal(start[k], source_ema[k]) for k in source_ema)
    qat_train(source, out, 6, "lpc_inputs=true", "val_every=6", "checkpoint_every=6", qat=False)
    moved = np.load(ckpt_io.checkpoints(out)[-1] / "weights.npz")
    assert all(np.abs(moved[k]).max() > 1e-4 for k in new)  # the new inputs are learned
    with pytest.raises(QATError, match="architecture and data .* lpc_inputs"):  # not in a QAT run
        qat_train(source, tmp_path / "q", 5, "lpc_inputs=true")
    # the excitation one period back too, with the pitch features its lag comes from: still the source's model
    summary, _ = qat_train(source, tmp_path / "period", 0, "lpc_inputs=true", "pitch_features=true",
                           "period_input=true", "val_every=6", "checkpoint_every=6", qat=False)
    assert summary["val_nll_bits"] == pytest.approx(before["val_nll_bits"], rel=1e-6)
    start = np.load(ckpt_io.checkpoints(tmp_path / "period")[-1] / "ema.npz")
    tables = [k for k in set(start) - set(source_ema) if "embedding" in k]
    assert sorted(k.split("/")[-2] for k in tables) == ["period_embedding", "prediction_embedding", "signal_embedding"]
    assert all(not start[k].any() for k in tables)
    # a new bandwidth expansion: the same weights, new targets (the data is rebuilt with it)
    summary, _ = qat_train(source, tmp_path / "g", 0, "lpc_gamma=0.97", "val_every=6", "checkpoint_every=6",
                           qat=False)
    assert Config.from_json(tmp_path / "g" / "config.json").lpc_gamma == 0.97
    start = np.load(ckpt_io.checkpoints(tmp_path / "g")[-1] / "ema.npz")
    assert set(start) == set(source_ema) and all(np.array_equal(start[k], source_ema[k]) for k in start)
    assert abs(summary["val_nll_bits"] - before["val_nll_bits"]) > 1e-3
    with pytest.raises(QATError, match="architecture and data .* lpc_gamma"):  # not in a QAT run
        qat_train(source, tmp_path / "q", 5, "lpc_gamma=0.97")
    # a new level for every recording: the same weights, new targets (louder ones: a higher NLL)
    summary, _ = qat_train(source, tmp_path / "p", 0, "normalize_peak=0.9", "val_every=6", "checkpoint_every=6",
                           qat=False)
    assert Config.from_json(tmp_path / "p" / "config.json").normalize_peak == 0.9
    start = np.load(ckpt_io.checkpoints(tmp_path / "p")[-1] / "ema.npz")
    assert all(np.array_equal(start[k], source_ema[k]) for k in start)
    assert summary["val_nll_bits"] > before["val_nll_bits"] + 0.1
    with pytest.raises(QATError, match="architecture and data .* normalize_peak"):  # not in a QAT run
        qat_train(source, tmp_path / "q", 5, "normalize_peak=0.9")


def test_finetune_can_add_pitch_features_starting_from_the_same_model(tiny_run, tmp_path):
    from training.qat import QATError

    source, out = tiny_run[0], tmp_path / "pitch"
    summary, _ = qat_train(source, out, 0, "pitch_features=true", "val_every=6", "checkpoint_every=6", qat=False)
    assert Config.from_json(out / "config.json").pitch_features
    # the pitch rows of the frame convolution start at zero: exactly the source's model (its NLL)
    assert summary["val_nll_bits"] == pytest.approx(tiny_run[1]["val_nll_bits"], rel=1e-6)
    start = np.load(ckpt_io.checkpoints(out)[-1] / "ema.npz")
    source_ema = np.load(ckpt_io.checkpoints(source)[-1] / "ema.npz")
    kernel = "wavenet/upsampler/frame_conv_0/kernel"
    assert set(start) == set(source_ema) and start[kernel].shape == (3, 18, 16) == source_ema[kernel].shape[:1] + (
        18, 16)
    assert np.array_equal(start[kernel][:, :16], source_ema[kernel]) and not start[kernel][:, 16:].any()
    assert all(np.array_equal(start[k], source_ema[k]) for k in source_ema if k != kernel)
    qat_train(source, out, 6, "pitch_features=true", "val_every=6", "checkpoint_every=6", qat=False)
    moved = np.load(ckpt_io.checkpoints(out)[-1] / "weights.npz")
    assert np.abs(moved[kernel][:, 16:]).max() > 1e-4  # the new inputs are learned
    with pytest.raises(QATError, match="architecture and data .* pitch_features"):  # not in a QAT run
        qat_train(source, tmp_path / "q", 5, "pitch_features=true")
    with pytest.raises(QATError, match="architecture and data .* pitch_features"):  # nor turned off again
        qat_train(out, tmp_path / "off", 5, "pitch_features=false", qat=False)


def test_pitch_features_grow_into_every_layer_without_a_frame_convolution(tiny_data, tmp_path):
    """cond_layers 0: the frames reach each layer's conditioning projection directly, so those grow the rows."""
    from training.train import DataArgs, train

    source = tmp_path / "flat"
    config = Config.preset("tiny", seed=4, steps=10, cond_layers=0, cond_channels=24, val_every=10,
                           checkpoint_every=10)
    before = train(config, DataArgs(str(tiny_data), val_regex=r"_[01]\.wav$"), source, progress=False,
                   log=lambda m: None)
    summary, _ = qat_train(source, tmp_path / "ft", 0, "pitch_features=true", "val_every=6", "checkpoint_every=6",
                           qat=False)
    assert summary["val_nll_bits"] == pytest.approx(before["val_nll_bits"], rel=1e-6)
    start = np.load(ckpt_io.checkpoints(tmp_path / "ft")[-1] / "ema.npz")
    grown = [k for k in start if k.endswith("/cond/kernel")]
    assert len(grown) == config.n_layers and all(start[k].shape == (18, 32) and not start[k][16:].any()
                                                 for k in grown)


def test_finetune_can_grow_the_model_starting_from_the_same_model(tiny_run, tmp_path):
    """A deeper and wider model starts from exactly its source's NLL, then learns through the zero rows."""
    from training.qat import QATError

    source, out = tiny_run[0], tmp_path / "grown"
    grow = ["stacks=2", "residual_channels=24", "gate_channels=48", "skip_channels=40", "head_channels=40",
            "cond_channels=24"]
    summary, _ = qat_train(source, out, 0, *grow, "val_every=6", "checkpoint_every=6", qat=False)
    assert summary["val_nll_bits"] == pytest.approx(tiny_run[1]["val_nll_bits"], rel=1e-6)
    config = Config.from_json(out / "config.json")
    assert (config.n_layers, config.residual_channels, config.gate_channels) == (8, 24, 48)
    qat_train(source, out, 6, *grow, "val_every=6", "checkpoint_every=6", qat=False)
    skip = np.load(ckpt_io.checkpoints(out)[-1] / "weights.npz")["wavenet/skip/kernel"]  # [8 * 24, 40]
    assert np.abs(skip[4 * 24:]).max() > 1e-4  # the new layers' rows are learned
    with pytest.raises(QATError, match="architecture and data .* residual_channels"):  # never shrinks
        qat_train(out, tmp_path / "small", 5, "residual_channels=16", qat=False)
    with pytest.raises(QATError, match="architecture and data .* stacks"):  # nor grows under QAT
        qat_train(source, tmp_path / "q", 5, "stacks=2")


def test_finetune_from_bad_requests_are_clean_errors(tiny_run, qat_run, tmp_path):
    source, (qat_dir, _), out = tiny_run[0], qat_run, tmp_path / "new"
    cases = [
        (["--finetune-from", str(source), "--qat-from", str(source), "--steps", "5"], ["exclude each other"]),
        (["--finetune-from", str(source), "--steps", "5", "--set", "qat=true"], ["contradicts --finetune-from"]),
        (["--finetune-from", str(source), "--steps", "5", "--set", "n_mels=8"], ["architecture", "n_mels"]),
        # a new bandwidth expansion retargets an excitation model only: this one predicts the signal itself
        (["--finetune-from", str(source), "--steps", "5", "--set", "lpc_gamma=0.95"], ["architecture", "lpc_gamma"]),
        (["--finetune-from", str(source)], ["--finetune-from needs --steps"]),
    ]
    for args, fragments in cases:
        assert_clean_error(run_cli("train", "--out", str(out), "--quiet", *args), *fragments)
        assert not out.exists()
    r = run_cli("train", "--out", str(qat_dir), "--quiet", "--finetune-from", str(source), "--steps", "5")
    assert_clean_error(r, "is a QAT run: choose a new --out for the fine-tuning run")


@pytest.mark.parametrize("scales", ["shared", "per_layer"])
def test_step_graph_with_fake_quant_matches_the_qat_model(tiny_config, scales):
    from tests.training.test_model import random_inputs, step_loop_logits
    from training.config import receptive_field
    from training.model import build_model
    from training.step import state_gains, step_weights

    config = tiny_config.replace(qat=True, qat_state_scales=scales)
    model = build_model(config)
    samples = (2 * receptive_field(config) // config.hop_length + 2) * config.hop_length
    inputs = random_inputs(config, 1, samples, seed=5)
    for _ in range(3):
        model(inputs, training=True)  # observes the ranges
    ranges = step_weights(model)["ranges"]["state"]
    if scales == "shared":
        assert state_gains(config, step_weights(model)["ranges"]) is None and np.all(ranges == ranges[0])
    else:
        # symmetric per site, zero point exactly 0; the gains bring every layer's input range to the widest one
        assert np.all(ranges[:, 1] == np.float32(-ranges[:, 0] * 127 / 128)) and len(set(ranges[:, 0])) == len(ranges)
        gains = state_gains(config, step_weights(model)["ranges"])
        inputs_range = -ranges[np.arange(config.n_layers) - 1, 0]
        np.testing.assert_allclose(gains * inputs_range, -ranges[:, 0].min(), rtol=1e-6)
        assert gains.min() == pytest.approx(1) and gains.max() > 1.5
    full = model(inputs).numpy()[0]
    stepped = step_loop_logits(model, inputs, fake_quant=True)
    logit_step = np.diff(model.trackers["logits"].minmax.numpy()[0])[0] / 255
    # the same rounding at the same ranges; the conditioner's float path may flip a rare rounding by one step
    assert np.mean(np.abs(full - stepped) < 1e-5) > 0.99 and np.abs(full - stepped).max() <= 8 * logit_step
    float_logits = step_loop_logits(model, inputs)  # the float step graph (snapped weights, no activation rounding)
    assert np.abs(float_logits - full).max() > 2 * logit_step  # so the rounding is there, and measurable


def test_int8_export_of_a_qat_run_uses_the_learned_ranges(qat_run, tmp_path):
    from edge_runtime.interpreter import graph_details
    from training.checkpoint import load_model
    from training.step import step_weights

    out, _ = qat_run
    model_dir = tmp_path / "int8"
    r = run_cli("export", str(out), "--out", str(model_dir), "--quantize", "int8")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    weights = step_weights(load_model(out)[0])
    ranges, gains = weights["ranges"], weights["state_gains"]  # --qat-from: per-layer state scales
    ports = {**manifest["step"]["inputs"], **manifest["step"]["outputs"]}
    top = -ranges["state"][:, 0].min()  # the widest layer's range is the state tensor's: [-M, M * 127/128]
    for port, (lo, hi) in [("state", (-top, top * 127 / 128)), ("new_state", (-top, top * 127 / 128)),
                           ("cond", ranges["cond"][0]), ("logits", ranges["logits"][0])]:
        scale = (hi - lo) / 255
        assert ports[port]["scale"] == pytest.approx(scale, rel=1e-6), port
        assert ports[port]["zero_point"] == -128 + round(-lo / scale), port
    # the state goes out at the scale it comes in: no requantization between steps
    assert ports["state"]["scale"] == ports["new_state"]["scale"]
    # the runtime writes the embedding into the state: the manifest's table carries layer 0's gain
    from edge_runtime.manifest import decode_array

    table = decode_array(manifest["tables"]["embedding"], "embedding")
    np.testing.assert_allclose(table, weights["embedding"] * gains[0], rtol=1e-6)
    assert gains[0] > 1.5 and manifest["state"]["gains"] == pytest.approx(gains.tolist(), rel=1e-6)
    ops, tensors = graph_details(model_dir / "step.tflite")
    # MULs: each layer's gate (4), each layer's tap read back onto its grid and the embedding row, and layers
    # 1-3's inputs written onto the state's grid; the widest layer's gain is 1, a MUL the converter drops
    scaled = gains != 1
    assert set(ops) <= EDGE_TPU_OPS and "QUANTIZE" not in ops and ops["FULLY_CONNECTED"] == 4 + 3 + 1 + 2, ops
    assert scaled.sum() == 3 and ops["MUL"] == 4 + scaled.sum() + scaled[0] + scaled[1:].sum(), ops
    assert {np.dtype(t["dtype"]).name for t in tensors} == {"int8", "int32"}
    report = json.loads((model_dir / "report.json").read_text())["variants"]["int8"]
    # the int8 graph computes what the QAT model simulates (its TF reference): the integer kernels' own
    # rounding, fed back through the state, is all that differs (measured: ratio 1.0005, KL 0.008, argmax 0.90)
    assert abs(report["nll_ratio_to_tf_float32"] - 1) < 0.003 and report["mean_kl_nats"] < 0.02, report
    assert report["argmax_agreement"] > 0.85, report

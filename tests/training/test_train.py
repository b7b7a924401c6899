"""Real TensorFlow training runs on tiny generated speech: learning, checkpoints, resume, strategies, eval."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO, assert_clean_error, run_cli
from training import checkpoint as ckpt_io
from training.config import Config, ConfigError


def test_training_beats_the_unigram_entropy(tiny_run):
    run_dir, summary = tiny_run
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [150, 300]
    entropy = summary["val_unigram_entropy_bits"]
    assert 5.0 < entropy < 8.0
    # The model must predict far better than the sample histogram, and keep improving.
    assert summary["val_nll_bits"] < entropy - 1.0
    assert log[1]["val_nll_bits"] < log[0]["val_nll_bits"]
    assert summary["samples_per_s"] > 0 and summary["receptive_field"] == 16


def test_run_folder_contents(tiny_run):
    run_dir, summary = tiny_run
    config = Config.from_json(run_dir / "config.json")
    assert config.speakers == ("alice", "bob") and config.name == "tiny"
    steps = [ckpt_io.step_of(c) for c in ckpt_io.checkpoints(run_dir)]
    assert steps == [150, 300]
    info = ckpt_io.read_run_info(run_dir)
    assert info["best_step"] == 300 and abs(info["best_val_nll_bits"] - summary["val_nll_bits"]) < 1e-9
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_eval_cli_matches_training_validation(tiny_run, tiny_data, tmp_path):
    run_dir, summary = tiny_run
    val = tmp_path / "val"
    for f in tiny_data.rglob("*_[01].wav"):
        (val / f.parent.name).mkdir(parents=True, exist_ok=True)
        (val / f.parent.name / f.name).write_bytes(f.read_bytes())
    result = run_cli("eval", str(run_dir), "--data", str(val), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    # Same weights (EMA of the best checkpoint), same files: the same number.
    assert abs(out["nll_bits_per_sample"] - summary["val_nll_bits"]) < 1e-4
    assert out["files"] == 4 and out["samples"] > 4 * 2000


def test_resume_continues_from_the_saved_step(tiny_data, tmp_path):
    from training.train import DataArgs, train

    data = DataArgs(str(tiny_data), val_regex=r"_0\.wav$")
    config = Config.preset("tiny", seed=3, steps=40, val_every=20, checkpoint_every=20)
    first = train(config, data, tmp_path / "run", progress=False, log=lambda m: None)
    assert first["step"] == 40
    messages = []
    second = train(config.replace(steps=60), data, tmp_path / "run", progress=False, log=messages.append)
    assert second["step"] == 60 and any("resumed from ckpt-00000040" in m for m in messages)
    state = ckpt_io.read_state(ckpt_io.checkpoints(tmp_path / "run")[-1])
    assert state["step"] == 60
    opt = np.load(ckpt_io.checkpoints(tmp_path / "run")[-1] / "optimizer.npz")
    assert int(opt["00000"]) == 60  # the optimizer's iteration counter went on from 40


def test_resume_with_a_different_config_is_an_error(tiny_run, tiny_data):
    run_dir, _ = tiny_run
    result = run_cli("train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run_dir),
                     "--set", "residual_channels=8", "--quiet")
    assert_clean_error(result, "different config", "residual_channels")


@pytest.mark.slow
def test_interrupt_saves_and_rerun_resumes(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "wavenet_edge.cli", "train", "--preset", "tiny", "--data", str(tiny_data),
           "--out", str(run_dir), "--steps", "100000", "--set", "checkpoint_every=100000", "--set", "val_every=3",
           "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300  # an event, not a time: wait for the first validation line (step 3)
    while time.time() < deadline and proc.poll() is None and not (
            (run_dir / "log.jsonl").exists() and (run_dir / "log.jsonl").read_text().strip()):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] and summary["step"] > 0
    ckpts = ckpt_io.checkpoints(run_dir)
    assert [ckpt_io.step_of(c) for c in ckpts] == [summary["step"]]
    # the same command again (five more steps): it resumes from the saved step
    result = run_cli("train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run_dir),
                     "--steps", str(summary["step"] + 5), "--set", "checkpoint_every=100000", "--set", "val_every=3",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"resumed from {ckpts[0].name}" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == summary["step"] + 5


def test_steps_zero_writes_an_initial_checkpoint(tiny_data, tmp_path):
    result = run_cli("train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(tmp_path / "r"),
                     "--steps", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    assert [ckpt_io.step_of(c) for c in ckpt_io.checkpoints(tmp_path / "r")] == [0]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["val_nll_bits"] > 7.0  # untrained: close to log2(256) = 8 bits


@pytest.mark.slow
def test_two_replica_mirrored_strategy(tiny_data, tmp_path):
    result = run_cli("train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(tmp_path / "r"),
                     "--steps", "30", "--cpu-replicas", "2", "--set", "val_every=30", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "2 replica(s)" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 30 and summary["val_nll_bits"] < 7.9
    opt = np.load(ckpt_io.checkpoints(tmp_path / "r")[-1] / "optimizer.npz")
    assert int(opt["00000"]) == 30  # one optimizer step per global batch, not one per replica


def test_input_noise_perturbs_the_input_and_scores_the_clean_targets(tiny_config):
    import tensorflow as tf
    from training.data import noisy_history, scored_span, window_frames
    from training.model import model_inputs
    from training.train import Learner, TrainStep

    config = tiny_config.replace(input_noise=3.0, jit_compile=False)
    strategy = tf.distribute.get_strategy()
    learner = Learner(config, strategy)
    step = TrainStep(config, learner, strategy)
    rng = np.random.default_rng(0)
    batch = model_inputs(config, 2, window_frames(config) * config.hop_length)
    batch["audio"] = tf.constant(rng.integers(100, 156, batch["audio"].shape), tf.int32)
    batch["mel"] = tf.constant(rng.normal(size=batch["mel"].shape), tf.float32)
    loss, _ = step._loss_and_grads_eager(batch)

    def loss_of(inputs):
        first, last = scored_span(config)
        logits = learner.model(inputs, training=True)[:, first - 1:last - 1]
        return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["audio"][:, first:last],
                                                                                    logits)))

    # Step 0, replica 0: seed [0, config.seed]; the targets are the clean classes
    noisy = noisy_history(batch["audio"], 3.0, config.mu_classes, tf.constant([0, config.seed]))
    assert abs(float(loss) - loss_of(dict(batch, audio=noisy))) < 1e-6
    # An untrained model's logits are nearly flat: the clean input changes its loss by ~1e-4, 100x the tolerance
    assert abs(float(loss) - loss_of(batch)) > 3e-5


def test_period_noise_perturbs_only_the_period_class(tiny_config):
    import tensorflow as tf
    from training.data import noisy_history, window_frames
    from training.model import model_inputs
    from training.train import Learner, TrainStep

    config = tiny_config.replace(lpc_order=8, lpc_inputs=True, pitch_features=True, period_input=True,
                                 period_noise=3.0, jit_compile=False)
    strategy = tf.distribute.get_strategy()
    step = TrainStep(config, Learner(config, strategy), strategy)
    rng = np.random.default_rng(1)
    batch = {k: tf.constant(v) for k, v in model_inputs(config, 2, window_frames(config) * config.hop_length).items()}
    batch["lpc"] = tf.constant(rng.integers(100, 156, batch["lpc"].shape), tf.int32)
    inputs = step._noisy_inputs(batch)
    np.testing.assert_array_equal(inputs["audio"], batch["audio"])  # input_noise is off
    np.testing.assert_array_equal(inputs["lpc"][..., :2], batch["lpc"][..., :2])  # s and p stay clean
    expected = noisy_history(batch["lpc"][..., 2:], 3.0, config.mu_classes, tf.constant([32, config.seed]))
    np.testing.assert_array_equal(inputs["lpc"][..., 2:], expected)  # step 0, replica 0: its own seed stream
    moved = np.abs(inputs["lpc"][..., 2].numpy() - batch["lpc"][..., 2].numpy())
    assert 0.5 < moved.mean() < 4 and moved.max() <= 20  # about 3 classes of rounded Gaussian noise
    with pytest.raises(ConfigError, match="period_noise needs period_input"):
        Config.preset("tiny", period_noise=1.0)

"""The training loop: tf.distribute strategy, EMA weights, atomic resumable checkpoints, TensorBoard."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

from training import checkpoint as ckpt_io
from training.config import Config, ConfigError, receptive_field
from training.data import load_corpus, segment_dataset, unigram_entropy_bits, window_frames
from training.evaluate import NLLScorer, utterance_inputs
from training.model import build_model


@dataclass(frozen=True)
class DataArgs:
    """Where the data is and how it is labelled and split."""

    data_dir: str
    speaker_regex: str | None = None
    val_regex: str | None = None
    val_fraction: float = 0.05


def choose_strategy(cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """MultiWorkerMirrored with ``TF_CONFIG``, Mirrored with several GPUs (or ``cpu_replicas`` > 1), else default.

    ``cpu_replicas`` splits the CPU into logical devices; it must be called before TensorFlow initialises them.
    """
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class DecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Exponential decay ``lr * rate ** (step / decay_steps)``, floored at ``lr_min``."""

    def __init__(self, config: Config):
        self.lr, self.rate, self.every, self.floor = (config.learning_rate, config.lr_decay_rate,
                                                      config.lr_decay_steps, config.lr_min)

    def __call__(self, step):
        decayed = self.lr * tf.pow(self.rate, tf.cast(step, tf.float32) / self.every)
        return tf.maximum(decayed, self.floor)

    def get_config(self):
        return {"lr": self.lr, "rate": self.rate, "every": self.every, "floor": self.floor}


def resolve_config(requested: Config, run_dir: Path) -> Config:
    """The config to train with: the requested one, or on resume the saved one (only ``steps`` may change)."""
    path = run_dir / "config.json"
    if not path.exists():
        return requested
    saved = Config.from_json(path)
    a = {**saved.to_dict(), "steps": 0, "speakers": []}
    b = {**requested.to_dict(), "steps": 0, "speakers": []}
    diff = sorted(k for k in a if a[k] != b[k])
    if diff:
        changes = "; ".join(f"{k}={a[k]!r}, now {b[k]!r}" for k in diff)
        raise ConfigError(f"{run_dir} was started with a different config ({changes}); "
                          "use a new --out folder or the same settings")
    return saved.replace(steps=requested.steps)


class Progress:
    """One status line: rewritten in place on a terminal, printed every 30 s otherwise (logs)."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.total, self.enabled, self.tty = total, enabled, sys.stderr.isatty()
        self.last_print = 0.0
        self.start = start

    def update(self, step: int, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        width = 24
        filled = int(width * step / max(1, self.total))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} {text}"
        if self.tty:
            sys.stderr.write("\r" + line[:200] + "\033[K")
            sys.stderr.flush()
        elif force or now - self.last_print > 30:
            sys.stderr.write(line + "\n")
            self.last_print = now

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def train(config: Config, data: DataArgs, run_dir: str | os.PathLike, *, strategy: tf.distribute.Strategy | None = None,
          progress: bool = True, log=print) -> dict:
    """Trains (or resumes) a run and returns a summary dict.

    Args:
        config: the requested config (`speakers` is filled from the data when speaker conditioning is on).
        data: the data folder and its labelling/split.
        run_dir: the run folder; an existing one is resumed if its config matches.
        strategy: a tf.distribute strategy (default: :func:`choose_strategy`).
        progress: show the progress line on stderr.
        log: where one-line messages go.

    Returns:
        {"step", "best_step", "val_nll_bits", "samples_per_s", "receptive_field", "interrupted"}.
    """
    run_dir = Path(run_dir)
    strategy = strategy or choose_strategy()
    config = resolve_config(config, run_dir)
    corpus = load_corpus(data.data_dir, config, speaker_regex=data.speaker_regex, val_regex=data.val_regex,
                         val_fraction=data.val_fraction)
    if config.use_speaker and not config.speakers:
        config = config.replace(speakers=corpus.speakers)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_io.clean_temporaries(run_dir)
    config.to_json(run_dir / "config.json")
    info = ckpt_io.read_run_info(run_dir)
    info.update({"data": data.__dict__, "train_files": len(corpus.train), "val_files": len(corpus.val)})
    ckpt_io.write_json_atomic(run_dir / "run.json", info)
    rf = receptive_field(config)
    log(f"receptive field {rf} samples ({1000 * rf / config.sample_rate:.1f} ms); {len(corpus.train)} training and "
        f"{len(corpus.val)} validation files; {strategy.num_replicas_in_sync} replica(s)")
    if config.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")

    with strategy.scope():
        model = build_model(config)
        optimizer = keras.optimizers.Adam(DecaySchedule(config))
        optimizer.build(model.trainable_variables)
        ema = [tf.Variable(v.value, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
               for v in model.trainable_variables]
    variables = model.trainable_variables
    start = 0
    existing = ckpt_io.checkpoints(run_dir)
    if existing:
        state = ckpt_io.restore_checkpoint(existing[-1], variables, ema, optimizer.variables)
        start = state["step"]
        log(f"resumed from {existing[-1].name} (step {start})")

    scorer = NLLScorer(model, config)
    best_nll = info.get("best_val_nll_bits")
    best = {"step": info.get("best_step"), "nll": math.inf if best_nll is None else best_nll}

    def validate(step: int) -> float | None:
        if not corpus.val:
            return None
        with ema_weights(variables, ema):
            return scorer(corpus.val)[0]

    def save(step: int, val_nll: float | None, extra: dict) -> None:
        if val_nll is not None and val_nll < best["nll"]:
            best.update(step=step, nll=val_nll)
        ckpt_io.save_checkpoint(run_dir, step, variables, ema, optimizer.variables,
                                {"val_nll_bits": val_nll, **extra})
        info.update(best_step=best["step"], best_val_nll_bits=None if math.isinf(best["nll"]) else best["nll"])
        ckpt_io.write_json_atomic(run_dir / "run.json", info)
        ckpt_io.prune(run_dir, config.keep_checkpoints, best["step"])

    if config.steps <= start:
        val_nll = validate(start)
        save(start, val_nll, {})
        return {"step": start, "best_step": best["step"], "val_nll_bits": val_nll, "samples_per_s": None,
                "receptive_field": rf, "interrupted": False}

    global_batch = config.batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise ConfigError(f"batch_size {global_batch} is not divisible by {strategy.num_replicas_in_sync} replicas")

    def dataset_fn(ctx: tf.distribute.InputContext):
        # Each input pipeline draws its own random windows: a distinct seed per pipeline is the sharding.
        seed = config.seed * 1000003 + start * 131 + ctx.input_pipeline_id
        return segment_dataset(corpus.train, config, ctx.get_per_replica_batch_size(global_batch), seed)

    batches = iter(strategy.distribute_datasets_from_function(dataset_fn))
    seg = config.segment_length

    @tf.function(jit_compile=config.jit_compile)
    def loss_and_grads(batch):
        with tf.GradientTape() as tape:
            logits = model(batch, training=True)[:, -seg - 1:-1]  # [b, seg, classes]: predictions of the segment
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["audio"][:, -seg:], logits))
        # Dense gradients (the embeddings' are IndexedSlices): small tables, and all-reduce/clip need tensors.
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

    def replica_step(batch):
        loss, grads = loss_and_grads(batch)
        ctx = tf.distribute.get_replica_context()
        n = ctx.num_replicas_in_sync
        if n > 1:  # clip the global mean gradient, then hand the optimizer its share (it sums over replicas)
            grads = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
            loss = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, loss)
        grads, norm = tf.clip_by_global_norm(grads, config.grad_clip_norm)
        optimizer.apply_gradients(zip([g / n for g in grads], variables))
        it = tf.cast(optimizer.iterations, tf.float32)
        decay = tf.minimum(config.ema_decay, (1.0 + it) / (10.0 + it))  # short warm-up of the average
        for e, v in zip(ema, variables):
            e.assign(decay * e + (1.0 - decay) * v)
        return loss, norm

    @tf.function
    def train_step(batch):
        loss, norm = strategy.run(replica_step, args=(batch,))
        return (strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None))

    writer = tf.summary.create_file_writer(str(run_dir / "tb"))
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:  # second Ctrl-C: give up at once
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop["signal"] = signum

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = Progress(config.steps, start, progress)
    step, val_nll, rate, losses = start, None, 0.0, []
    train_time, timed_samples = 0.0, 0
    samples_per_step = global_batch * seg
    try:
        while step < config.steps and stop["signal"] is None:
            t = time.perf_counter()
            loss, norm = train_step(next(batches))
            loss = float(loss)  # waits for the step
            step += 1
            losses.append(loss)
            if step - start > 2:  # the first steps trace and compile
                train_time += time.perf_counter() - t
                timed_samples += samples_per_step
                rate = timed_samples / train_time
            loss_bits = loss / math.log(2)
            with writer.as_default(step=step):
                tf.summary.scalar("train/loss_bits", loss_bits)
                tf.summary.scalar("train/grad_norm", float(norm))
                tf.summary.scalar("train/learning_rate", float(optimizer.learning_rate))
            val_due = step % config.val_every == 0 or step == config.steps
            if val_due:
                val_nll = validate(step)
                _log_validation(writer, step, val_nll, rate, model, ema, variables, corpus, config)
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, "train_loss_bits": float(np.mean(losses)) / math.log(2),
                                        "val_nll_bits": val_nll, "samples_per_s": rate, "time": time.time()}) + "\n")
                losses = []
            if step % config.checkpoint_every == 0 or step == config.steps:
                save(step, val_nll if val_due else None, {"samples_per_s": rate})
            val_text = f" val {val_nll:.3f}" if val_nll is not None else ""
            bar.update(step, f"loss {loss_bits:.3f} bits{val_text} {rate:,.0f} samples/s", force=val_due)
        if stop["signal"] is not None and step > start:
            save(step, None, {"samples_per_s": rate, "interrupted": True})
            log(f"\ninterrupted: saved checkpoint at step {step}")
    finally:
        bar.close()
        for s, h in handlers.items():
            signal.signal(s, h)
        writer.flush()
    return {"step": step, "best_step": best["step"], "val_nll_bits": val_nll, "samples_per_s": rate,
            "receptive_field": rf, "interrupted": stop["signal"] is not None,
            "val_unigram_entropy_bits": unigram_entropy_bits(corpus.val) if corpus.val else None,
            "window_samples": window_frames(config) * config.frame_length}


@contextlib.contextmanager
def ema_weights(variables, ema):
    """Temporarily swaps the EMA weights into the model."""
    backup = [v.numpy() for v in variables]
    for v, e in zip(variables, ema):
        v.assign(e.read_value())
    try:
        yield
    finally:
        for v, b in zip(variables, backup):
            v.assign(b)


def _log_validation(writer, step, val_nll, rate, model, ema, variables, corpus, config) -> None:
    """Scalars, and audio of the first validation clip next to a teacher-forced sampling of it (EMA weights)."""
    from training.audio import mu_law_decode

    with writer.as_default(step=step):
        if val_nll is not None:
            tf.summary.scalar("val/nll_bits", val_nll)
        tf.summary.scalar("train/samples_per_s", rate)
        if not corpus.val:
            return
        u = corpus.val[0]
        with ema_weights(variables, ema):
            logits = model(utterance_inputs(u, config))[0, :-1]
        sampled = tf.random.stateless_categorical(logits, 1, seed=[step, 0])[:, 0]
        pair = tf.stack([mu_law_decode(u.classes[1:], config.mu_classes), mu_law_decode(sampled, config.mu_classes)])
        tf.summary.audio("val/original_vs_teacher_forced_sample", pair[:, :, None], config.sample_rate, step=step)

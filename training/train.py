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
from training.data import (Corpus, load_corpus, noisy_history, scored_span, segment_dataset, unigram_entropy_bits,
                           window_frames)
from training.evaluate import NLLScorer, utterance_inputs
from training.model import build_model
from training.qat import provenance_key, start_run


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
    """The config's learning-rate schedule (``lr_schedule``) after a linear warm-up, floored at ``lr_min``."""

    def __init__(self, config: Config):
        self.kind, self.lr, self.floor = config.lr_schedule, config.learning_rate, config.lr_min
        self.rate, self.every = config.lr_decay_rate, config.lr_decay_steps
        self.warmup, self.total = config.warmup_steps, max(1, config.steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        if self.kind == "cosine":
            done = tf.clip_by_value((step - self.warmup) / max(1, self.total - self.warmup), 0.0, 1.0)
            decayed = self.floor + (self.lr - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * done))
        elif self.kind == "inverse_time":
            decayed = self.lr / (1.0 + self.rate * tf.maximum(step - self.warmup, 0.0) / self.every)
        else:
            decayed = self.lr * tf.pow(self.rate, step / self.every)
        warm = tf.minimum(1.0, (step + 1.0) / self.warmup) if self.warmup else 1.0
        return tf.maximum(decayed * warm, self.floor)

    def get_config(self):
        return {"kind": self.kind, "lr": self.lr, "rate": self.rate, "every": self.every, "floor": self.floor,
                "warmup": self.warmup, "total": self.total}


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


class RunFolder:
    """A run folder's bookkeeping: ``config.json``, ``run.json`` (data, best validation, CPU time), checkpoints."""

    def __init__(self, run_dir: Path, config: Config, data: DataArgs, corpus: Corpus):
        self.dir, self.config = run_dir, config
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.clean_temporaries(run_dir)
        config.to_json(run_dir / "config.json")
        self.info = ckpt_io.read_run_info(run_dir)
        self.info.update({"data": data.__dict__, "train_files": len(corpus.train), "val_files": len(corpus.val)})
        ckpt_io.write_json_atomic(run_dir / "run.json", self.info)
        best_nll = self.info.get("best_val_nll_bits")
        self.best_step, self.best_nll = self.info.get("best_step"), math.inf if best_nll is None else best_nll
        self._cpu_start, self._cpu_before = time.process_time(), self.info.get("cpu_seconds", 0.0)

    def cpu_seconds(self) -> float:
        """CPU time of this run's training processes, summed over resumes (for comparisons at equal CPU time)."""
        return self._cpu_before + time.process_time() - self._cpu_start

    def save(self, step: int, val_nll: float | None, extra: dict, learner: "Learner") -> None:
        """Writes a checkpoint, updates the best validation and ``run.json``, prunes old checkpoints."""
        if val_nll is not None and val_nll < self.best_nll:
            self.best_step, self.best_nll = step, val_nll
        ckpt_io.save_checkpoint(self.dir, step, learner.saved, learner.saved_ema, learner.optimizer.variables,
                                {"val_nll_bits": val_nll, "cpu_seconds": self.cpu_seconds(), **extra})
        self.info.update(best_step=self.best_step, cpu_seconds=self.cpu_seconds(),
                         best_val_nll_bits=None if math.isinf(self.best_nll) else self.best_nll)
        ckpt_io.write_json_atomic(self.dir / "run.json", self.info)
        ckpt_io.prune(self.dir, self.config.keep_checkpoints, self.best_step)

    def log_validation(self, record: dict) -> None:
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps({**record, "time": time.time(), "cpu_seconds": self.cpu_seconds()}) + "\n")


class Learner:
    """The model, its optimizer and the EMA of its weights, built under a strategy's scope."""

    def __init__(self, config: Config, strategy: tf.distribute.Strategy):
        if config.mixed_precision != "none":
            keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")
        with strategy.scope():
            self.model = build_model(config)
            self.optimizer = keras.optimizers.Adam(DecaySchedule(config), beta_2=config.adam_beta2)
            self.optimizer.build(self.model.trainable_variables)
            self.ema = [tf.Variable(v.value, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                        for v in self.model.trainable_variables]
        self.variables = self.model.trainable_variables
        # A QAT model's ranges: saved beside the weights, and in ema.npz as they are (already moving averages)
        self.saved = self.variables + self.model.non_trainable_variables
        self.saved_ema = self.ema + self.model.non_trainable_variables

    def restore_latest(self, run_dir: Path, log) -> int:
        """Loads the newest checkpoint of the run, if any; returns its step (0 for a new run)."""
        existing = ckpt_io.checkpoints(run_dir)
        if not existing:
            return 0
        state = ckpt_io.restore_checkpoint(existing[-1], self.saved, self.saved_ema, self.optimizer.variables)
        log(f"resumed from {existing[-1].name} (step {state['step']})")
        return state["step"]


class TrainStep:
    """One optimizer step on a global batch: loss on the scored span, gradients (all-reduced over replicas),
    clipping, Adam, then the EMA update."""

    def __init__(self, config: Config, learner: Learner, strategy: tf.distribute.Strategy):
        self.config, self.learner, self.strategy = config, learner, strategy
        self.first, self.last = scored_span(config)
        self._loss_and_grads = tf.function(self._loss_and_grads_eager, jit_compile=config.jit_compile)

    def _loss_and_grads_eager(self, batch):
        model, first, last = self.learner.model, self.first, self.last
        inputs = self._noisy_inputs(batch)
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)[:, first - 1:last - 1]  # [b, scored, classes]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["audio"][:, first:last], logits))
        # Dense gradients (the embeddings' are IndexedSlices): small tables, and all-reduce/clip need tensors.
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, self.learner.variables)]

    def _noisy_inputs(self, batch):
        """The inputs with ``input_noise`` on the fed-back sample and ``period_noise`` on the period class
        (targets stay clean), each drawn per step and replica."""
        cfg, inputs = self.config, dict(batch)
        if cfg.input_noise:
            inputs["audio"] = self._noisy(batch["audio"], cfg.input_noise, 0)
        if cfg.period_noise:
            lpc = batch["lpc"]
            inputs["lpc"] = tf.concat([lpc[..., :2], self._noisy(lpc[..., 2:], cfg.period_noise, 32)], axis=-1)
        return inputs

    def _noisy(self, classes, stddev: float, stream: int):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.stack([tf.cast(self.learner.optimizer.iterations, tf.int32) * 64 + stream + replica,
                         self.config.seed])
        return noisy_history(classes, stddev, self.config.mu_classes, seed)

    def _replica_step(self, batch):
        learner = self.learner
        loss, grads = self._loss_and_grads(batch)
        ctx = tf.distribute.get_replica_context()
        n = ctx.num_replicas_in_sync
        if n > 1:  # clip the global mean gradient, then hand the optimizer its share (it sums over replicas)
            grads = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
            loss = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, loss)
        grads, norm = tf.clip_by_global_norm(grads, self.config.grad_clip_norm)
        learner.optimizer.apply_gradients(zip([g / n for g in grads], learner.variables))
        it = tf.cast(learner.optimizer.iterations, tf.float32)
        decay = tf.minimum(self.config.ema_decay, (1.0 + it) / (10.0 + it))  # short warm-up of the average
        for e, v in zip(learner.ema, learner.variables):
            e.assign(decay * e + (1.0 - decay) * v)
        return loss, norm

    @tf.function
    def __call__(self, batch):
        loss, norm = self.strategy.run(self._replica_step, args=(batch,))
        mean = tf.distribute.ReduceOp.MEAN
        return self.strategy.reduce(mean, loss, axis=None), self.strategy.reduce(mean, norm, axis=None)


def training_batches(config: Config, corpus: Corpus, strategy: tf.distribute.Strategy, start: int):
    """An endless iterator of distributed global batches; each input pipeline draws its own random windows."""
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {strategy.num_replicas_in_sync} replicas")

    def dataset_fn(ctx: tf.distribute.InputContext):
        seed = config.seed * 1000003 + start * 131 + ctx.input_pipeline_id  # a distinct seed is the sharding
        return segment_dataset(corpus.train, config, ctx.get_per_replica_batch_size(config.batch_size), seed)

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop after the current step (a second one gives up at once)."""

    def __init__(self):
        self.signal = None

    def _on_signal(self, signum, frame):
        if self.signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signal = signum

    def __enter__(self):
        self._handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, h in self._handlers.items():
            signal.signal(s, h)


def train(config: Config, data: DataArgs, run_dir: str | os.PathLike, *, strategy: tf.distribute.Strategy | None = None,
          progress: bool = True, log=print, source=None) -> dict:
    """Trains (or resumes) a run and returns a summary dict.

    Args:
        config: the requested config (`speakers` is filled from the data when speaker conditioning is on).
        data: the data folder and its labelling/split.
        run_dir: the run folder; an existing one is resumed if its config matches.
        strategy: a tf.distribute strategy (default: :func:`choose_strategy`).
        progress: show the progress line on stderr.
        log: where one-line messages go.
        source: a :class:`training.qat.FineTuneSource`: a new run starts from its weights (QAT, or a float fine-tune).

    Returns:
        {"step", "best_step", "val_nll_bits", "samples_per_s", "receptive_field", "interrupted", ...}.
    """
    run_dir = Path(run_dir)
    strategy = strategy or choose_strategy()
    config = resolve_config(config, run_dir)
    corpus = load_corpus(data.data_dir, config, speaker_regex=data.speaker_regex, val_regex=data.val_regex,
                         val_fraction=data.val_fraction)
    if config.use_speaker and not config.speakers:
        config = config.replace(speakers=corpus.speakers)
    run = RunFolder(run_dir, config, data, corpus)
    if source is not None:
        run.info[provenance_key(config.qat)] = source.record()
        ckpt_io.write_json_atomic(run.dir / "run.json", run.info)
    rf = receptive_field(config)
    log(f"receptive field {rf} samples ({1000 * rf / config.sample_rate:.1f} ms); {len(corpus.train)} training and "
        f"{len(corpus.val)} validation files; {strategy.num_replicas_in_sync} replica(s)")
    learner = Learner(config, strategy)
    fresh = not ckpt_io.checkpoints(run_dir)  # (a checkpoint at step 0 is a start already made)
    start = learner.restore_latest(run_dir, log)
    if fresh and (config.qat or source is not None):
        start_run(learner, source, training_batches(config, corpus, strategy, start), strategy, log)
    validator = Validator(learner, config, corpus, run)
    summary = {"step": start, "val_nll_bits": None, "samples_per_s": None, "interrupted": False}
    if config.steps <= start:
        summary["val_nll_bits"] = validator(start, None)
        run.save(start, summary["val_nll_bits"], {}, learner)
    else:
        summary.update(_loop(config, corpus, strategy, learner, run, validator, start, progress, log))
    return {**summary, "best_step": run.best_step, "receptive_field": rf,
            "val_unigram_entropy_bits": unigram_entropy_bits(corpus.val) if corpus.val else None,
            "window_samples": window_frames(config) * config.frame_length}


class Validator:
    """Validation NLL with the EMA weights, and its TensorBoard scalars and audio."""

    def __init__(self, learner: Learner, config: Config, corpus: Corpus, run: RunFolder):
        self.learner, self.config, self.corpus = learner, config, corpus
        self.scorer = NLLScorer(learner.model, config)
        self.writer = tf.summary.create_file_writer(str(run.dir / "tb"))

    def __call__(self, step: int, rate: float | None) -> float | None:
        val_nll = None
        if self.corpus.val:
            with ema_weights(self.learner.variables, self.learner.ema):
                val_nll = self.scorer(self.corpus.val)[0]
        if rate is not None:
            _log_validation(self.writer, step, val_nll, rate, self.learner.model, self.learner.ema,
                            self.learner.variables, self.corpus, self.config)
        return val_nll


def _loop(config, corpus, strategy, learner: Learner, run: RunFolder, validator: Validator, start: int,
          progress: bool, log) -> dict:
    """The training loop from ``start`` to ``config.steps`` (or a stop signal): steps, logs, validation, saves."""
    step_fn, batches = TrainStep(config, learner, strategy), training_batches(config, corpus, strategy, start)
    writer, bar = validator.writer, Progress(config.steps, start, progress)
    step, val_nll, rate, losses = start, None, 0.0, []
    train_time, timed_samples = 0.0, 0
    samples_per_step = config.batch_size * (step_fn.last - step_fn.first)
    with StopSignals() as stop:
        try:
            while step < config.steps and stop.signal is None:
                t = time.perf_counter()
                loss, norm = step_fn(next(batches))
                loss = float(loss)  # waits for the step
                step += 1
                losses.append(loss)
                if step - start > 2:  # the first steps trace and compile
                    train_time += time.perf_counter() - t
                    timed_samples += samples_per_step
                    rate = timed_samples / train_time
                with writer.as_default(step=step):
                    tf.summary.scalar("train/loss_bits", loss / math.log(2))
                    tf.summary.scalar("train/grad_norm", float(norm))
                    tf.summary.scalar("train/learning_rate", float(learner.optimizer.learning_rate))
                val_due = step % config.val_every == 0 or step == config.steps
                if val_due:
                    val_nll = validator(step, rate)
                    run.log_validation({"step": step, "train_loss_bits": float(np.mean(losses)) / math.log(2),
                                        "val_nll_bits": val_nll, "samples_per_s": rate})
                    losses = []
                if step % config.checkpoint_every == 0 or step == config.steps:
                    run.save(step, val_nll if val_due else None, {"samples_per_s": rate}, learner)
                val_text = f" val {val_nll:.3f}" if val_nll is not None else ""
                bar.update(step, f"loss {loss / math.log(2):.3f} bits{val_text} {rate:,.0f} samples/s", force=val_due)
            if stop.signal is not None and step > start:
                run.save(step, None, {"samples_per_s": rate, "interrupted": True}, learner)
                log(f"\ninterrupted: saved checkpoint at step {step}")
        finally:
            bar.close()
            writer.flush()
    return {"step": step, "val_nll_bits": val_nll, "samples_per_s": rate, "interrupted": stop.signal is not None}


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

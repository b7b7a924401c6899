"""Fine-tuning a finished float run: ``wavenet-edge train --qat-from RUN_DIR --out NEW_RUN`` (quantization-aware)
or ``--finetune-from RUN_DIR`` (float: a new schedule from the run's weights, e.g. one rebuilt by tools/recover_run.py
from a shipped model after its checkpoints were lost).

A float fine-tune starts from the source's final EMA weights with a fresh optimizer at step 0, so Adam's bias
correction and the warm-up (``--set warmup_steps=N``) apply: resuming the source instead would continue its
schedule with zeroed moments and no bias correction, i.e. a few hundred steps at up to several times its rate.
Its config is the source's with the learning rate the source ended with, then ``--set`` (schedule fields only;
on an excitation model also ``lpc_inputs=true``, LPCNet's extra inputs with their tables starting at zero, and
``lpc_gamma``, the predictor's bandwidth expansion: new targets for the same weights, see :data:`RETARGETS`; on
any mel model ``pitch_features=true``, and larger ``stacks`` and widths: the model grows into one that computes
the same function, see :data:`GROWS` and ``training/grow.py``).

The QAT run is a run folder like any other (resumed by the same command), whose config is the source's with
``qat`` on (fake quantization, see ``training/quant.py``) and, unless ``--set`` says otherwise, per-layer state
scales (``qat_state_scales``) and the learning rate the source ended with. It starts from the source's final EMA
weights; forward passes over ``qat_calibration_batches`` training batches set the int8 ranges before the first
step. ``export --quantize int8`` of it then uses the learned ranges. Everything is checked before anything is
written.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import WavenetEdgeError
from training import checkpoint as ckpt_io
from training.config import Config
from training.grow import GROWABLE, grow_arrays

# What a fine-tuning run may set differently from its float source: the schedule and bookkeeping of training,
# never anything that shapes the model or its data (those would not fit the source's weights, or not be the same model).
TUNABLE = frozenset({
    "batch_size", "segment_length", "lr_schedule", "learning_rate", "lr_decay_rate", "lr_decay_steps", "lr_min",
    "warmup_steps", "adam_beta2", "score_whole_window", "input_noise", "period_noise", "grad_clip_norm", "ema_decay",
    "steps", "checkpoint_every", "keep_checkpoints", "val_every", "seed", "jit_compile", "mixed_precision",
    "qat_range_decay", "qat_calibration_batches", "qat_state_scales"})

# What a float fine-tune of an excitation model (lpc_order > 0) may change besides: the bandwidth expansion of the
# predictor changes the excitation the network is asked for (the data), not any weight's shape, so a trained voice
# can move to new targets without a run from scratch (docs/training-experiments.md, γ 0.95 on `default`).
RETARGETS = frozenset({"lpc_gamma"})
# What any float fine-tune may change: the level every recording is scaled to (the same voice, louder or quieter).
RESCALES = frozenset({"normalize_peak"})
# Inputs a float fine-tune may add (off -> on); the sizes it may increase are training/grow.py's GROWABLE. The
# weights reading what is new start at zero, so the run starts from exactly the source's model and learns what
# the new inputs or channels add (see FineTuneSource.load_into).
GROWS = frozenset({"pitch_features"})


class QATError(WavenetEdgeError):
    """A fine-tuning (QAT or float) run cannot start from the given source or into the given folder (the message
    says why)."""


@dataclass(frozen=True)
class FineTuneSource:
    """A finished float run and its final checkpoint."""

    run_dir: Path
    config: Config
    checkpoint: Path

    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> "FineTuneSource":
        """Checks that ``run_dir`` is a finished float run (its last checkpoint at its config's ``steps``)."""
        run_dir = Path(run_dir)
        config = ckpt_io.load_run_config(run_dir)
        if config.qat:
            raise QATError(f"{run_dir} is a QAT run already: fine-tune its float source instead")
        ckpts = ckpt_io.checkpoints(run_dir)
        last = ckpts[-1] if ckpts else None
        step = ckpt_io.step_of(last) if last else 0
        if last is None or step < config.steps or ckpt_io.read_state(last).get("interrupted"):
            raise QATError(f"{run_dir} is not a finished run (last checkpoint at step {step} of {config.steps}): "
                           "finish its training first")
        return cls(run_dir, config, last)

    def final_learning_rate(self) -> float:
        """The learning rate the source's schedule reached at its last step."""
        from training.train import DecaySchedule

        return float(DecaySchedule(self.config)(self.config.steps))

    def run_config(self, overrides: list[str], steps: int, preset: str | None = None, qat: bool = True) -> Config:
        """The new run's config: the source's, ``qat`` as asked (QAT: per-layer state scales, no mixed precision),
        its final learning rate, then ``overrides`` (``--set``).

        Raises QATError for another architecture: a ``preset`` other than the source's, or an override of a field
        outside :data:`TUNABLE`.
        """
        if preset is not None and preset != self.config.name:
            raise QATError(f"{self.run_dir} is a {self.config.name!r} model, not {preset!r}: a fine-tuning run keeps "
                           "the architecture of its source")
        lr = max(float(f"{self.final_learning_rate():.6g}"), self.config.lr_min)
        base = self.config.replace(learning_rate=lr)
        if qat:
            base = base.replace(qat=True, mixed_precision="none", qat_state_scales="per_layer")
        config = base.with_overrides(overrides).replace(steps=steps)
        if config.qat != qat:
            raise QATError(f"qat={str(config.qat).lower()} contradicts {option(qat)}")
        a, b = self.config.to_dict(), config.to_dict()
        free = set(TUNABLE) | {"qat"}
        if not qat:
            free |= RESCALES | {k for k in GROWS if not a[k]} | {k for k in GROWABLE if b[k] >= a[k]}
        if not qat and a["lpc_order"]:
            free |= RETARGETS | {k for k in ("lpc_inputs", "period_input") if not a[k]}  # growing: see load_into
        changed = [k for k in a if k not in free and a[k] != b[k]]
        if changed:
            k = changed[0]
            raise QATError(f"a fine-tuning run keeps the architecture and data of its source: {k} is {a[k]!r} in "
                           f"{self.run_dir}, {b[k]!r} requested")
        return config

    def data_args(self):
        """The source's data folder, labelling and split (a QAT run's default data)."""
        from training.train import DataArgs

        data = ckpt_io.read_run_info(self.run_dir).get("data", {})
        fields = {f.name for f in dataclasses.fields(DataArgs)}
        if "data_dir" not in data:
            raise QATError(f"{self.run_dir}/run.json names no data folder: give --data")
        return DataArgs(**{k: v for k, v in data.items() if k in fields})

    def record(self) -> dict:
        """The provenance stored in the new run's ``run.json`` (under :func:`provenance_key`)."""
        return {"run": str(self.run_dir.resolve()), "checkpoint": self.checkpoint.name,
                "step": ckpt_io.step_of(self.checkpoint)}

    def check_target(self, run_dir: str | os.PathLike, qat: bool = True) -> None:
        """An existing ``run_dir`` must be a fine-tuning run of this source, of the same kind (then it is resumed)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").exists():
            return
        if ckpt_io.load_run_config(run_dir).qat != qat:
            kinds = ("a float run", "the QAT run") if qat else ("a QAT run", "the fine-tuning run")
            raise QATError(f"{run_dir} is {kinds[0]}: choose a new --out for {kinds[1]}")
        source = ckpt_io.read_run_info(run_dir).get(provenance_key(qat), {}).get("run")
        if source != self.record()["run"]:
            raise QATError(f"{run_dir} fine-tunes another run ({source}): choose a new --out")

    def load_into(self, learner) -> None:
        """The source's final EMA weights into the model and its EMA (the ranges are set by calibration).

        A float fine-tune may turn ``lpc_inputs`` or ``period_input`` on: the new tables start at zero, so the
        run starts from exactly the source's model and learns what the new inputs add. Likewise new pitch
        features, layers and channels (training/grow.py)."""
        arrays = ckpt_io.load_ema(self.checkpoint)
        arrays.update({t.embeddings.path: np.zeros(t.embeddings.shape, np.float32)
                       for t in learner.model.embed_lpc if t.embeddings.path not in arrays})
        fresh = {v.path: v.numpy() for v in learner.variables}
        arrays = grow_arrays(arrays, self.config, learner.model.config, fresh)
        ckpt_io.assign_arrays(learner.variables, arrays, f"{self.checkpoint}/ema.npz")
        for e, v in zip(learner.ema, learner.variables):
            e.assign(v)


def provenance_key(qat: bool) -> str:
    """The ``run.json`` key naming a fine-tuning run's source."""
    return "qat_from" if qat else "finetune_from"


def option(qat: bool) -> str:
    """The command-line option that asks for a QAT (``qat``) or float fine-tuning run, for messages."""
    return "--qat-from" if qat else "--finetune-from"


def prepare(source_dir: str | os.PathLike, run_dir: str | os.PathLike, overrides: list[str], steps: int | None,
            preset: str | None, data=None, qat: bool = True):
    """Checks a ``--qat-from`` (``qat``) or ``--finetune-from`` request and returns (config, data args, source)
    for :func:`training.train.train`.

    ``preset``: the preset named on the command line (None when not named); ``data``: DataArgs, or None for the
    source's.
    """
    if steps is None:
        raise QATError(f"{option(qat)} needs --steps (the number of fine-tuning steps)")
    source = FineTuneSource.open(source_dir)
    config = source.run_config(overrides, steps, preset, qat)
    source.check_target(run_dir, qat)
    return config, data or source.data_args(), source


def start_run(learner, source: FineTuneSource | None, batches, strategy, log) -> None:
    """The start of a fine-tuning or QAT run: the source's weights (if any), then a QAT model's int8 ranges from
    forward passes (no step)."""
    import tensorflow as tf

    qat = learner.model.config.qat
    if source is not None:
        source.load_into(learner)
        log(f"{'QAT' if qat else 'fine-tuning'} from {source.run_dir} ({source.checkpoint.name}, EMA weights)")
    if not qat:
        return
    n = learner.model.config.qat_calibration_batches

    @tf.function
    def observe(batch):
        strategy.run(lambda b: learner.model(b, training=True), args=(batch,))

    for _ in range(n):
        observe(next(batches))
    if n:
        log(f"int8 ranges calibrated on {n} training batches")

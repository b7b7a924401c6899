"""Speed baselines for `wavenet-edge bench --baselines`: the same model generated without TFLite.

    python -m training.baselines '{"model_dir": ..., "samples": 400}'

* ``tf_step``: the single-step graph as a TF ``tf.function`` called from Python with the same numpy ring
  buffers and sampling -- what a user would write without TFLite.
* ``naive``: the paper's original algorithm -- the full model run over one receptive field of history for every
  generated sample (no caching of layer inputs).

Weights: the run named by the manifest when it is on this machine (next to the model folder, in the current
folder or in ``runs/``), otherwise a fresh initialisation of the same
config (speed does not depend on the values); the JSON says which.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def find_run(run: str | None, model_dir: Path | None = None) -> Path | None:
    """The run folder a manifest names (its folder name, or a path from older exports): next to the model folder,
    in the current folder or in ``runs/``; None if it is not on this machine."""
    if not run:
        return None
    places = [Path(run)] + [base / Path(run).name for base in
                            ([model_dir.parent] if model_dir is not None else []) + [Path("."), Path("runs")]]
    return next((p for p in places if (p / "checkpoints").is_dir()), None)


def load_weights_model(manifest: dict, model_dir: Path | None = None):
    """(model, "run" | "random-init") for a manifest."""
    from training.checkpoint import CheckpointError, load_model
    from training.config import Config
    from training.model import build_model

    run = find_run(manifest.get("producer", {}).get("run"), model_dir)
    if run is not None:
        try:
            model, _, _ = load_model(run, str(Path(run) / "checkpoints" / manifest["producer"]["checkpoint"]))
            return model, "run"
        except CheckpointError:
            pass  # the run folder moved on (pruned checkpoint): fall back to the same config, fresh weights
    return build_model(Config.from_dict(manifest["config"])), "random-init"


def tf_step_us(model, samples: int) -> float:
    """Microseconds per sample of a Python loop around the TF step function (float32)."""
    import tensorflow as tf

    from edge_runtime.step_inputs import ring_index
    from training.step import gate_inputs, make_step_function, state_layout, step_weights

    cfg = model.config
    weights = step_weights(model)
    step = make_step_function(cfg, weights, batch=1)
    layout = np.array(state_layout(cfg))
    ring, take_at = ring_index(layout, cfg.n_layers)
    hist = np.zeros((ring * cfg.n_layers, cfg.residual_channels), np.float32)  # flat [ring * L, R]
    rng = np.random.default_rng(0)
    feed = {}
    cond = rng.standard_normal((1, cfg.cond_channels)).astype(np.float32) * 0.1 if cfg.use_mel else None
    gates = gate_inputs(cfg, weights, cond, 0)  # [1, L, G] or [L, G] (or None)
    if gates is not None:
        feed["cond"] = tf.constant(gates.reshape(cfg.n_layers, cfg.gate_channels))
    prev, start = 128, None
    for t in range(samples + 20):
        if t == 20:
            start = time.perf_counter()
        base = t % ring * cfg.n_layers
        hist[base] = weights["embedding"][prev]
        out = step(state=tf.constant(hist[take_at[t % ring]]), **feed)
        hist[base + 1:base + cfg.n_layers] = out["new_state"].numpy()
        prev = int(np.argmax(out["logits"].numpy()[0] + rng.gumbel(size=cfg.mu_classes)))
    return (time.perf_counter() - start) / samples * 1e6


def naive_us(model, samples: int) -> float:
    """Microseconds per sample of regenerating one receptive field of history for every new sample."""
    import tensorflow as tf

    from training.config import receptive_field
    from training.model import model_inputs

    cfg = model.config
    frame = cfg.frame_length
    window = -(-receptive_field(cfg) // frame) * frame  # whole frames covering the receptive field
    inputs = {k: tf.constant(v) for k, v in model_inputs(cfg, 1, window).items()}
    forward = tf.function(lambda x: model(x)[0, -1])
    audio = np.full((1, window), 128, np.int32)
    rng = np.random.default_rng(0)
    start = None
    for t in range(samples + 3):
        if t == 3:
            start = time.perf_counter()
        logits = forward({**inputs, "audio": tf.constant(audio)}).numpy()
        audio = np.roll(audio, -1, axis=1)
        audio[0, -1] = int(np.argmax(logits + rng.gumbel(size=cfg.mu_classes)))
    return (time.perf_counter() - start) / samples * 1e6


def main() -> None:
    args = json.loads(sys.argv[1])
    import tensorflow as tf

    threads = int(args.get("threads", 1))  # the same number of threads as the TFLite numbers it is compared with
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    manifest = json.loads((Path(args["model_dir"]) / "manifest.json").read_text())
    model, weights = load_weights_model(manifest, Path(args["model_dir"]))
    n = int(args.get("samples", 400))
    print(json.dumps({"tf_step_us_per_sample": tf_step_us(model, n),
                      "naive_us_per_sample": naive_us(model, max(10, n // 20)), "weights": weights,
                      "tf_step_samples": n, "naive_samples": max(10, n // 20), "threads": threads}))


if __name__ == "__main__":
    main()

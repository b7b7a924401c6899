"""Calibration inputs of the int8 step graph: real step inputs from teacher-forced runs of validation audio."""

from __future__ import annotations

import numpy as np


def calibration_samples(model, utterances, weights: dict, batch: int, count: int = 1500, seed: int = 0,
                        state_gains: np.ndarray | None = None):
    """Step inputs taken from real teacher-forced runs: the ring-buffer states the runtime will hold.

    Each layer's input history comes from the full model's trunk, so these are exactly the states that stepping
    through validation audio produces, at random time steps. ``state_gains`` [L]: layer l's rows multiplied by
    its gain, as the int8 graph of a per-layer QAT model stores them (:func:`training.step.state_gains`).
    """
    from training.evaluate import utterance_inputs
    from training.step import gate_inputs, state_layout

    cfg = model.config
    rng = np.random.default_rng(seed)
    layout = state_layout(cfg)
    row_gain = np.ones(len(layout), np.float32) if state_gains is None else state_gains[[l for l, _ in layout]]
    per_utt = max(1, count // max(1, len(utterances)))
    rows = []
    for u in utterances:
        inputs = utterance_inputs(u, cfg)
        _, xs, c = model.trunk(inputs)
        xs = np.stack([x.numpy()[0] for x in xs], axis=1)  # [T, L, R]
        gates = gate_inputs(cfg, weights, None if c is None else c.numpy()[0], u.speaker)  # [T, L, G] or [L, G]
        for t in rng.integers(0, u.num_samples - 1, size=per_utt):
            # row (l, d): layer l's input d steps ago (row (0, 0) is the current sample's embedding)
            state = np.stack([xs[t - d, l] if t >= d else np.zeros(cfg.residual_channels, np.float32)
                              for l, d in layout]) * row_gain[:, None]  # [rows, R]
            sample = {"state": state}
            if gates is not None:
                sample["cond"] = gates[t] if cfg.use_mel else gates  # [L, G]
            rows.append(sample)
    rng.shuffle(rows)

    def batched():
        # streams side by side within each row: [rows, B, R] -> [rows * B, R]; cond [L, B, G] -> [L * B, G]
        for i in range(0, len(rows) - batch + 1, batch):
            group = rows[i:i + batch]
            out = {k: np.stack([g[k] for g in group], axis=1) for k in group[0]}
            yield {k: v.reshape(-1, v.shape[-1]).astype(np.float32) for k, v in out.items()}

    return batched

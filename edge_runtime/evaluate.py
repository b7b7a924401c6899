"""Teacher-forced NLL of an exported model over a folder of recordings (the number `eval RUN_DIR` gives)."""

from __future__ import annotations

import os

import numpy as np

from edge_runtime.audio import mu_law_encode, scale_to_peak
from edge_runtime.features import conditioning_frames
from edge_runtime.lpc import model_signal
from edge_runtime.corpus import DataError, load_wav_folder
from edge_runtime.synth import Synthesizer


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = logits.astype(np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def nll_nats(logp: np.ndarray, classes: np.ndarray) -> float:
    """Negative log-likelihood (nats) of ``classes[1:]`` under teacher-forced log-probabilities [T - 1, classes]."""
    return float(-logp[np.arange(logp.shape[0]), classes[1:]].sum())


def evaluate_folder(synth: Synthesizer, data_dir: str | os.PathLike, speaker_regex: str | None = None,
                    files_regex: str | None = None) -> dict:
    """Scores every WAV of a folder like training's eval: trimmed, whole frames, T - 1 predictions per file.

    Returns:
        {"nll_bits_per_sample", "samples", "files"}.
    """
    cfg = synth.config
    frame = cfg["hop_length"] if synth.use_mel else 1
    speakers = synth.manifest.speakers
    total, count, files = 0.0, 0, 0
    for rel, label, audio in load_wav_folder(data_dir, cfg["sample_rate"], cfg["trim_db"], speaker_regex, files_regex):
        audio = audio[: audio.shape[0] // frame * frame]
        if audio.shape[0] < 2 * frame:
            raise DataError(f"audio file {rel} is too short after trimming ({audio.shape[0]} samples)")
        if synth.use_speaker and label not in speakers:
            raise DataError(f"speaker {label!r} of {rel} is not one of the model's speakers ({', '.join(speakers)})")
        audio, _ = scale_to_peak(audio, synth.manifest.input_peak)  # the level the model was trained at
        mel = conditioning_frames(audio, cfg) if synth.use_mel else None
        classes = mu_law_encode(model_signal(audio, mel, cfg), cfg["mu_classes"])
        logits = synth.teacher_forced_logits(classes, mel, label if synth.use_speaker else None)
        total += nll_nats(log_softmax(logits), classes)
        count += logits.shape[0]
        files += 1
    return {"nll_bits_per_sample": total / count / np.log(2), "samples": count, "files": files}

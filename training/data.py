"""Reading a folder of recordings into utterances, and the tf.data pipeline of random training segments."""

from __future__ import annotations

import hashlib
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.audio import mu_law_encode, scale_to_peak
from edge_runtime.features import conditioning_frames, frame_lags
from edge_runtime.lpc import coefficients_for, input_classes, model_signal
from edge_runtime.corpus import DataError, find_audio_files, speaker_of, trim_silence  # noqa: F401 (re-exported)
from training.config import Config, receptive_field

@dataclass(frozen=True)
class Utterance:
    """One prepared recording: µ-law classes, aligned log-mel frames and speaker index."""

    name: str
    speaker: int
    classes: np.ndarray  # int32 [T], T a multiple of the frame length
    mel: np.ndarray | None  # float32 [T // hop, n_mels]
    lpc: np.ndarray | None = None  # int32 [T, 2 or 3]: classes of s[t], p[t+1] (and e[t+1-L]): lpc_inputs models

    @property
    def num_samples(self) -> int:
        """Samples in the utterance."""
        return int(self.classes.shape[0])


@dataclass(frozen=True)
class Corpus:
    """A folder split into training and validation utterances, with the speaker names in index order.

    Training utterances carry leading silence (see :func:`training_lead`); validation utterances do not.
    """

    train: list[Utterance]
    val: list[Utterance]
    speakers: tuple[str, ...]


def is_validation(relative: str, val_regex: str | None, val_fraction: float) -> bool:
    """Reproducible split: by regex on the file name, else by a hash of the relative path."""
    if val_regex:
        return re.search(val_regex, Path(relative).name) is not None
    digest = hashlib.sha1(relative.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Reads a WAV/FLAC file as float32 mono at ``sample_rate`` (channels averaged, resampled)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"cannot read audio file {path}: {e}") from None
    if audio.shape[0] == 0:
        raise DataError(f"audio file {path} has no samples")
    audio = audio.mean(axis=1)
    if rate != sample_rate:
        g = math.gcd(rate, sample_rate)
        audio = resample_poly(audio, sample_rate // g, rate // g).astype(np.float32)
    if not np.all(np.isfinite(audio)):
        raise DataError(f"audio file {path} contains NaN or infinite samples")
    return np.clip(audio, -1.0, 1.0)


def prepare(audio: np.ndarray, config: Config, name: str, speaker: int, left_pad: int = 0) -> Utterance:
    """µ-law classes (of the pre-emphasised signal or its LPC excitation: edge_runtime/lpc.py) and conditioning
    frames (log-mel and pitch features of the signal itself: edge_runtime/features.py) of float audio, truncated
    to whole frames, with optional leading silence."""
    audio = np.concatenate([np.zeros(left_pad, np.float32), audio])
    audio = audio[: audio.shape[0] // config.frame_length * config.frame_length]
    mel = conditioning_frames(audio, config.to_dict()) if config.use_mel else None
    classes = mu_law_encode(model_signal(audio, mel, config.to_dict()), config.mu_classes)
    return Utterance(name, speaker, classes, mel, lpc_inputs(classes, mel, config))


def lpc_inputs(classes: np.ndarray, mel: np.ndarray | None, config: Config) -> np.ndarray | None:
    """The ``lpc`` input of an lpc_inputs model (edge_runtime/lpc.py ``input_classes``), else None."""
    if not config.lpc_inputs:
        return None
    cfg = config.to_dict()
    lags = frame_lags(mel, cfg) if config.period_input else None
    return input_classes(classes, coefficients_for(mel, cfg), config.hop_length, config.mu_classes, lags)


def load_recordings(data_dir: str | os.PathLike, config: Config, speaker_regex: str | None = None,
                    workers: int = 8) -> list[tuple[str, str, np.ndarray]]:
    """Reads, resamples and trims every recording: ``[(relative path, speaker label, float audio)]``."""
    root = Path(data_dir)
    files = find_audio_files(root)
    labels = [speaker_of(p, root, speaker_regex) for p in files]

    def load(path: Path) -> np.ndarray:
        audio = trim_silence(read_audio(path, config.sample_rate), config.sample_rate, config.trim_db)
        audio, _ = scale_to_peak(audio, config.normalize_peak)
        if audio.shape[0] < 2 * config.frame_length:
            raise DataError(f"audio file {path} is too short after trimming ({audio.shape[0]} samples)")
        return audio

    with ThreadPoolExecutor(max_workers=workers) as pool:  # libsndfile and scipy release the GIL
        audios = list(pool.map(load, files))
    return [(p.relative_to(root).as_posix(), label, a) for p, label, a in zip(files, labels, audios)]


def speaker_index(labels: list[str], config: Config) -> tuple[tuple[str, ...], dict[str, int]]:
    """Speaker names (the config's, else the sorted labels) and the label -> index map; unknown labels fail."""
    speakers = config.speakers or tuple(sorted(set(labels)))
    unknown = sorted(set(labels) - set(speakers))
    if config.use_speaker and unknown:
        raise DataError(f"speaker {unknown[0]!r} is not one of the model's speakers ({', '.join(speakers)})")
    return speakers, {s: i for i, s in enumerate(speakers)}


def load_utterances(data_dir: str | os.PathLike, config: Config, speaker_regex: str | None = None,
                    files_regex: str | None = None) -> list[Utterance]:
    """Every recording of a folder (whose name matches ``files_regex``) as an utterance without padding."""
    recordings = load_recordings(data_dir, config, speaker_regex)
    if files_regex:
        recordings = [r for r in recordings if re.search(files_regex, Path(r[0]).name)]
        if not recordings:
            raise DataError(f"no audio file under {data_dir} matches {files_regex!r}")
    _, index = speaker_index([label for _, label, _ in recordings], config)
    return [prepare(audio, config, rel, index.get(label, 0)) for rel, label, audio in recordings]


def load_corpus(data_dir: str | os.PathLike, config: Config, *, speaker_regex: str | None = None,
                val_regex: str | None = None, val_fraction: float = 0.05) -> Corpus:
    """Reads, resamples, trims and splits every recording under ``data_dir``.

    Speakers are the labels found, sorted; if ``config.speakers`` is already set (resuming, evaluating) every
    label must be one of them and keeps its index.
    """
    recordings = load_recordings(data_dir, config, speaker_regex)
    speakers, index = speaker_index([label for _, label, _ in recordings], config)
    train, val = [], []
    for rel, label, audio in recordings:
        if is_validation(rel, val_regex, val_fraction):
            val.append(prepare(audio, config, rel, index.get(label, 0)))
        else:
            train.append(prepare(audio, config, rel, index.get(label, 0), training_lead(config, audio.shape[0])))
    if not train:
        raise DataError(f"no training files left in {data_dir} after the validation split")
    return Corpus(train, val, tuple(speakers))


def training_lead(config: Config, num_samples: int) -> int:
    """Silence put before a training utterance: one receptive field, and enough to fill one window.

    A window may then start at the utterance's start with a silent history, as generation starts.
    """
    frame = config.frame_length
    total_frames = max(math.ceil(receptive_field(config) / frame) + num_samples // frame, window_frames(config))
    return total_frames * frame - num_samples


def window_frames(config: Config) -> int:
    """Frames per training window: the scored segment, after one receptive field of context unless every
    position of the window is scored (``score_whole_window``)."""
    context = 0 if config.score_whole_window else receptive_field(config)
    return math.ceil((context + config.segment_length) / config.frame_length)


def scored_span(config: Config) -> tuple[int, int]:
    """[first, last) positions of a training window whose samples the loss scores.

    With ``score_whole_window`` every sample from the second on is scored, except the few frames at each edge
    whose conditioning the upsampler had to compute from padding instead of the neighbouring frames.
    """
    length = window_frames(config) * config.frame_length
    if not config.score_whole_window:
        return length - config.segment_length, length
    from training.model import conditioning_context

    edge = conditioning_context(config) * config.frame_length if config.use_mel else 0
    return max(1, edge), length - edge


def segment_dataset(utterances: list[Utterance], config: Config, batch_size: int, seed: int):
    """An endless tf.data pipeline of random training windows.

    ``utterances`` are training utterances of :func:`load_corpus` (with leading silence). Window starts are drawn
    uniformly over all valid positions (longer utterances are drawn more often). Yields dicts like the model's inputs, with
    ``audio`` [b, L] (L = window_frames * frame) whose last ``segment_length`` targets are scored.
    """
    import tensorflow as tf

    frame, wf = config.frame_length, window_frames(config)
    counts = np.array([u.num_samples // frame - wf + 1 for u in utterances], np.int64)
    frame_offsets = np.concatenate([[0], np.cumsum([p.num_samples // frame for p in utterances])[:-1]]).astype(np.int64)
    cum = np.cumsum(counts)
    audio_all = tf.constant(np.concatenate([p.classes for p in utterances]), tf.int32)
    mel_all = tf.constant(np.concatenate([p.mel for p in utterances])) if config.use_mel else None
    lpc_all = tf.constant(np.concatenate([p.lpc for p in utterances]), tf.int32) if config.lpc_inputs else None
    speakers = tf.constant([p.speaker for p in utterances], tf.int32)
    cum_t, offsets_t, first_t = tf.constant(cum), tf.constant(frame_offsets), tf.constant(cum - counts)
    total = int(cum[-1])

    def window(r):
        u = tf.math.floormod(tf.abs(r), total)
        i = tf.searchsorted(cum_t, u[None], side="right")[0]
        start = offsets_t[i] + u - first_t[i]  # frame index into the concatenation
        out = {"audio": audio_all[start * frame:(start + wf) * frame]}
        if mel_all is not None:
            out["mel"] = mel_all[start:start + wf]
        if lpc_all is not None:
            out["lpc"] = lpc_all[start * frame:(start + wf) * frame]
        if config.use_speaker:
            out["speaker"] = speakers[i]
        return out

    ds = tf.data.Dataset.random(seed=seed).map(window, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def noisy_history(classes, stddev: float, mu_classes: int, seed):
    """The fed-back input of a training window with rounded Gaussian noise of ``stddev`` classes, clipped to the
    class range (``input_noise``); the same ``seed`` (int [2]) draws the same noise, so a resumed run repeats it."""
    import tensorflow as tf

    noise = tf.round(tf.random.stateless_normal(tf.shape(classes), seed, stddev=stddev))
    return tf.clip_by_value(classes + tf.cast(noise, classes.dtype), 0, mu_classes - 1)


def unigram_entropy_bits(utterances: list[Utterance], classes: int = 256) -> float:
    """Entropy (bits/sample) of the µ-law class histogram of the scored samples (all but each first)."""
    counts = np.zeros(classes, np.int64)
    for u in utterances:
        counts += np.bincount(u.classes[1:], minlength=classes)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())

"""Folders of recordings: finding files, speaker labels, silence trimming (shared by training and the runtime)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError

AUDIO_SUFFIXES = (".wav", ".flac")


class DataError(InputError):
    """The data folder or one of its files cannot be used (the message names it)."""


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """All WAV/FLAC files under ``root``, recursively, sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no .wav or .flac files under {root}")
    return files


def speaker_of(path: Path, root: Path, speaker_regex: str | None) -> str:
    """Speaker label: the regex's ``speaker`` group on the file name, else the parent folder's name."""
    if speaker_regex:
        m = re.search(speaker_regex, path.name)
        if not m:
            raise DataError(f"the speaker regex {speaker_regex!r} does not match file {path.name}")
        return m.group("speaker")
    parent = path.parent
    return parent.name if parent != root else "default"


def trim_silence(audio: np.ndarray, sample_rate: int, top_db: float) -> np.ndarray:
    """Drops leading/trailing 25 ms frames whose RMS is more than ``top_db`` below the loudest frame."""
    if top_db <= 0 or audio.shape[0] == 0:
        return audio
    frame = max(1, int(0.025 * sample_rate))
    hop = max(1, frame // 4)
    n = 1 + max(0, audio.shape[0] - frame) // hop
    idx = np.arange(n)[:, None] * hop + np.arange(frame)[None, :]
    rms = np.sqrt(np.mean(np.pad(audio, (0, frame))[idx] ** 2, axis=1))
    loud = np.nonzero(20 * np.log10(np.maximum(rms, 1e-10) / max(rms.max(), 1e-10)) > -top_db)[0]
    if loud.size == 0:
        return audio[:0]
    return audio[loud[0] * hop: min(audio.shape[0], loud[-1] * hop + frame)]


def load_wav_folder(root: str | os.PathLike, sample_rate: int, trim_db: float, speaker_regex: str | None = None,
                    files_regex: str | None = None) -> list[tuple[str, str, np.ndarray]]:
    """Every WAV under ``root`` as ``(relative path, speaker label, float audio at sample_rate, trimmed)``.

    The numpy twin of ``training.data.load_recordings`` (which also reads FLAC through libsndfile).
    ``files_regex`` keeps only files whose name it matches (e.g. a test split: ``'_[0-4]\\.wav$'``).
    """
    from edge_runtime.wavio import read_wav, resample

    root = Path(root)
    paths = find_audio_files(root)
    if files_regex:
        try:
            pattern = re.compile(files_regex)
        except re.error as e:
            raise DataError(f"bad file regex {files_regex!r}: {e}") from None
        paths = [p for p in paths if pattern.search(p.name)]
        if not paths:
            raise DataError(f"no audio file under {root} matches {files_regex!r}")
    out = []
    for path in paths:
        if path.suffix.lower() != ".wav":
            raise DataError(f"{path.name}: the edge runtime reads WAV only (convert FLAC, or use the train extra)")
        try:
            audio, rate = read_wav(path)
        except InputError as e:
            raise DataError(f"cannot read audio file {path}: {e}") from None
        audio = trim_silence(resample(audio, rate, sample_rate), sample_rate, trim_db)
        out.append((path.relative_to(root).as_posix(), speaker_of(path, root, speaker_regex), audio))
    return out

"""Writes a small folder of generated 'voices' (harmonic tones with vibrato) for demos and tests.

    python tools/make_demo_data.py OUT_DIR [--speakers 2] [--files 8] [--seconds 0.4] [--rate 8000]

Layout is VCTK-style (one folder per speaker) with FSDD-style names ``{digit}_{speaker}_{index}.wav``, so both
labelling schemes work on it. Real speech lives in ../shared/data/fsdd; this is for machines without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SPEAKERS = [("alice", 180.0), ("bob", 260.0), ("carol", 220.0), ("dave", 140.0)]


def voice(rng: np.random.Generator, f0: float, seconds: float, rate: int) -> np.ndarray:
    """A predictable voiced sound: three harmonics, 5 Hz vibrato, 30 ms fades and faint noise."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * f0 * t + 0.3 * np.sin(2 * np.pi * 5 * t) + rng.uniform(0, 2 * np.pi)
    x = sum(a * np.sin(k * phase) for k, a in [(1, 0.5), (2, 0.25), (3, 0.12)])
    envelope = np.minimum(1, np.minimum(t, t[-1] - t) / 0.03)
    return (0.5 * envelope * x + 0.003 * rng.standard_normal(t.shape)).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    """Writes 16-bit PCM WAV (mono [T] or multichannel [T, C])."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, rate, subtype="PCM_16")


def write_demo_folder(root: Path, speakers: int = 2, files: int = 8, seconds: float = 0.4, rate: int = 8000,
                      seed: int = 1234) -> Path:
    """Writes ``speakers x files`` recordings under ``root``; file index 0 and 1 are meant for validation."""
    rng = np.random.default_rng(seed)
    for name, f0 in SPEAKERS[:speakers]:
        for i in range(files):
            write_wav(root / name / f"{i % 10}_{name}_{i}.wav", voice(rng, f0 * (1 + 0.03 * i), seconds, rate), rate)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--speakers", type=int, default=2, choices=range(1, len(SPEAKERS) + 1))
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.4)
    parser.add_argument("--rate", type=int, default=8000)
    args = parser.parse_args()
    write_demo_folder(args.out, args.speakers, args.files, args.seconds, args.rate)
    print(f"wrote {args.speakers * args.files} files under {args.out}")


if __name__ == "__main__":
    main()

"""Times the whole streaming loop (conditioner + steps + ring buffers + sampling) of exported models.

    python tools/stream_speed.py MODEL_DIR [MODEL_DIR ...] [--seconds 2] [--runs 3] [--threads 1] [--wav CLIP]

Prints, per model, the median over runs of microseconds per generated sample and the real-time factor at the
model's rate and at 16 kHz. Runs alternate between models so that machine noise hits all of them alike.
(`wavenet-edge bench` grows out of this.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from edge_runtime.audio import front_end_params, log_mel
from edge_runtime.synth import Synthesizer
from edge_runtime.wavio import read_wav, resample


def mel_for(synth: Synthesizer, seconds: float, wav: Path | None) -> np.ndarray:
    """Log-mel of a recording (or of noise-modulated tones), repeated to ``seconds``."""
    rate = synth.sample_rate
    if wav is not None:
        audio, r = read_wav(wav)
        audio = resample(audio, r, rate)
    else:
        t = np.arange(rate) / rate
        audio = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    reps = int(np.ceil(seconds * rate / audio.shape[0]))
    mel = log_mel(np.tile(audio, reps), **front_end_params(synth.config))
    return mel[: int(seconds * rate) // synth.config["hop_length"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wav", type=Path)
    args = parser.parse_args()
    synths = {m: Synthesizer.load(m, threads=args.threads) for m in args.models}
    mels = {m: mel_for(s, args.seconds, args.wav) if s.use_mel else None for m, s in synths.items()}
    times: dict[Path, list[float]] = {m: [] for m in args.models}
    for run in range(args.runs + 1):  # run 0 warms up
        for m, synth in synths.items():
            t0 = time.perf_counter()
            n = sum(c.shape[0] for c in synth.stream(mels[m], seed=run, seconds=args.seconds))
            if run:
                times[m].append((time.perf_counter() - t0) / n * 1e6)
    for m, synth in synths.items():
        us = statistics.median(times[m])
        spread = (max(times[m]) - min(times[m])) / us
        print(f"{str(m):<40} {us:7.1f} us/sample  RTF {us * synth.sample_rate / 1e6:.3f} at {synth.sample_rate} Hz, "
              f"{us * 16000 / 1e6:.3f} at 16 kHz  (runs {', '.join(f'{t:.1f}' for t in times[m])}; spread {spread:.0%})")


if __name__ == "__main__":
    main()

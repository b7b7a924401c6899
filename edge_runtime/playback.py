"""Playback through PortAudio (sounddevice) with a pre-buffer sized from the measured synthesis speed."""

from __future__ import annotations

import collections
import threading
import time
from typing import Iterator

import numpy as np

from edge_runtime.errors import DeviceError


class Player:
    """A callback stream fed from a queue of chunks; an empty queue plays silence and counts an underrun."""

    def __init__(self, sample_rate: int, device=None, blocksize: int = 512):
        try:
            import sounddevice as sd
        except (ImportError, OSError) as e:
            raise DeviceError(f"playback needs sounddevice and PortAudio (pip install 'wavenet-edge[audio]', "
                              f"apt install libportaudio2): {e}") from None
        self.queue: collections.deque[np.ndarray] = collections.deque()
        self.current, self.offset = np.zeros(0, np.float32), 0
        self.underruns, self.played, self.finished = 0, 0, False
        self.done = threading.Event()
        try:
            self.stream = sd.OutputStream(samplerate=sample_rate, channels=1, dtype="float32", device=device,
                                          blocksize=blocksize, callback=self._callback)
        except (sd.PortAudioError, ValueError) as e:
            raise DeviceError(f"cannot open an audio output: {e}") from None

    def _callback(self, out, frames, time_info, status):  # runs on PortAudio's thread
        filled = 0
        while filled < frames:
            if self.offset >= self.current.shape[0]:
                if not self.queue:
                    break
                self.current, self.offset = self.queue.popleft(), 0
            n = min(frames - filled, self.current.shape[0] - self.offset)
            out[filled:filled + n, 0] = self.current[self.offset:self.offset + n]
            self.offset += n
            filled += n
        self.played += filled
        if filled < frames:
            out[filled:, 0] = 0.0
            if self.finished:
                self.done.set()
            else:
                self.underruns += 1  # synthesis fell behind: play silence, carry on

    def play(self, chunks: Iterator[np.ndarray], total_samples: int | None, sample_rate: int) -> dict:
        """Plays a stream of chunks, starting once enough is buffered that playback need not stop.

        The pre-buffer is sized from the speed of the first chunks: if synthesis runs at speed s (seconds of audio
        per second), a total of D seconds needs D * (1 - s) seconds buffered before starting, plus 30 %: the first
        chunks' speed is only an estimate, and a shared CPU can slow down mid-stream (10 % was too little on a
        2-vCPU VM).
        """
        started, buffered, t0 = False, 0, time.perf_counter()
        prebuffer = int(0.2 * sample_rate)
        for chunk in chunks:
            self.queue.append(np.asarray(chunk, np.float32))
            buffered += chunk.shape[0]
            elapsed = time.perf_counter() - t0
            if not started and total_samples and elapsed > 0:
                speed = buffered / sample_rate / elapsed
                prebuffer = max(prebuffer, int(1.3 * total_samples * max(0.0, 1.0 - speed)))
            if not started and buffered >= min(prebuffer, total_samples or prebuffer):
                self.stream.start()
                started = True
        self.finished = True
        if not started:
            self.stream.start()
        self.done.wait(timeout=buffered / sample_rate + 5.0)
        self.stream.stop()
        self.stream.close()
        return {"underruns": self.underruns, "played_samples": self.played, "prebuffer_samples": prebuffer}

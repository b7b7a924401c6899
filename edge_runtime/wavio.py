"""WAV files in numpy (no libsndfile needed on the edge): read PCM/float WAV, write 16-bit PCM atomically."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.files import remove_stale_temporaries, temporary_sibling


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads a WAV file (PCM 8/16/24/32-bit or IEEE float 32/64) as float32 mono in [-1, 1], and its rate."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise InputError(f"{path} is not a WAV file (only WAV is read here; convert FLAC/MP3 first)")
    fmt, data, pos = None, None, 12
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        body = raw[pos + 8:pos + 8 + size]
        if cid == b"fmt " and len(body) >= 16:
            fmt = struct.unpack("<HHIIHH", body[:16])
            if fmt[0] == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag leads the sub-format
                fmt = (struct.unpack("<H", body[24:26])[0],) + fmt[1:]
        elif cid == b"data":
            data = body
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise InputError(f"{path} is a damaged WAV file (no fmt or data chunk)")
    tag, channels, rate, _, _, bits = fmt
    kinds = {(1, 8): "u1", (1, 16): "<i2", (1, 32): "<i4", (3, 32): "<f4", (3, 64): "<f8"}
    if channels < 1 or rate < 1:
        raise InputError(f"{path} declares {channels} channels at {rate} Hz")
    width = bits // 8
    usable = len(data) // (width * channels) * width * channels if width else 0
    if (tag, bits) == (1, 24):
        b = np.frombuffer(data[:usable], np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8) / 8388608.0
    elif (tag, bits) in kinds:
        x = np.frombuffer(data[:usable], kinds[(tag, bits)]).astype(np.float64)
        if tag == 1:  # integer PCM: 8-bit is unsigned, the others signed
            x = (x - 128) / 128 if bits == 8 else x / (32768.0 if bits == 16 else 2147483648.0)
    else:
        raise InputError(f"{path}: unsupported WAV encoding (format {tag}, {bits} bits)")
    if x.size == 0:
        raise InputError(f"{path} has no samples")
    x = x.reshape(-1, channels).mean(axis=1)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{path} contains NaN or infinite samples")
    return np.clip(x, -1, 1).astype(np.float32), rate


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling of a whole signal (FFT: truncate or zero-pad the spectrum)."""
    if rate == target:
        return audio
    n_out = int(round(audio.shape[0] * target / rate))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    keep = min(spectrum.shape[0], n_out // 2 + 1)
    out = np.zeros(n_out // 2 + 1, np.complex128)
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n_out) * (n_out / audio.shape[0])).astype(np.float32)


def to_pcm16(audio: np.ndarray) -> bytes:
    """Float audio in [-1, 1] -> little-endian 16-bit PCM bytes."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(rate: int, num_samples: int) -> bytes:
    """A 44-byte header for mono 16-bit PCM."""
    data = num_samples * 2
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", data))


class AtomicWavWriter:
    """Streams 16-bit PCM into ``OUT.partial-PID`` and renames it to ``OUT`` on :meth:`close`.

    Until then ``OUT`` is untouched: a killed or failed run leaves no half-written file under the final name.
    """

    def __init__(self, path: str | os.PathLike, rate: int):
        self.path, self.rate, self.count = Path(path), rate, 0
        if not self.path.name or self.path.is_dir():
            raise InputError(f"cannot write {str(path)!r}: give a file name, not a folder")
        self.tmp = temporary_sibling(self.path, "partial")
        remove_stale_temporaries(self.path, ("partial",))  # left by a SIGKILLed earlier run
        try:
            self.file = open(self.tmp, "wb")
            self.file.write(wav_header(rate, 0))
        except OSError as e:
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from None

    def write(self, audio: np.ndarray) -> None:
        """Appends float samples."""
        try:
            self.file.write(to_pcm16(audio))
        except OSError as e:
            self.abort()
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.count += audio.shape[0]

    def close(self) -> None:
        """Finishes the header, syncs, and renames into place."""
        try:
            self.file.seek(0)
            self.file.write(wav_header(self.rate, self.count))
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from None

    def abort(self) -> None:
        """Drops the partial file."""
        try:
            self.file.close()
        except OSError:
            pass  # closing flushes what is buffered, which fails as the write did; the file goes anyway
        finally:
            self.tmp.unlink(missing_ok=True)

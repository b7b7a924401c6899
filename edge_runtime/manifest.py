"""Reading and checking an edge model folder's ``manifest.json`` (the only contract with ``convert``).

Nothing in a model folder is executed: the manifest is JSON, tables are base64 little-endian arrays, and the
graphs are TFLite flatbuffers run by the interpreter.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime import lpc, melmatch
from edge_runtime.errors import EdgeError, ModelError

FORMAT = "wavenet-edge"
# What format_version says about the step graph's inputs (training/step.py has the details):
#   1: cond = the per-sample conditioning c' [B, C], speaker_bias [L * B, G] a separate input (the shipped voices)
#   2: cond = every layer's gate input [L * B, G]: conditioning projected by the conditioner graph + speaker bias
#   3: as 2, and layer 0's input row is the sum of three embeddings (an lpc_inputs model, LPCNet's inputs): the
#      sample's (tables.embedding), the LPC signal's and the next prediction's (tables.signal_embedding,
#      tables.prediction_embedding), each of its µ-law class; a runtime that reads only 1-2 must refuse it
#   4: as 3, and a fourth embedding in the sum (a period_input model): the class of the excitation one pitch
#      period before the sample (tables.period_embedding; the period from the frame's pitch features,
#      edge_runtime/period.py); a runtime that reads only 1-3 must refuse it
FORMAT_VERSION = 2  # what exports write (LPC_INPUTS_VERSION or PERIOD_INPUT_VERSION for those models)
LPC_INPUTS_VERSION = 3
PERIOD_INPUT_VERSION = 4
LPC_INPUT_TABLES = ("signal_embedding", "prediction_embedding")
PERIOD_TABLE = "period_embedding"
READABLE_VERSIONS = (1, 2, 3, 4)
MANIFEST = "manifest.json"
_DTYPES = {"float32": np.float32, "int8": np.int8, "int32": np.int32}


def encode_array(a: np.ndarray) -> dict:
    """A numpy array as a JSON object (exact: raw little-endian bytes in base64)."""
    a = np.ascontiguousarray(a)
    name = {np.dtype(v): k for k, v in _DTYPES.items()}[a.dtype]
    return {"dtype": name, "shape": list(a.shape), "base64": base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode()}


def decode_array(obj: dict, what: str) -> np.ndarray:
    """Inverse of :func:`encode_array`, checking dtype, shape and size."""
    try:
        dtype = np.dtype(_DTYPES[obj["dtype"]]).newbyteorder("<")
        shape = tuple(int(n) for n in obj["shape"])
        raw = base64.b64decode(obj["base64"], validate=True)
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"manifest table {what} is malformed ({type(e).__name__}: {e})") from None
    if not np.all(np.isfinite(array)):
        raise ModelError(f"manifest table {what} contains NaN or infinite values")
    return array.astype(dtype.newbyteorder("="))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safe_member(folder: Path, name: str) -> Path:
    """Resolves a file named by the manifest, refusing anything outside the folder (``..``, absolute, links)."""
    if (not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name or name.startswith("~")
            or ".." in Path(name).parts):
        raise ModelError(f"manifest names a file outside the model folder: {name!r}")
    path = folder / name
    try:
        resolved, root = path.resolve(strict=True), folder.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ModelError(f"model file {name} is missing from {folder}") from None
    if root not in resolved.parents or path.is_symlink():
        raise ModelError(f"manifest names a file outside the model folder: {name!r}")
    return resolved


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: the parsed JSON plus resolved file paths and decoded tables."""

    folder: Path
    data: dict
    step_path: Path
    conditioner_path: Path | None
    embedding: np.ndarray  # float32 [classes, R]
    speaker_bias: np.ndarray | None  # float32 [speakers, L, G]
    deemphasis: float = 0.0  # the postfilter's coefficient (0: the model's samples are the audio)
    temperature: float | None = None  # the sampling temperature recommended at export (None: not given)
    lpc_order: int = 0  # the LPC synthesis postfilter's order (0: the model's samples are not an excitation)
    formant: tuple[float, float] | None = None  # the formant postfilter's (numerator, denominator) gammas, or None
    mel_match: float | None = None  # the mel-matching postfilter's largest gain in dB, or None
    # float32 [classes, R] x 2 (format 3): the s and p tables; x 3 (format 4): and the period table
    lpc_inputs: tuple[np.ndarray, ...] | None = None
    input_peak: float = 0.0  # the peak recordings are scaled to before their log-mel (config normalize_peak; 0: none)

    @property
    def config(self) -> dict:
        """The training config (a plain dict: the runtime never imports ``training``)."""
        return self.data["config"]

    @property
    def speakers(self) -> list[str]:
        """Speaker names, in index order (empty without global conditioning)."""
        return list(self.config.get("speakers") or [])

    @property
    def version(self) -> int:
        """The format version (one of ``READABLE_VERSIONS``, checked at load): the step graph's input form."""
        return int(self.data["format_version"])


# What a field of the wrong type or shape raises somewhere in the checks: all mean "malformed manifest".
MALFORMED = (KeyError, IndexError, TypeError, ValueError, OverflowError, AttributeError)


@contextlib.contextmanager
def malformed_is_model_error(folder: Path):
    """Turns an error from a missing or mistyped manifest field, raised by any check inside, into a ModelError."""
    try:
        yield
    except EdgeError:
        raise
    except MALFORMED as e:
        raise ModelError(f"{folder / MANIFEST} is malformed ({type(e).__name__}: {e})") from None


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """Reads and checks ``folder/manifest.json``; with ``verify`` every file's sha256 is checked too.

    Raises:
        ModelError: the folder, the manifest or a file it names is missing, malformed or changed.
    """
    with malformed_is_model_error(Path(folder)):
        return _load_manifest(Path(folder), verify)


def _load_manifest(folder: Path, verify: bool) -> Manifest:
    """The checks of :func:`load_manifest`."""
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{folder} is not a model folder (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"{path} is not a wavenet-edge manifest")
    version = data.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ModelError(f"{path} has format version {version!r}; this runtime reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))} (re-export the model or upgrade wavenet-edge)")
    try:
        files = data["files"]
        step_name = data["step"]["file"]
        cond = data.get("conditioner")
        config = data["config"]
        tables = data["tables"]
        batch = data["batch"]
        if not isinstance(files, dict) or not isinstance(config, dict):
            raise TypeError("files and config must be objects")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise TypeError(f"batch {batch!r}: must be a positive integer")
    except (KeyError, TypeError) as e:
        raise ModelError(f"{path} is incomplete: missing or bad {e}") from None
    for name, digest in files.items():
        member = safe_member(folder, name)
        if verify and sha256_file(member) != digest:
            raise ModelError(f"checksum mismatch for {name}: the file was changed or corrupted after export")
    for name in [step_name] + ([cond["file"]] if cond else []):
        if name not in files:
            raise ModelError(f"{path} names {name!r} without a checksum")
    embedding = decode_array(tables.get("embedding"), "embedding") if isinstance(tables, dict) else None
    if embedding is None or embedding.ndim != 2:
        raise ModelError(f"{path}: embedding table missing or not 2-D")
    bias = tables.get("speaker_bias")
    speaker_bias = decode_array(bias, "speaker_bias") if bias else None
    deemphasis, lpc_order, formant, mel_match, temperature = _output_settings(data, path)
    return Manifest(folder, data, safe_member(folder, step_name), safe_member(folder, cond["file"]) if cond else None,
                    embedding, speaker_bias, deemphasis, temperature, lpc_order, formant, mel_match,
                    _lpc_input_tables(data, lpc_order, embedding.shape, path), _input_peak(data, path))


def _input_peak(data: dict, path: Path) -> float:
    """The level the model was trained at (config ``normalize_peak``; absent in older manifests: 0, as recorded)."""
    peak = data["config"].get("normalize_peak", 0.0)
    if isinstance(peak, bool) or not isinstance(peak, (int, float)) or not 0 <= peak <= 1:
        raise ModelError(f"{path}: normalize_peak must be a number in [0, 1], got {peak!r}")
    return float(peak)


def _lpc_input_tables(data: dict, lpc_order: int, shape: tuple, path: Path):
    """The signal and prediction embedding tables of a format-3 (lpc_inputs) manifest, and the period table
    after them in format 4 (period_input), else None."""
    version, tables, config = data["format_version"], data["tables"], data["config"]
    lpc_inputs, period = bool(config.get("lpc_inputs", False)), bool(config.get("period_input", False))
    if (version == PERIOD_INPUT_VERSION) != period:
        raise ModelError(f"{path}: a period_input model is format {PERIOD_INPUT_VERSION}, and only such a model "
                         f"(format {version}, period_input {config.get('period_input', False)})")
    if (version in (LPC_INPUTS_VERSION, PERIOD_INPUT_VERSION)) != lpc_inputs:
        raise ModelError(f"{path}: an lpc_inputs model is format {LPC_INPUTS_VERSION}, and only such a model "
                         f"(format {version}, lpc_inputs {config.get('lpc_inputs', False)})")
    if not lpc_inputs:
        return None
    if not lpc_order:
        raise ModelError(f"{path}: format {version} (LPC inputs) needs an LPC postfilter")
    if period and not config.get("pitch_features"):
        raise ModelError(f"{path}: format {version} (a period input) needs pitch features (config pitch_features)")
    names = LPC_INPUT_TABLES + ((PERIOD_TABLE,) if period else ())
    found = tuple(decode_array(tables[name], name) if tables.get(name) else None for name in names)
    if any(t is None or t.shape != shape for t in found):
        raise ModelError(f"{path}: the {', '.join(names)} tables must be given, each of shape {shape}")
    return found


# in the order the runtime applies them to the model's samples
POSTFILTERS = ("lpc", "formant", "deemphasis", "mel_match")


def _output_settings(data: dict, path: Path) -> tuple[float, int, tuple[float, float] | None, float | None,
                                                      float | None]:
    """(de-emphasis coefficient, LPC order, formant postfilter's gammas, mel matching's largest gain,
    recommended temperature) from the optional ``postfilter`` (one filter or a list, checked against the model's
    config) and ``sampling``."""
    post = data.get("postfilter")
    filters = post if isinstance(post, list) else [] if post is None else [post]
    kinds = [f.get("type") if isinstance(f, dict) else None for f in filters]
    for kind in kinds:
        if kind not in POSTFILTERS:
            raise ModelError(f"{path} names an unknown postfilter {kind!r}; this runtime knows {', '.join(POSTFILTERS)}")
    if kinds != sorted(set(kinds), key=POSTFILTERS.index):
        raise ModelError(f"{path}: postfilters {kinds} must be distinct, in the order {', '.join(POSTFILTERS)}")
    given = dict(zip(kinds, filters))
    cfg = data["config"]
    alpha = given.get("deemphasis", {}).get("coefficient", 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
        raise ModelError(f"{path}: de-emphasis coefficient must be a number in [0, 1), got {alpha!r}")
    if float(alpha) != float(cfg.get("preemphasis", 0.0)):
        raise ModelError(f"{path}: postfilter coefficient {alpha} does not match the model's pre-emphasis "
                         f"{cfg.get('preemphasis')}")
    lpc_filter = given.get("lpc", {"order": 0, "gamma": cfg.get("lpc_gamma")})
    order = lpc_filter.get("order")
    if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= lpc.MAX_ORDER:
        raise ModelError(f"{path}: LPC order must be an integer in [0, {lpc.MAX_ORDER}], got {order!r}")
    if (order, lpc_filter.get("gamma")) != (cfg.get("lpc_order", 0), cfg.get("lpc_gamma")) or (order and not (
            cfg.get("n_mels", 0) > 0 and order < cfg.get("hop_length", 0))):
        raise ModelError(f"{path}: LPC postfilter (order {order}, gamma {lpc_filter.get('gamma')}) does not match the "
                         f"model's lpc_order {cfg.get('lpc_order', 0)}, lpc_gamma {cfg.get('lpc_gamma')}")
    formant = _formant(given.get("formant"), order, path)
    mel_match = _mel_match(given.get("mel_match"), cfg, path)
    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict):
        raise ModelError(f"{path}: sampling must be an object, got {sampling!r}")
    temperature = sampling.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature < 100):
        raise ModelError(f"{path}: sampling temperature must be a number in [0, 100), got {temperature!r}")
    return float(alpha), order, formant, mel_match, None if temperature is None else float(temperature)


def _formant(entry: dict | None, lpc_order: int, path: Path) -> tuple[float, float] | None:
    """The formant postfilter's (numerator, denominator) gammas: 0 <= numerator <= denominator < 1, on an LPC
    model only (it shapes with the frame's LPC filter)."""
    if entry is None:
        return None
    if not lpc_order:
        raise ModelError(f"{path}: the formant postfilter needs an LPC model (an lpc postfilter)")
    gammas = (entry.get("numerator"), entry.get("denominator"))
    if (any(isinstance(g, bool) or not isinstance(g, (int, float)) for g in gammas)
            or not 0 <= gammas[0] <= gammas[1] < 1):
        raise ModelError(f"{path}: the formant postfilter needs numbers 0 <= numerator <= denominator < 1, "
                         f"got {gammas[0]!r}, {gammas[1]!r}")
    return float(gammas[0]), float(gammas[1])


def _mel_match(entry: dict | None, cfg: dict, path: Path) -> float | None:
    """The mel-matching postfilter's largest gain in dB (0 < gain <= 60), on a mel-conditioned model whose frames
    overlap at least twice (2 * hop_length <= win_length <= n_fft: every sample under two windows)."""
    if entry is None:
        return None
    if not melmatch.frames_fit(cfg):
        raise ModelError(f"{path}: the mel-matching postfilter needs a mel-conditioned model with 2 * hop_length "
                         f"<= win_length <= n_fft (n_mels {cfg.get('n_mels')}, hop {cfg.get('hop_length')}, window "
                         f"{cfg.get('win_length')}, n_fft {cfg.get('n_fft')})")
    gain = entry.get("max_gain_db")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0 < gain <= melmatch.MAX_GAIN_DB:
        raise ModelError(f"{path}: the mel-matching postfilter needs max_gain_db, a number in "
                         f"(0, {melmatch.MAX_GAIN_DB:g}], got {gain!r}")
    return float(gain)


def cfg_dilations(cfg: dict) -> list[int]:
    """Dilation of every layer from a config dict (the manifest also lists them)."""
    per_stack, stacks = cfg["layers_per_stack"], cfg["stacks"]
    # Bounds before building anything: a damaged manifest must not ask for 2**31 layers (a hang, found by fuzzing).
    if not (isinstance(per_stack, int) and isinstance(stacks, int) and 1 <= per_stack <= 16 and 1 <= stacks <= 64):
        raise ModelError(f"implausible layer counts in the manifest: {stacks} stacks x {per_stack} layers")
    return [2**i for i in range(per_stack)] * stacks

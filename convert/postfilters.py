"""The runtime-only postfilters an export may add to a model's chain (edge_runtime/postfilter.py,
edge_runtime/melmatch.py): the manifest's ``postfilter`` list, the checks and command-line forms of their
settings, and the rewrite of an exported folder's chain (tools/set_postfilter.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from convert.errors import ExportError
from edge_runtime.files import write_text_atomic
from edge_runtime.manifest import MANIFEST, load_manifest
from edge_runtime.melmatch import MAX_GAIN_DB, frames_fit
from training.config import Config

FORMANT_HELP = ("The formant postfilter A(z/n)/A(z/d) of an LPC model as N,D (0 <= N <= D < 1; e.g. 0.7,0.75), "
                "run after the LPC synthesis filter (default: none).")


MEL_MATCH_HELP = ("The mel-matching postfilter's largest gain in dB (0 < DB <= 60; e.g. 12): each frame's mel bands "
                  "pulled to the conditioning log-mel, last in the chain (default: none).")


def postfilters(cfg: Config, formant: tuple[float, float] | None = None,
                mel_match: float | None = None) -> dict | list | None:
    """The manifest's ``postfilter``: what the runtime does to the model's samples, in order. An excitation
    model's samples go through the LPC synthesis filter, then, given ``formant`` (numerator and denominator
    gammas), the formant postfilter (edge_runtime/postfilter.py); a pre-emphasised model's are de-emphasised;
    given ``mel_match`` (the largest gain in dB), the audio's mel bands are pulled to the conditioning frames
    (edge_runtime/melmatch.py). One filter is written as an object (the form older runtimes read), more as a
    list."""
    filters = ([{"type": "lpc", "order": cfg.lpc_order, "gamma": cfg.lpc_gamma}] if cfg.lpc_order else []) + (
        [{"type": "formant", "numerator": formant[0], "denominator": formant[1]}] if formant else []) + (
        [{"type": "deemphasis", "coefficient": cfg.preemphasis}] if cfg.preemphasis else []) + (
        [{"type": "mel_match", "max_gain_db": mel_match}] if mel_match is not None else [])
    return filters[0] if len(filters) == 1 else filters or None


def check_formant(formant: tuple[float, float] | None, cfg: Config | None = None) -> None:
    """Raises ExportError for formant postfilter gammas the runtime would refuse (with ``cfg``: or a model it
    cannot shape, one without LPC)."""
    if formant is None:
        return
    if len(formant) != 2 or not 0 <= formant[0] <= formant[1] < 1:
        raise ExportError(f"the formant postfilter needs 0 <= numerator <= denominator < 1, got {formant}")
    if cfg is not None and not cfg.lpc_order:
        raise ExportError("the formant postfilter shapes with the LPC filter: this model has none (lpc_order 0)")


def check_mel_match(max_gain_db: float | None, cfg: Config | None = None) -> None:
    """Raises ExportError for a mel-matching gain the runtime would refuse (with ``cfg``: or a model without mel
    frames that overlap twice)."""
    if max_gain_db is None:
        return
    if not 0 < max_gain_db <= MAX_GAIN_DB:
        raise ExportError(f"the mel-matching postfilter needs 0 < max gain <= {MAX_GAIN_DB:g} dB, got {max_gain_db}")
    if cfg is not None and not frames_fit(cfg.to_dict()):
        raise ExportError("the mel-matching postfilter needs a mel-conditioned model with 2 * hop_length <= "
                          "win_length <= n_fft")


def parse_formant(text: str | None) -> tuple[float, float] | None:
    """``"NUMERATOR,DENOMINATOR"`` (the command lines' form; ``off`` or None: no formant postfilter), checked."""
    if text is None or text.strip().lower() == "off":
        return None
    try:
        formant = tuple(float(v) for v in text.split(","))
    except ValueError:
        formant = ()
    if len(formant) != 2:
        raise ExportError(f"the formant postfilter takes two gammas, NUMERATOR,DENOMINATOR (e.g. 0.7,0.75), "
                          f"got {text!r}")
    check_formant(formant)
    return formant


def parse_mel_match(text: str | None) -> float | None:
    """``"DB"`` (the command lines' form; ``off`` or None: no mel matching), checked."""
    if text is None or text.strip().lower() == "off":
        return None
    try:
        gain = float(text)
    except ValueError:
        raise ExportError(f"the mel-matching postfilter takes its largest gain in dB (e.g. 12), got {text!r}") from None
    check_mel_match(gain)
    return gain


KEEP = object()  # with_postfilters: leave this postfilter as the folder has it


def with_postfilters(folder: str | os.PathLike, formant=KEEP, mel_match=KEEP) -> dict:
    """An exported model folder's manifest with its postfilter chain rewritten for the given formant postfilter
    gammas and mel-matching gain (None: without it; :data:`KEEP`: as it is), checked (ExportError); nothing is
    written."""
    manifest = load_manifest(folder)
    data = dict(manifest.data)
    cfg = Config.from_dict(data["config"])
    formant = manifest.formant if formant is KEEP else formant
    mel_match = manifest.mel_match if mel_match is KEEP else mel_match
    check_formant(formant, cfg)
    check_mel_match(mel_match, cfg)
    data["postfilter"] = postfilters(cfg, formant, mel_match)
    return data


def write_manifest(folder: str | os.PathLike, data: dict) -> None:
    """Replaces a model folder's manifest in one rename (graphs and checksums untouched) and loads it back."""
    write_text_atomic(Path(folder) / MANIFEST, json.dumps(data, indent=1) + "\n")
    load_manifest(folder)


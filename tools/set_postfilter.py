"""Sets (or removes) the runtime-only postfilters of exported model folders, without re-exporting them.

    python tools/set_postfilter.py edge_runtime/models/default edge_runtime/models/pi --formant 0.7,0.75
    python tools/set_postfilter.py edge_runtime/models/default --mel-match 12
    python tools/set_postfilter.py runs/models/x --formant off --mel-match off

``--formant`` is the formant postfilter of an LPC model (edge_runtime/postfilter.py), ``--mel-match`` the
mel-matching postfilter (edge_runtime/melmatch.py); the one not given stays as it is. Only the manifest's
``postfilter`` chain changes (``convert/postfilters.py:with_postfilters``: the same chain an export with
``--formant-postfilter`` / ``--mel-match`` writes); the graphs, tables and checksums stay, and each manifest is
replaced in one rename and loaded back. A bad value or a folder that cannot take a filter is a one-line error
(exit 2), checked for every folder before any is changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.postfilters import KEEP, parse_formant, parse_mel_match, with_postfilters, write_manifest  # noqa: E402
from edge_runtime.errors import WavenetEdgeError, first_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="Exported model folders.")
    parser.add_argument("--formant", default=None, help="NUMERATOR,DENOMINATOR gammas (e.g. 0.7,0.75), or off.")
    parser.add_argument("--mel-match", default=None, help="The largest gain in dB (e.g. 12), or off.")
    args = parser.parse_args(argv)
    if args.formant is None and args.mel_match is None:
        print("error: give --formant and/or --mel-match", file=sys.stderr)
        return 2
    try:
        formant = KEEP if args.formant is None else parse_formant(args.formant)
        mel_match = KEEP if args.mel_match is None else parse_mel_match(args.mel_match)
        # every folder checked first: all or none are changed
        manifests = [(folder, with_postfilters(folder, formant, mel_match)) for folder in args.models]
        for folder, data in manifests:
            write_manifest(folder, data)
    except (OSError, WavenetEdgeError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    changed = {k: v for k, v in (("formant", formant), ("mel_match", mel_match)) if v is not KEEP}
    print(json.dumps({"models": [str(m) for m in args.models], **changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

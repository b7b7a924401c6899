"""Sets (or removes) the formant postfilter of exported LPC model folders, without re-exporting them.

    python tools/set_postfilter.py edge_runtime/models/default edge_runtime/models/pi --formant 0.7,0.75
    python tools/set_postfilter.py runs/models/x --formant off

Only the manifest's ``postfilter`` chain changes (``convert/export.py:set_formant``: the same chain an export with
``--formant-postfilter`` writes); the graphs, tables and checksums stay, and each manifest is replaced in one
rename and loaded back. A bad value or a folder without an LPC model is a one-line error (exit 2), checked for
every folder before any is changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.export import check_formant, parse_formant, set_formant  # noqa: E402
from edge_runtime.errors import WavenetEdgeError, first_line  # noqa: E402
from edge_runtime.manifest import load_manifest  # noqa: E402
from training.config import Config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="Exported model folders.")
    parser.add_argument("--formant", required=True, help="NUMERATOR,DENOMINATOR gammas (e.g. 0.7,0.75), or off.")
    args = parser.parse_args(argv)
    try:
        formant = parse_formant(args.formant)
        for folder in args.models:  # every folder first: all or none are changed
            check_formant(formant, Config.from_dict(load_manifest(folder).config))
        for folder in args.models:
            set_formant(folder, formant)
    except (OSError, WavenetEdgeError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    print(json.dumps({"models": [str(m) for m in args.models], "formant": formant}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

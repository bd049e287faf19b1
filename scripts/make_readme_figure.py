"""Make the README's picture, ``docs/example.png``: one location of generated sample data, every modality.

    python scripts/make_readme_figure.py [OUT_PNG] [--sample ID]

The data is ``ssl4eos12.synth``'s (generated scenes at a real location and its real Sentinel-2 dates), read
back through the builder exactly as a user would read the real files, then drawn by ``ssl4eos12.plot``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ssl4eos12
from ssl4eos12.plot import find_example
from ssl4eos12.synth import synthesize

OUT = Path(__file__).resolve().parent.parent / "docs" / "example.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(OUT))
    parser.add_argument("--sample", default="0000001", help="location id of the generated data (0000000-0000007)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = synthesize(Path(tmp) / "ssl4eo-s12", splits=("train",), files=1, samples=8, size=96)
        example = find_example(str(data_dir), args.sample, split="train")
        figure = ssl4eos12.plot(example)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.out, dpi=64)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

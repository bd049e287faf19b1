"""The README's main job on generated sample data: synthesize, load, stream, index and filter, plot, convert,
load the converted copy.

    python scripts/demo.py [WORK_DIR]      (default: ./demo)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from datasets import load_dataset

from ssl4eos12.synth import synthesize


def main(work_dir: str = "demo") -> None:
    work = Path(work_dir)
    data_dir = work / "ssl4eo-s12"
    if not data_dir.exists():
        synthesize(data_dir, files=2, samples=8, size=64)
        print(f"generated sample data in the real format under {data_dir}")

    streamed = load_dataset("ssl4eos12", "all", data_dir=str(data_dir), split="train", streaming=True)
    start = time.perf_counter()
    rows = list(streamed)
    print(f"streamed {len(rows)} locations of 'all' in {time.perf_counter() - start:.2f} s")
    first = rows[0]
    for name in ("S2L1C", "S2L2A", "S2RGB", "S1GRD"):
        print(f"  {name:6} {first[name].dtype} {first[name].shape}  times {first[f'{name}_time'][0]} ...")

    prepared = load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split="validation",
                            cache_dir=str(work / "cache"))
    print(f"prepared S2L2A validation: {prepared.num_rows} rows, features {list(prepared.features)}")

    from ssl4eos12.index import build_index

    build_index(str(data_dir), workers=1)
    clear = load_dataset("ssl4eos12", "all", data_dir=str(data_dir), split="train", streaming=True,
                         single_timestamp=True, max_cloud_fraction=0.05)
    print(f"indexed; {sum(1 for _ in clear)} (location, timestamp) examples of 'all' have at most 5 % clouds")
    try:
        import ssl4eos12

        ssl4eos12.plot(first).savefig(work / "example.png", dpi=64)
        print(f"plotted location {first['sample']} to {work / 'example.png'}")
    except ImportError as err:  # matplotlib is an optional extra
        print(f"no plot: {err}")

    out_dir = work / "published"
    from ssl4eos12.publish import convert

    convert(str(data_dir), str(out_dir), workers=2)
    published = load_dataset(str(out_dir), "S2L2A", split="validation", cache_dir=str(work / "cache"))
    print(f"converted to Arrow shards under {out_dir}: S2L2A validation has {published.num_rows} rows; "
          f"card at {out_dir / 'README.md'}")


if __name__ == "__main__":
    main(*sys.argv[1:])

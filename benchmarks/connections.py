#!/usr/bin/env python
"""How many parallel connections one file's fetch should use: ``remote.fetch`` of the generated S2L2A files from
nginx on 127.0.0.1, as is and with nginx's ``limit_rate`` per connection (a link where one connection is slower
than the link, as WAN links to the Hub are), for 1, 2, 4 and 8 connections.

    python benchmarks/connections.py [--rate MB_PER_S] [--repeat N]

Needs the data of ``benchmarks/run.py`` (run it once) and nginx. Prints seconds per file (best of N) and CPU.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100, help="per-connection limit in MB/s (default 100)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("nginx", HERE.parent / "tests" / "nginx.py")
    nginx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nginx)
    from ssl4eos12.prefetch import prefetch
    from ssl4eos12.sources.remote import FetchOptions, fetch

    data = HERE / "data"
    files = sorted((data / "val" / "S2L2A").glob("*.zarr.zip"))
    if not files:
        sys.exit("no data: run benchmarks/run.py once")
    size = sum(f.stat().st_size for f in files)
    print(f"{len(files)} files, {size / 1e6:.0f} MB; seconds per pass (best of {args.repeat}), MB/s, CPU s per pass")
    for label, rate in (("unlimited", None), (f"limit_rate {args.rate:g} MB/s per connection", int(args.rate * 1e6))):
        with nginx.NginxServer(data, limit_rate=rate) as srv:
            urls = [f"{srv.url}/{f.relative_to(data).as_posix()}" for f in files]
            for connections in (1, 2, 4, 8):
                options = FetchOptions(connections=connections)
                best, cpu_best = float("inf"), 0.0
                for _ in range(args.repeat):
                    start, cpu = time.perf_counter(), time.process_time()
                    with prefetch((functools.partial(fetch, u, options=options) for u in urls), ahead=0) as got:
                        for file in got:
                            file.close()
                    elapsed = time.perf_counter() - start
                    if elapsed < best:
                        best, cpu_best = elapsed, time.process_time() - cpu
                print(f"{label:40s} connections={connections}: {best:6.2f} s  {size / 1e6 / best:7.0f} MB/s  "
                      f"CPU {cpu_best:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

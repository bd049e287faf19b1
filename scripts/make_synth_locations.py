"""Write ``ssl4eos12/synth/locations.csv``: real SSL4EO-S12 locations and Sentinel-2 times for ``synth``.

    python scripts/make_synth_locations.py PATH/TO/val_metadata.parquet [ROWS]

Input: the authors' GeoParquet index of the validation split (``splits/val_metadata.parquet`` of
``embed2scale/SSL4EO-S12-v1.1-Zarr``, CC-BY-4.0). Output: one row per location, in a seeded random order
(a subset, plus every location within 10 degrees of the antimeridian, so that filters across it can be tested):
the location id, the centre of its footprint (mean of the four corners), its UTM EPSG code and its four
Sentinel-2 acquisition times.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent.parent / "ssl4eos12" / "synth" / "locations.csv"


def corners_centre(wkb: bytes) -> tuple[float, float]:
    """Centre of a WKB polygon's first four ring points (little-endian, one ring)."""
    (count,) = struct.unpack("<I", wkb[9:13])
    points = np.frombuffer(wkb[13:13 + 16 * count]).reshape(-1, 2)[:4]
    lon, lat = points.mean(axis=0)
    return float(lon), float(lat)


def main(path: str, rows: int = 512) -> None:
    table = pq.read_table(path, columns=["sample_id", "time_id", "time", "tile_crs", "geometry"]).to_pandas()
    table = table.sort_values(["sample_id", "time_id"])
    locations = []
    for sample, group in table.groupby("sample_id", sort=True):
        lon, lat = corners_centre(group.geometry.iloc[0])
        crs = int(group.tile_crs.mode().iloc[0])
        times = [t.strftime("%Y-%m-%dT%H:%M:%S") for t in group.time]
        locations.append((sample, lon, lat, crs, times))
    rng = np.random.default_rng(0)
    near_antimeridian = [i for i, loc in enumerate(locations) if abs(loc[1]) > 170]
    others = [i for i in range(len(locations)) if i not in set(near_antimeridian)]
    chosen = list(rng.choice(others, rows - len(near_antimeridian), replace=False))  # shuffled
    # spread over the table, two of them early: the first few locations of any generated tree (the test
    # fixtures) then include one across the antimeridian from the others
    for position, i in zip([2, 9, *range(50, rows, 50)], near_antimeridian):
        chosen.insert(position, i)
    lines = ["sample,center_lon,center_lat,crs,time_0,time_1,time_2,time_3"]
    for i in chosen:
        sample, lon, lat, crs, times = locations[i]
        lines.append(f"{sample},{lon:.6f},{lat:.6f},{crs},{','.join(times)}")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(chosen)} locations to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))

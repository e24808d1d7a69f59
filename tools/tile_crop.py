#!/usr/bin/env python3
"""Tile the real Xenium crop into a large sample, for end-to-end benchmarks.

    tile_crop.py --copies 43 --out DIR [--template-model M.safetensors]

Copies `tests/data/xenium_breast_spatialdata/` (23,691 transcripts, 132 nuclei)
side by side on a grid, each copy shifted by a whole number of crop extents,
so the sample keeps the crop's real density, gene mix and nucleus shapes;
43 copies give 1,018,713 transcripts. Transcript ids and cell ids are made
unique per copy. Writes `DIR/points.parquet` and
`DIR/sd_nucleus_boundaries.parquet` (spatialdata preset).

With `--template-model` (a weights file of the wanted sizes, e.g. the one
`cargo bench --bench forward` writes to `target/bench/tile200k.model.safetensors`,
segger_dev's default sizes), also writes `DIR/model.safetensors`: the
template's tensors with a fresh random token embedding over the crop's gene
panel, so every gene is known. Random weights are enough for timing.

Needs numpy, pyarrow and shapely.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from shapely import affinity

HERE = os.path.dirname(os.path.abspath(__file__))
CROP = os.path.join(HERE, "..", "tests", "data", "xenium_breast_spatialdata")
# Copy c's ids are offset by c times these, beyond the crop's own ranges.
TX_ID_STRIDE = 10**15
# The crop's cell ids are at most 80,769, so 10**5 keeps copies apart and lets
# 21,474 copies (509M transcripts) fit the int32 cell_id column.
CELL_ID_STRIDE = 10**5
CROP_MAX_CELL_ID = 80_769


def tile_points(copies: int, cols: int, step: tuple[float, float], path: str) -> tuple[int, list[str]]:
    """Writes the copies to `path` a row group at a time (a 100M-row sample
    never sits in memory whole) and returns the rows written and the genes."""
    points = pq.read_table(os.path.join(CROP, "points.parquet"))
    points = points.drop_columns([c for c in points.column_names if c.startswith("__")])
    no_cell = pa.compute.less(points["cell_id"], pa.scalar(0, pa.int32()))
    per_group = max(1, (1 << 20) // points.num_rows)
    rows, parts = 0, []
    with pq.ParquetWriter(path, points.schema) as writer:
        for c in range(copies):
            dx, dy = (c % cols) * step[0], (c // cols) * step[1]
            cols_ = {}
            for name in points.column_names:
                col = points[name]
                if name == "x":
                    col = pa.compute.add(col, pa.scalar(dx, pa.float32()))
                elif name == "y":
                    col = pa.compute.add(col, pa.scalar(dy, pa.float32()))
                elif name == "transcript_id":
                    col = pa.compute.add(col, pa.scalar(c * TX_ID_STRIDE, pa.uint64()))
                elif name == "cell_id":
                    # -1 (no cell) stays -1.
                    shifted = pa.compute.add(col, pa.scalar(c * CELL_ID_STRIDE, pa.int32()))
                    col = pa.compute.if_else(no_cell, col, shifted)
                cols_[name] = col
            parts.append(pa.table(cols_, schema=points.schema))
            if len(parts) == per_group or c + 1 == copies:
                table = pa.concat_tables(parts).combine_chunks()
                writer.write_table(table, row_group_size=1 << 20)
                rows += table.num_rows
                parts = []
    genes = sorted(set(points["feature_name"].combine_chunks().dictionary.to_pylist()))
    return rows, genes


def tile_nuclei(copies: int, cols: int, step: tuple[float, float]) -> pa.Table:
    path = os.path.join(CROP, "sd_nucleus_boundaries.parquet")
    nuclei = pq.read_table(path)
    geoms = shapely.from_wkb(nuclei["geometry"].to_numpy(zero_copy_only=False))
    ids = nuclei["cell_id"].to_numpy()
    wkb, cell = [], []
    for c in range(copies):
        dx, dy = (c % cols) * step[0], (c // cols) * step[1]
        wkb.extend(shapely.to_wkb(affinity.translate(g, dx, dy)) for g in geoms)
        cell.append(ids + c * CELL_ID_STRIDE)
    field = nuclei.schema.field("geometry")
    table = pa.table(
        {"geometry": pa.array(wkb, pa.binary()), "cell_id": pa.array(np.concatenate(cell), pa.int32())}
    )
    schema = pa.schema([field.with_type(pa.binary()), table.schema.field("cell_id")],
                       metadata={b"geo": nuclei.schema.metadata[b"geo"]})
    return table.cast(schema)


def read_safetensors(path: str) -> tuple[dict, dict, bytes]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    return header, meta, data


def write_model(template: str, genes: list[str], out: str, seed: int) -> None:
    header, meta, data = read_safetensors(template)
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise SystemExit(f"{template}: {name} is {info['dtype']}; the template must be F32")
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"])
    emb_name = next(n for n in tensors if "embedding" in n)
    emb = tensors[emb_name].shape[1]
    rng = np.random.default_rng(seed)
    tensors[emb_name] = rng.standard_normal((len(genes), emb)).astype("<f4")
    meta = dict(meta)
    meta["seggpu.genes"] = json.dumps(genes)
    new_header = {"__metadata__": dict(sorted(meta.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        new_header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                            "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hbytes = json.dumps(new_header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=43)
    ap.add_argument("--out", required=True)
    ap.add_argument("--template-model")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    cols = math.ceil(math.sqrt(a.copies))
    # The nucleus polygons span x 1516.6-1715.9, y 2744.2-2917.2 (GeoParquet bbox):
    # a step of one extent (rounded up) keeps copies from overlapping.
    step = (200.0, 175.0)
    if (a.copies - 1) * CELL_ID_STRIDE + CROP_MAX_CELL_ID > 2**31 - 1:
        raise SystemExit(f"--copies {a.copies}: the cell ids would not fit int32 (at most "
                         f"{(2**31 - 1 - CROP_MAX_CELL_ID) // CELL_ID_STRIDE + 1} copies)")
    rows, genes = tile_points(a.copies, cols, step, os.path.join(a.out, "points.parquet"))
    nuclei = tile_nuclei(a.copies, cols, step)
    pq.write_table(nuclei, os.path.join(a.out, "sd_nucleus_boundaries.parquet"))
    if a.template_model:
        write_model(a.template_model, genes, os.path.join(a.out, "model.safetensors"), a.seed)
    print(json.dumps({"out": a.out, "transcripts": rows, "nuclei": nuclei.num_rows,
                      "genes": len(genes), "copies": a.copies}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

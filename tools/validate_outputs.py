#!/usr/bin/env python3
"""Opens every output of `seggpu segment` with the Python tools people use and
checks the invariants seggpu promises (README, "Outputs").

    python tools/validate_outputs.py OUT_DIR [--min-inside 0.95]

Checks, for the outputs present in OUT_DIR:
- cell_boundaries.parquet opens with geopandas; its `geo` metadata is GeoParquet
  1.1 with a WKB Polygon column and a null CRS; every polygon is valid, a single
  Polygon with at least 4 coordinates and no holes; cell_boundaries.geojson holds
  the same cells and geometries;
- cells.h5ad opens with anndata.read_h5ad and cells.anndata.zarr with
  anndata.read_zarr (warnings as errors); X (cells × genes) equals the
  counts of segger_transcripts.parquet per cell and gene, for exactly the cells of
  cells.parquet with at least max(1, min_transcripts) transcripts; obs and var
  carry the promised columns;
- segmentation.zarr opens with spatialdata.read_zarr with no warning; its table
  annotates shapes/cell_boundaries by obs.cell_id (region categorical), its
  shapes are indexed by the same cells, its points are the transcripts table;
- the share of each cell's transcripts in or on its polygon, summed over cells,
  is at least --min-inside;
- xenium_ranger/ (`segment --xenium-ranger`; required with --xenium-ranger
  INPUT_TRANSCRIPTS, whose transcript_id values the CSV must list, each once):
  transcript_assignment.csv has one row per input transcript, `cell` is
  `cell-<N>` or empty exactly where `is_noise` is true; viz_polygons.geojson is a
  GeometryCollection of single valid Polygons (closed rings of >= 4 coordinates)
  with an integer `cell`; the CSV's cells, the polygons and cell_id_map.csv are
  one set, mapped onto the output cells, each holding exactly its transcripts of
  segger_transcripts; the polygons equal cell_boundaries.parquet's; README.txt
  holds the import command with `--units microns`.
Exits 1 with the failed checks listed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely

FAILURES: list[str] = []
PASSED = [0]


def check(ok: bool, what: str) -> bool:
    if ok:
        PASSED[0] += 1
    else:
        FAILURES.append(what)
        print(f"FAIL {what}")
    return ok


def read_table(out: Path, stem: str) -> pd.DataFrame | None:
    if (out / f"{stem}.parquet").exists():
        return pd.read_parquet(out / f"{stem}.parquet")
    if (out / f"{stem}.csv").exists():
        return pd.read_csv(out / f"{stem}.csv", keep_default_na=False, na_values=[""],
                           dtype={"segger_cell_id": str, "id": str})
    return None


def expected_cells(out: Path, cells: pd.DataFrame) -> pd.DataFrame:
    log = json.loads((out / "segmentation_log.json").read_text())
    min_tx = int(log["outputs"]["min_transcripts"])
    fragments = log["parameters"].get("fragments")
    if fragments:
        check(min_tx == max(1, int(fragments["min_transcripts"])),
              "log outputs.min_transcripts = max(1, min_transcripts)")
    return cells[cells["n_transcripts"] >= min_tx]


def check_polygons(out: Path, want_ids: list[str] | None):
    import geopandas as gpd

    path = out / "cell_boundaries.parquet"
    if not path.exists():
        return None
    meta = json.loads(pq.read_metadata(path).metadata[b"geo"])
    check(meta.get("version") == "1.1.0", f"geo version {meta.get('version')}")
    check(meta.get("primary_column") == "geometry", "geo primary_column")
    col = meta["columns"]["geometry"]
    check(col.get("encoding") == "WKB" and col.get("geometry_types") == ["Polygon"]
          and "crs" in col and col["crs"] is None, f"geo column metadata {col}")
    gdf = gpd.read_parquet(path)
    check(list(gdf.columns) == ["cell_id", "kind", "n_transcripts", "area", "geometry"],
          f"GeoParquet columns {list(gdf.columns)}")
    geoms = gdf.geometry.values
    check(bool(np.all(shapely.get_type_id(geoms) == 3)), "every geometry is a Polygon")
    check(bool(np.all(shapely.is_valid(geoms))), "every polygon is valid: "
          + "; ".join(shapely.is_valid_reason(geoms[~shapely.is_valid(geoms)])[:3]))
    check(bool(np.all(shapely.get_num_interior_rings(geoms) == 0)), "no holes")
    check(bool(np.all(shapely.get_num_coordinates(geoms) >= 4)), "rings of ≥ 4 coordinates")
    check(bool(np.all(shapely.area(geoms) > 0)), "positive areas")
    check(np.allclose(gdf["area"].to_numpy(), shapely.area(geoms), rtol=1e-9),
          "area column = polygon area")
    check(gdf["cell_id"].is_unique, "cell ids unique")
    if want_ids is not None:
        check(list(gdf["cell_id"]) == want_ids, "polygons list the output cells, in order")
    gj = out / "cell_boundaries.geojson"
    if check(gj.exists(), "cell_boundaries.geojson exists"):
        j = gpd.read_file(gj)
        check(list(j["cell_id"]) == list(gdf["cell_id"]), "GeoJSON lists the same cells")
        check(bool(np.all(shapely.equals_exact(j.geometry.values, geoms, tolerance=1e-9))),
              "GeoJSON geometries equal the GeoParquet ones")
    return gdf


def check_inside(tx: pd.DataFrame, gdf, min_inside: float):
    sel = tx[tx["segger_cell_id"].isin(set(gdf["cell_id"]))]
    poly = gdf.set_index("cell_id").geometry
    geoms = poly.loc[sel["segger_cell_id"].to_numpy()].values
    pts = shapely.points(sel["x"].to_numpy(), sel["y"].to_numpy())
    inside = shapely.intersects(geoms, pts)  # in or on
    share = float(inside.mean()) if len(inside) else 1.0
    print(f"transcripts in or on their cell's polygon: {inside.sum()} of {len(inside)} "
          f"({100 * share:.2f}%)")
    check(share >= min_inside, f"share in/on polygons {share:.4f} < {min_inside}")
    return share


def counts_from_transcripts(tx: pd.DataFrame, obs_names, var_names) -> np.ndarray:
    cell_pos = {c: i for i, c in enumerate(obs_names)}
    gene_pos = {g: j for j, g in enumerate(var_names)}
    sel = tx[tx["segger_cell_id"].isin(cell_pos)]
    m = np.zeros((len(obs_names), len(var_names)), dtype=np.int64)
    np.add.at(m, (sel["segger_cell_id"].map(cell_pos).to_numpy(),
                  sel["gene"].astype(str).map(gene_pos).to_numpy()), 1)
    return m


def check_anndata(adata, tx: pd.DataFrame | None, want: pd.DataFrame | None, name: str):
    obs_cols = ["kind", "n_transcripts", "centroid_x", "centroid_y", "nucleus_area",
                "cell_area", "region"]
    for c in obs_cols:
        check(c in adata.obs.columns, f"{name}: obs.{c}")
    check(isinstance(adata.obs["kind"].dtype, pd.CategoricalDtype), f"{name}: obs.kind categorical")
    check(isinstance(adata.obs["region"].dtype, pd.CategoricalDtype),
          f"{name}: obs.region categorical")
    for c in ["n_assigned", "n_unassigned", "n_filtered"]:
        check(c in adata.var.columns, f"{name}: var.{c}")
    check("spatial" in adata.obsm and adata.obsm["spatial"].shape == (adata.n_obs, 2),
          f"{name}: obsm['spatial']")
    check("seggpu" in adata.uns and "model_sha256" in adata.uns["seggpu"],
          f"{name}: uns['seggpu'] with model_sha256")
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    check(np.array_equal(X.sum(axis=1), adata.obs["n_transcripts"].to_numpy()),
          f"{name}: row sums of X = obs.n_transcripts")
    check(np.array_equal(X.sum(axis=0), adata.var["n_assigned"].to_numpy()),
          f"{name}: column sums of X = var.n_assigned")
    if want is not None:
        check(list(adata.obs_names) == list(want["id"]),
              f"{name}: obs = cells.parquet rows with ≥ min_transcripts ({adata.n_obs} vs {len(want)})")
        check(np.allclose(adata.obs["centroid_x"], want["centroid_x"], equal_nan=True),
              f"{name}: centroid_x as cells.parquet")
    if tx is not None:
        expected = counts_from_transcripts(tx, list(adata.obs_names), list(adata.var_names))
        check(np.array_equal(X.astype(np.int64), expected),
              f"{name}: X equals the counts of segger_transcripts")
        kept = tx[tx["assignment"] != "filtered"]
        per_gene = kept.groupby(kept["gene"].astype(str)).size()
        total = per_gene.reindex(adata.var_names, fill_value=0).to_numpy()
        check(np.array_equal(adata.var["n_assigned"].to_numpy() + adata.var["n_unassigned"].to_numpy(),
                             total), f"{name}: n_assigned + n_unassigned = kept per gene")


def check_xenium_ranger(out: Path, tx: pd.DataFrame | None, want: pd.DataFrame | None,
                        gdf, input_transcripts: Path | None):
    d = out / "xenium_ranger"
    if not check(d.is_dir(), f"{d} exists"):
        return
    csv = pd.read_csv(d / "transcript_assignment.csv", dtype=str, keep_default_na=False)
    check(list(csv.columns[:3]) == ["transcript_id", "cell", "is_noise"],
          f"transcript_assignment.csv header {list(csv.columns)}")
    digits = csv["transcript_id"].str.fullmatch(r"[0-9]+")
    if not check(bool(digits.all()), "transcript_id all unsigned integers"):
        return
    ids = csv["transcript_id"].astype(np.uint64)
    check(ids.is_unique, "transcript_id unique")
    if input_transcripts is not None:
        source = pd.read_parquet(input_transcripts, columns=["transcript_id"])["transcript_id"]
        check(set(ids) == set(source.astype(np.uint64)) and len(ids) == len(source),
              f"transcript_assignment.csv lists each transcript of {input_transcripts} once "
              f"({len(ids)} rows, {len(source)} in the input)")
    if tx is not None:
        check(np.array_equal(ids.to_numpy(), tx["transcript_id"].astype(np.uint64).to_numpy()),
              "transcript_assignment.csv rows = segger_transcripts rows")
    named = csv["cell"].str.fullmatch(r"cell-[1-9][0-9]*")
    check(bool((named | (csv["cell"] == "")).all()), "cell is cell-<N> or empty")
    check(bool(csv["is_noise"].isin(["true", "false"]).all()), "is_noise is true/false")
    check(bool(((csv["is_noise"] == "true") == (csv["cell"] == "")).all()),
          "is_noise true exactly where cell is empty")
    csv_cells = set(csv.loc[named, "cell"].str[5:].astype(int))

    gj = json.loads((d / "viz_polygons.geojson").read_text())
    check(gj.get("type") == "GeometryCollection", f"viz_polygons type {gj.get('type')}")
    geoms = gj.get("geometries", [])
    numbers = [g.get("cell") for g in geoms]
    check(all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in numbers),
          "viz_polygons cell is an integer >= 1")
    check(len(set(numbers)) == len(numbers), "one polygon per cell")
    shapes = {}
    bad = []
    for g in geoms:
        rings = g.get("coordinates", [])
        ring = rings[0] if len(rings) == 1 else []
        ok = (g.get("type") == "Polygon" and len(rings) == 1 and len(ring) >= 4
              and ring[0] == ring[-1])
        poly = shapely.Polygon(ring) if ok else None
        if not (ok and poly.is_valid and poly.area > 0):
            bad.append(g.get("cell"))
        else:
            shapes[g.get("cell")] = poly
    check(not bad, f"single valid closed Polygons of >= 4 coordinates (bad: {bad[:5]})")
    poly_cells = set(n for n in numbers if isinstance(n, int))
    check(csv_cells == poly_cells,
          f"the CSV's cells and the polygons are one set ({len(csv_cells)} vs {len(poly_cells)}; "
          f"{len(csv_cells - poly_cells)} without polygon, {len(poly_cells - csv_cells)} without "
          f"transcripts)")

    idmap = pd.read_csv(d / "cell_id_map.csv", dtype=str, keep_default_na=False)
    check(list(idmap.columns[:2]) == ["cell", "segger_cell_id"],
          f"cell_id_map.csv header {list(idmap.columns)}")
    check(idmap["cell"].is_unique and idmap["segger_cell_id"].is_unique, "cell_id_map one-to-one")
    check(set(idmap["cell"].str[5:].astype(int)) == poly_cells, "cell_id_map lists the polygons")
    if want is not None:
        check(set(idmap["segger_cell_id"]) == set(want["id"]) and len(idmap) == len(want),
              f"cell_id_map = the output cells ({len(idmap)} vs {len(want)})")
    if tx is not None:
        to_cell = dict(zip(idmap["segger_cell_id"], idmap["cell"]))
        expected = tx["segger_cell_id"].astype(str).map(to_cell).fillna("").to_numpy()
        check(np.array_equal(csv["cell"].to_numpy(), expected),
              "each cell-<N> holds exactly its transcripts of segger_transcripts")
    if gdf is not None:
        by_id = gdf.set_index("cell_id").geometry
        same = [shapes[int(c[5:])].equals_exact(by_id.loc[i], 1e-9)
                for c, i in zip(idmap["cell"], idmap["segger_cell_id"]) if int(c[5:]) in shapes]
        check(len(same) == len(idmap) and all(same),
              "viz_polygons = cell_boundaries.parquet polygons")
    readme = (d / "README.txt").read_text()
    absdir = d.resolve()
    for needle in ["xeniumranger import-segmentation", "--units microns",
                   f"--transcript-assignment {absdir / 'transcript_assignment.csv'}",
                   f"--viz-polygons {absdir / 'viz_polygons.geojson'}"]:
        check(needle in readme, f"README.txt holds {needle!r}")
    sizes = ", ".join(f"{p.name} {p.stat().st_size:,} B" for p in sorted(d.iterdir()))
    print(f"xenium_ranger: {len(csv)} transcripts ({int((csv['is_noise'] == 'true').sum())} noise), "
          f"{len(csv_cells)} cells, {len(geoms)} polygons; {sizes}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--min-inside", type=float, default=0.95)
    ap.add_argument("--xenium-ranger", type=Path, metavar="INPUT_TRANSCRIPTS",
                    help="require OUT/xenium_ranger and check its ids against this parquet file")
    args = ap.parse_args()
    out: Path = args.out

    tx = read_table(out, "segger_transcripts")
    cells = read_table(out, "cells")
    want = expected_cells(out, cells) if cells is not None else None
    want_ids = list(want["id"]) if want is not None else None
    print(f"{out}: {len(tx) if tx is not None else '-'} transcripts, "
          f"{len(want) if want is not None else '-'} output cells")

    gdf = check_polygons(out, want_ids)
    if gdf is not None and tx is not None:
        check_inside(tx, gdf, args.min_inside)

    if (out / "cells.h5ad").exists():
        import anndata

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            adata = anndata.read_h5ad(out / "cells.h5ad")
        check_anndata(adata, tx, want, "cells.h5ad")

    if (out / "cells.anndata.zarr").exists():
        import anndata

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            adata = anndata.read_zarr(out / "cells.anndata.zarr")
        check_anndata(adata, tx, want, "cells.anndata.zarr")

    if (out / "segmentation.zarr").exists():
        import spatialdata

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sdata = spatialdata.read_zarr(out / "segmentation.zarr")
        # Deprecations of library APIs (e.g. ome-zarr's Scaler, used inside
        # spatialdata) say nothing about the store; anything else does.
        for w in caught:
            if not issubclass(w.category, (DeprecationWarning, FutureWarning)):
                check(False, f"spatialdata.read_zarr warned: {w.category.__name__}: {w.message}")
        check(set(sdata.points) == {"transcripts"}, f"points {set(sdata.points)}")
        check(set(sdata.shapes) == {"cell_boundaries"}, f"shapes {set(sdata.shapes)}")
        check(set(sdata.tables) == {"table"}, f"tables {set(sdata.tables)}")
        table = sdata.tables["table"]
        attrs = table.uns.get("spatialdata_attrs", {})
        check(attrs.get("region") == "cell_boundaries" and attrs.get("region_key") == "region"
              and attrs.get("instance_key") == "cell_id", f"table spatialdata_attrs {attrs}")
        shapes = sdata.shapes["cell_boundaries"]
        check(list(shapes.index) == list(table.obs["cell_id"]),
              "shapes index = table obs.cell_id")
        check(bool(np.all(shapely.is_valid(shapes.geometry.values))), "shapes valid")
        check_anndata(table, tx, want, "segmentation.zarr table")
        pts = sdata.points["transcripts"].compute()
        if tx is not None:
            check(len(pts) == len(tx), "points = every transcript row")
            check(np.array_equal(pts["segger_cell_id"].astype(str).to_numpy(),
                                 tx["segger_cell_id"].astype(str).to_numpy()),
                  "points segger_cell_id = transcripts table")
        # The table joins its shapes (spatialdata's own linkage check).
        from spatialdata import get_element_annotators

        check("table" in get_element_annotators(sdata, "cell_boundaries"),
              "the table annotates cell_boundaries")

    if args.xenium_ranger is not None or (out / "xenium_ranger").exists():
        check_xenium_ranger(out, tx, want, gdf, args.xenium_ranger)

    print(f"validate_outputs: {PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())

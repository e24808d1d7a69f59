#!/usr/bin/env python3
"""Untiled reference of ``seggpu segment`` on a Xenium-style folder.

    pipeline_ref.py --xenium DIR --model M.safetensors --out OUT.parquet
        [--score-cut 0.5] [--fragment-cut CUT] [--k-tx 5 --dist-tx 5 --k-bd 4 --dist-bd 12]
        [--min-transcripts 5] [--no-fragments] [--dump-graph G.safetensors] [--threads T]

DIR holds transcripts.parquet (transcript_id, cell_id, overlaps_nucleus,
feature_name, x_location, y_location, z_location, qv) and
nucleus_boundaries.parquet (cell_id, vertex_x, vertex_y; one row per vertex,
grouped by cell).  The whole sample is one graph (no tiles): docs/contract.md §2–§9 with
the rules spelled out in tools/reference/README.md ("pipeline_ref.py").

Output: one row per input row, input order: transcript_id (as read),
segger_cell_id, score (float32, best score, null without a candidate),
assignment (cell | fragment | unassigned | filtered), filter_reason (null |
bad_coordinates | control | qv | unknown_gene), best_index (nucleus index of
the best candidate, null without one), second_best_score (float32, second
highest candidate score, null with fewer than two candidates), n_candidates.
The parquet's key-value metadata ``pipeline_ref.summary`` holds the JSON
summary that is also printed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import segger_ref as sr  # noqa: E402
from fragments_ref import format_id, fragments, knn_exact  # noqa: E402
from weights_io import bd_features_of, load_seggpu_weights, save_file  # noqa: E402

CONTROL_PREFIXES = ("NegControlProbe_", "antisense_", "NegControlCodeword", "BLANK_",
                    "DeprecatedCodeword_", "UnassignedCodeword_", "Intergenic_")
MIN_QV = 20.0
FILTER_REASONS = ("bad_coordinates", "control", "qv", "unknown_gene")


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------

def _as_str(col: pa.ChunkedArray) -> np.ndarray:
    """Any string-like / integer / dictionary column → object array of str (None for null)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if pa.types.is_floating(t):
        return np.array([None if v is None else format_id(v) for v in col.to_pylist()], dtype=object)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return np.array([None if v is None else v.decode("utf-8", "replace") for v in col.to_pylist()],
                        dtype=object)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        col = pc.cast(col, pa.string())
    return np.array(col.to_pylist(), dtype=object)


def _as_f64(col: pa.ChunkedArray) -> np.ndarray:
    """Numeric column → float64 (null → NaN)."""
    return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), np.float64)


def load_model(path: str):
    state, meta = load_seggpu_weights(path)
    return state, meta


def read_transcripts(xdir: str, genes: List[str]) -> Dict[str, object]:
    """Read and filter (docs/contract.md §2/§3; rule 1 of the README)."""
    t = pq.read_table(os.path.join(xdir, "transcripts.parquet"))
    n = t.num_rows
    x = _as_f64(t["x_location"])
    y = _as_f64(t["y_location"])
    z = _as_f64(t["z_location"]) if "z_location" in t.column_names else np.zeros(n)
    gene = _as_str(t["feature_name"])
    cell = _as_str(t["cell_id"]) if "cell_id" in t.column_names else np.full(n, None, object)
    if "overlaps_nucleus" in t.column_names:
        ovl = pc.fill_null(pc.cast(t["overlaps_nucleus"], pa.int64()), 0).to_numpy()
    else:
        ovl = np.zeros(n, np.int64)
    qv = _as_f64(t["qv"]) if "qv" in t.column_names else None

    vocab = {g: i for i, g in enumerate(genes)}
    token = np.array([vocab.get(g, -1) if g is not None else -1 for g in gene], np.int64)

    bad = ~(np.isfinite(x) & np.isfinite(y) & np.isfinite(z))
    control = np.array([g is not None and g.startswith(CONTROL_PREFIXES) for g in gene], bool)
    # kept iff qv >= 20: NaN / null qv is filtered (see README)
    low_qv = ~(qv >= MIN_QV) if qv is not None else np.zeros(n, bool)
    unknown = token < 0
    reason = np.full(n, None, dtype=object)
    for mask, name in ((unknown, "unknown_gene"), (low_qv, "qv"), (control, "control"),
                       (bad, "bad_coordinates")):  # reverse precedence: later overrides
        reason[mask] = name
    kept = reason == None  # noqa: E711
    kept = kept.astype(bool)
    tid_arrow = t["transcript_id"].combine_chunks() if "transcript_id" in t.column_names \
        else pa.array(np.arange(n, dtype=np.int64))
    tid = tid_arrow.to_numpy(zero_copy_only=False)
    if tid.dtype == object:
        tid = np.array([format_id(v) for v in tid.tolist()], dtype=object)
    return {
        "n": n, "pos": np.stack([x, y, z], axis=1), "token": token, "gene": gene,
        "cell_id": cell, "overlaps_nucleus": ovl, "kept": kept, "filter_reason": reason,
        "transcript_id": tid, "transcript_id_arrow": tid_arrow,
        "unknown_genes": sorted({g for g, tk, b, c in zip(gene, token, bad, control)
                                 if tk < 0 and not b and not c and g is not None}),
    }


def _clean_ring(xy: np.ndarray) -> np.ndarray:
    """Drop the repeated closing vertex and consecutive duplicate vertices."""
    if len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
        xy = xy[:-1]
    if len(xy) > 1:
        keep = np.ones(len(xy), bool)
        keep[1:] = np.any(xy[1:] != xy[:-1], axis=1)
        xy = xy[keep]
    # a ring that was closed more than once / ends on its first vertex again
    while len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
        xy = xy[:-1]
    return xy


def read_nuclei(xdir: str, bd_features: str = "props") -> Dict[str, object]:
    """Nuclei sorted by cell_id (rule 2): ids, centroid [N,2] f64, features [N,4] f32."""
    t = pq.read_table(os.path.join(xdir, "nucleus_boundaries.parquet"))
    cid = _as_str(t["cell_id"])
    vx = _as_f64(t["vertex_x"])
    vy = _as_f64(t["vertex_y"])
    groups: Dict[str, List[int]] = {}
    for i, c in enumerate(cid):
        if c is None:
            continue
        groups.setdefault(c, []).append(i)
    ids, rings, skipped = [], [], []
    for c in sorted(groups):
        rows = np.asarray(groups[c])
        xy = np.stack([vx[rows], vy[rows]], axis=1)
        if not np.isfinite(xy).all():
            skipped.append((c, "non-finite vertex"))
            continue
        xy = _clean_ring(xy)
        if len(np.unique(xy, axis=0)) < 3:
            skipped.append((c, "fewer than 3 distinct vertices"))
            continue
        poly = shapely.Polygon(xy)
        if poly.area == 0:
            skipped.append((c, "zero area"))
            continue
        ids.append(c)
        rings.append(poly)
    polys = np.array(rings, dtype=object)
    nb = len(ids)
    if nb:
        cen = shapely.centroid(polys)
        centroid = np.stack([shapely.get_x(cen), shapely.get_y(cen)], axis=1).astype(np.float64)
        area = shapely.area(polys)
        convexity = shapely.area(shapely.convex_hull(polys)) / area
        elong = shapely.area(shapely.oriented_envelope(polys)) / shapely.area(shapely.envelope(polys))
        r = shapely.minimum_bounding_radius(polys)
        circ = area / (r * r)
        feats = np.stack([area, convexity, elong, circ], axis=1).astype(np.float32)
    else:
        centroid = np.zeros((0, 2))
        feats = np.zeros((0, 4), np.float32)
    if bd_features == "zeros":
        feats = np.zeros_like(feats)
    return {"ids": ids, "centroid": centroid, "features": feats, "skipped": skipped,
            "n_polygons": len(groups)}


# ---------------------------------------------------------------------------
# graphs, forward, scoring
# ---------------------------------------------------------------------------

def build_graph(tx, nuc, k_tx, dist_tx, k_bd, dist_bd):
    kept_idx = np.nonzero(tx["kept"])[0]
    pos = tx["pos"][kept_idx]
    nk = len(kept_idx)
    nb = knn_exact(pos, pos, k_tx, dist_tx, inclusive=True)
    src = np.repeat(np.arange(nk, dtype=np.int64), k_tx)
    dst = nb.reshape(-1)
    has = dst >= 0
    edge_tt = np.stack([src[has], dst[has]])
    # belongs
    id_to_bd = {c: i for i, c in enumerate(nuc["ids"])}
    cell = tx["cell_id"][kept_idx]
    ovl = tx["overlaps_nucleus"][kept_idx]
    bd_of = np.array([id_to_bd.get(c, -1) if (o == 1 and c is not None) else -1
                      for c, o in zip(cell, ovl)], np.int64)
    bsel = np.nonzero(bd_of >= 0)[0]
    edge_tb = np.stack([bsel.astype(np.int64), bd_of[bsel]])
    # receptive field (2-D, strict)
    rf = knn_exact(nuc["centroid"], pos[:, :2], k_bd, dist_bd, inclusive=False)
    return kept_idx, nb, edge_tt, edge_tb, rf


def second_best(scores: torch.Tensor) -> np.ndarray:
    s = scores.numpy().astype(np.float32)
    if s.shape[1] < 2:
        return np.full(s.shape[0], np.nan, np.float32)
    s = np.where(np.isnan(s), -np.inf, s)
    s = -np.sort(-s, axis=1)
    out = s[:, 1]
    return np.where(np.isfinite(out), out, np.nan).astype(np.float32)


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(a) -> Dict[str, object]:
    times = {}
    t_all = time.time()
    t0 = time.time()
    state, meta = load_model(a.model)
    genes = json.loads(meta["seggpu.genes"])
    bdf = bd_features_of(meta)
    model = sr.model_from_state(state)
    tx = read_transcripts(a.xenium, genes)
    nuc = read_nuclei(a.xenium, bdf)
    times["read"] = time.time() - t0

    t0 = time.time()
    kept_idx, tx_tx, edge_tt, edge_tb, rf = build_graph(tx, nuc, a.k_tx, a.dist_tx, a.k_bd, a.dist_bd)
    times["graphs"] = time.time() - t0

    t0 = time.time()
    tok = torch.from_numpy(tx["token"][kept_idx].copy())
    bd_x = torch.from_numpy(nuc["features"].copy())
    e_tt = torch.from_numpy(edge_tt.copy())
    e_tb = torch.from_numpy(edge_tb.copy())
    z_tx, z_bd = sr.forward_hetero(model, tok, bd_x, e_tt, e_tb)
    rf_t = torch.from_numpy(rf.copy())
    scores, best_s, best_i = sr.score(z_tx, z_bd, rf_t)
    times["forward_score"] = time.time() - t0
    if a.dump_graph:
        save_file({"tx_token": tok, "bd_x": bd_x, "edge_tx_tx": e_tt, "edge_tx_bd": e_tb,
                   "rf_index": rf_t, "tx_pos": torch.from_numpy(tx["pos"][kept_idx].astype(np.float32)),
                   "bd_pos": torch.from_numpy(nuc["centroid"].astype(np.float32)),
                   "kept_row": torch.from_numpy(kept_idx.astype(np.int64)),
                   "z_tx": z_tx.contiguous(), "z_bd": z_bd.contiguous(),
                   "scores": scores.contiguous(), "best_score": best_s.contiguous(),
                   "best_index": best_i.contiguous()},
                  a.dump_graph, metadata={"pipeline_ref.model": os.path.basename(a.model)})

    best_s = best_s.numpy().astype(np.float32)
    best_i = best_i.numpy().astype(np.int64)
    sec = second_best(scores)
    n_cand = (rf >= 0).sum(axis=1).astype(np.int32)
    cut = np.float32(a.score_cut)
    has_cand = best_i >= 0
    assigned = has_cand & (best_s >= cut)

    n = tx["n"]
    seg = np.full(n, "UNASSIGNED", dtype=object)
    assignment = np.where(tx["kept"], "unassigned", "filtered").astype(object)
    score_col = np.full(n, np.nan, np.float32)
    best_col = np.full(n, -1, np.int64)
    sec_col = np.full(n, np.nan, np.float32)
    ncand_col = np.zeros(n, np.int32)
    score_col[kept_idx] = np.where(has_cand, best_s, np.nan)
    best_col[kept_idx] = best_i
    sec_col[kept_idx] = sec
    ncand_col[kept_idx] = n_cand
    ids = np.array(nuc["ids"], dtype=object)
    rows_cell = kept_idx[assigned]
    seg[rows_cell] = ids[best_i[assigned]] if len(ids) else []
    assignment[rows_cell] = "cell"

    frag_info = None
    t0 = time.time()
    if not a.no_fragments:
        fcut = a.score_cut if a.fragment_cut is None else a.fragment_cut
        # fragment neighbours = the tx–tx lists above without self (docs/contract.md §5)
        labels, frag_info = fragments(tx["pos"][kept_idx], tx["token"][kept_idx],
                                      tx["transcript_id"][kept_idx], state["tx_embedding.tx.weight"].numpy(),
                                      ~assigned, a.k_tx, a.dist_tx, fcut, a.min_transcripts, tx_tx=tx_tx)
        fr = np.array([lab is not None for lab in labels], bool)
        rows_frag = kept_idx[fr]
        seg[rows_frag] = labels[fr]
        assignment[rows_frag] = "fragment"
    times["fragments"] = time.time() - t0

    t0 = time.time()
    nanmask = np.isnan(score_col)
    table = pa.table({
        "transcript_id": tx["transcript_id_arrow"],
        "segger_cell_id": pa.array(seg.tolist(), pa.string()),
        "score": pa.array(score_col, pa.float32(), mask=nanmask),
        "assignment": pa.array(assignment.tolist(), pa.string()),
        "filter_reason": pa.array(tx["filter_reason"].tolist(), pa.string()),
        "best_index": pa.array(best_col, pa.int64(), mask=best_col < 0),
        "second_best_score": pa.array(sec_col, pa.float32(), mask=np.isnan(sec_col)),
        "n_candidates": pa.array(ncand_col, pa.int32()),
    })

    counts = {k: int((assignment == k).sum()) for k in ("cell", "fragment", "unassigned", "filtered")}
    reasons = {r: int((tx["filter_reason"] == r).sum()) for r in FILTER_REASONS}
    kept_scores = best_s[has_cand]
    two = ~np.isnan(sec)
    near = {
        # the cut decides within rounding
        "abs(best-cut)<1e-6": int((np.abs(kept_scores - cut) < 1e-6).sum()),
        # assigned, and the runner-up is within 1e-6: the nucleus may flip
        "assigned_best-second<1e-6": int((assigned & two & ((best_s - sec) < 1e-6)).sum()),
        "assigned_exact_tie": int((assigned & two & (best_s == sec)).sum()),
        "any_best-second<1e-6": int((two & ((best_s - sec) < 1e-6)).sum()),
    }
    summary = {
        "xenium": a.xenium,
        "model": a.model,
        "model_sha256": sha256_of(a.model),
        "bd_features": bdf,
        "arch": sr.infer_arch(state).as_dict(),
        "params": {"score_cut": a.score_cut, "fragment_cut": a.score_cut if a.fragment_cut is None else a.fragment_cut,
                   "k_tx": a.k_tx, "dist_tx": a.dist_tx, "k_bd": a.k_bd, "dist_bd": a.dist_bd,
                   "min_transcripts": a.min_transcripts, "fragments": not a.no_fragments},
        "n_rows": int(n),
        "n_kept": int(len(kept_idx)),
        "filtered_by_reason": reasons,
        "unknown_genes": {"count": len(tx["unknown_genes"]), "first": tx["unknown_genes"][:20]},
        "nuclei": {"polygons": nuc["n_polygons"], "used": len(nuc["ids"]), "skipped": len(nuc["skipped"]),
                   "skipped_first": nuc["skipped"][:20]},
        "edges": {"tx_tx": int(edge_tt.shape[1]), "belongs": int(edge_tb.shape[1]),
                  "rf": int((rf >= 0).sum())},
        "no_candidate": int((~has_cand).sum()),
        "counts": counts,
        "cells_with_transcripts": int(len(set(seg[rows_cell].tolist()))),
        "near_ties": near,
        "fragments": frag_info,
        "seconds": None,
    }
    pq_meta = None
    times["write"] = time.time() - t0
    times["total"] = time.time() - t_all
    summary["seconds"] = {k: round(v, 3) for k, v in times.items()}
    # the file's copy leaves out the timings, so that the output is byte-reproducible
    pq_meta = {"pipeline_ref.summary": json.dumps({k: v for k, v in summary.items() if k != "seconds"})}
    table = table.replace_schema_metadata(pq_meta)
    tmp = a.out + ".tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, a.out)
    return summary


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xenium", required=True, help="Xenium-style folder")
    ap.add_argument("--model", required=True, help="seggpu weights file")
    ap.add_argument("--out", required=True, help="output parquet")
    ap.add_argument("--score-cut", type=float, default=0.5)
    ap.add_argument("--fragment-cut", type=float, default=None, help="default: the score cut")
    ap.add_argument("--k-tx", type=int, default=5)
    ap.add_argument("--dist-tx", type=float, default=5.0)
    ap.add_argument("--k-bd", type=int, default=4)
    ap.add_argument("--dist-bd", type=float, default=12.0)
    ap.add_argument("--min-transcripts", type=int, default=5)
    ap.add_argument("--no-fragments", action="store_true")
    ap.add_argument("--dump-graph", default=None,
                    help="also write the graph + z + scores (forward_ref.py graph format) here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    summary = run(a)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Reference for seggpu's fragments (docs/contract.md §9) and the exact kNN tie rule (docs/contract.md §5).

As a library (used by pipeline_ref.py):

* ``knn_exact(points, queries, k, cap, inclusive)`` -- k nearest
  neighbours with the seggpu tie rule: squared distances in float64,
  ((dx*dx + dy*dy) + dz*dz), from the coordinates as read; ties in distance go
  to the lower point index; −1 padded.  cKDTree only proposes candidates; every
  row whose k-th neighbour could be tied with a point cKDTree did not return
  is redone exhaustively with ``query_ball_point``.
* ``fragments(...)`` -- fragment neighbours = the tx–tx lists over all kept
  transcripts (k_tx nearest, itself included) with itself removed; cosine
  similarity of L2-normalised gene embeddings (float32); the 65,536-bin
  histogram median over every kept transcript's slots, assigned or not;
  edges whose two ends are both unassigned; scipy connected components;
  ``fragment-<smallest transcript_id>`` ids.

As a command, it recomputes the fragments of an existing output (for example
seggpu's ``segger_transcripts.parquet``) from that output's own cell
assignments, so fragment partitions can be compared exactly even where the
cell assignment differs on a few rows:

    fragments_ref.py [--xenium DIR] --model M.safetensors --assignments OUT.parquet \\
        --out FRAG.parquet [--fragment-cut 0.5] [--k-tx 5 --dist-tx 5 --min-transcripts 5]

The rows with assignment "cell" in OUT.parquet stay cells; every other kept
row is a fragment candidate.  Kept rows, positions and genes come from DIR
(filter rules as in pipeline_ref.py) or, without ``--xenium``, from OUT's own
x, y, z, gene and filter_reason columns (any input format seggpu reads).
Writes transcript_id, segger_cell_id, assignment, filter_reason and (when OUT
has it) score, one row per OUT row.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Optional

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

HISTOGRAM_BINS = 1 << 16


# ---------------------------------------------------------------------------
# exact kNN with the tie rule
# ---------------------------------------------------------------------------

def _sq_dist(points: np.ndarray, idx: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Squared distances in float64 summed in rstar's order ((dx² + dy²) + dz²)."""
    diff = points[idx] - queries[:, None, :]
    d2 = diff[..., 0] * diff[..., 0]
    for c in range(1, points.shape[1]):
        d2 = d2 + diff[..., c] * diff[..., c]
    return d2


def _select(idx: np.ndarray, d2: np.ndarray, ok: np.ndarray, k: int):
    """Per row: the k entries of ok with the smallest (d2, idx); −1 padded."""
    big = np.iinfo(np.int64).max
    kd = np.where(ok, d2, np.inf)
    ki = np.where(ok, idx, big)
    order = np.lexsort((ki, kd), axis=-1)
    si = np.take_along_axis(ki, order, axis=-1)[:, :k]
    sd = np.take_along_axis(kd, order, axis=-1)[:, :k]
    if si.shape[1] < k:
        pad = k - si.shape[1]
        si = np.concatenate([si, np.full((si.shape[0], pad), big, np.int64)], axis=1)
        sd = np.concatenate([sd, np.full((sd.shape[0], pad), np.inf)], axis=1)
    return np.where(si == big, -1, si).astype(np.int64), sd


def knn_exact(points: np.ndarray, queries: np.ndarray, k: int, cap: Optional[float],
              inclusive: bool = True, extra: int = 4, tree: Optional[cKDTree] = None) -> np.ndarray:
    """[m, k] int64 indices into ``points`` of each query's k nearest points.

    ``cap``: distance limit (None: none); ``inclusive``: d ≤ cap, else d < cap
    (compared as d² against cap², in float64).  Ties in distance →
    lower point index.
    """
    points = np.ascontiguousarray(points, dtype=np.float64)
    queries = np.ascontiguousarray(queries, dtype=np.float64)
    n, m = len(points), len(queries)
    out = np.full((m, k), -1, np.int64)
    if n == 0 or m == 0 or k == 0:
        return out
    cap2 = math.inf if cap is None else float(cap) * float(cap)
    ub = math.inf if cap is None else float(cap) * (1 + 1e-6) + 1e-9
    if tree is None:
        tree = cKDTree(points)
    K = min(n, k + extra)

    def admit(d2):
        return d2 <= cap2 if inclusive else d2 < cap2

    _, idx = tree.query(queries, k=K, distance_upper_bound=ub)
    idx = np.asarray(idx).reshape(m, K).astype(np.int64)
    found = idx < n
    safe = np.where(found, idx, 0)
    d2 = _sq_dist(points, safe, queries)
    ok = found & admit(d2)
    sel, sel_d2 = _select(idx, d2, ok, k)

    # Rows where a point not returned by cKDTree could still belong in the
    # answer (tie with the k-th, or the candidate list was cut at K inside
    # the cap): redo them exhaustively.
    full = found.all(axis=1) if K < n else np.zeros(m, bool)
    n_ok = ok.sum(axis=1)
    thr = np.where(n_ok >= k, sel_d2[:, k - 1], cap2)
    max_found = np.where(found, d2, -np.inf).max(axis=1)
    redo = np.nonzero(full & ~(max_found > thr * (1 + 1e-9) + 1e-300))[0]
    for q in redo:
        r = math.sqrt(thr[q]) if math.isfinite(thr[q]) else math.inf
        if math.isinf(r):
            cand = np.arange(n, dtype=np.int64)
        else:
            cand = np.asarray(tree.query_ball_point(queries[q], r * (1 + 1e-6) + 1e-9), np.int64)
        cd2 = _sq_dist(points, cand[None, :], queries[q:q + 1])[0] if len(cand) else np.zeros(0)
        cok = admit(cd2)
        s, _ = _select(cand[None, :], cd2[None, :], cok[None, :], k)
        sel[q] = s[0]
    return sel


# ---------------------------------------------------------------------------
# fragments
# ---------------------------------------------------------------------------

def unit_embeddings(table: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float32, the way seggpu does it:
    norm = sqrt(sequential float32 sum of squares), v / norm; zero rows stay 0."""
    t = np.asarray(table, np.float32)
    s = np.zeros(t.shape[0], np.float32)
    for c in range(t.shape[1]):
        s = s + t[:, c] * t[:, c]
    norm = np.sqrt(s).astype(np.float32)
    safe = np.where(norm > 0, norm, np.float32(1))
    return np.where(norm[:, None] > 0, t / safe[:, None], np.float32(0)).astype(np.float32)


def gene_similarity(unit: np.ndarray) -> np.ndarray:
    """[V, V] float32 cosine, dot products accumulated sequentially in float32."""
    V, E = unit.shape
    sim = np.zeros((V, V), np.float32)
    for c in range(E):
        sim = sim + np.outer(unit[:, c], unit[:, c]).astype(np.float32)
    return sim


def similarity_bin(s: np.ndarray) -> np.ndarray:
    b = np.floor((np.asarray(s, np.float32).astype(np.float64) + 1.0) / 2.0 * HISTOGRAM_BINS)
    return np.clip(b, 0, HISTOGRAM_BINS - 1).astype(np.int64)


def histogram_median(s: np.ndarray) -> Optional[float]:
    """Lower edge of the bin that holds the lower median (0-based rank (n−1)//2)."""
    n = len(s)
    if n == 0:
        return None
    hist = np.bincount(similarity_bin(s), minlength=HISTOGRAM_BINS)
    rank = (n - 1) // 2
    b = int(np.argmax(np.cumsum(hist) > rank))
    return float(np.float32(-1.0 + b * 2.0 / HISTOGRAM_BINS))


def format_id(v) -> str:
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "replace")
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def fragment_neighbours(tx_tx: np.ndarray) -> np.ndarray:
    """The tx–tx lists ([n, k], self included, −1 padded) with each row's own
    index removed (set to −1): the fragment neighbours of docs/contract.md §5.

    The own entry is removed only where it is present.  A transcript with at
    least k lower-index duplicates at distance 0 is not among its own k
    nearest (ties go to the lower index), so it keeps all k others.
    """
    own = np.arange(len(tx_tx), dtype=np.int64)[:, None]
    return np.where(tx_tx == own, -1, tx_tx)


def fragments(pos: np.ndarray, tokens: np.ndarray, tids, emb_table: np.ndarray,
              unassigned: np.ndarray, k_tx: int, dist_tx: Optional[float], cut: float,
              min_transcripts: int, tx_tx: Optional[np.ndarray] = None):
    """Fragments (docs/contract.md §9) of the kept transcripts ``pos``/``tokens``/``tids``
    (all of them, in transcript-index order); ``unassigned[i]``: i is a
    fragment candidate (no cell).

    The neighbour graph is the tx–tx graph over all kept transcripts
    (``tx_tx``, [n, k_tx] with self, as ``knn_exact(pos, pos, k_tx, dist_tx)``
    gives it; computed when None) with self removed.  The median is taken
    over every non-empty slot of every kept transcript; the edges are the
    slots whose two ends are both unassigned.

    Returns (labels [n] object array: fragment id, or None for cells and for
    candidates left unassigned; info dict).
    """
    n = len(pos)
    unassigned = np.asarray(unassigned, bool)
    if tx_tx is None:
        tx_tx = knn_exact(pos, pos, k_tx, dist_tx, inclusive=True)
    nb = fragment_neighbours(np.asarray(tx_tx, np.int64))
    self_absent = int((~(tx_tx == np.arange(n)[:, None]).any(axis=1)).sum()) if n else 0
    sim_vv = gene_similarity(unit_embeddings(emb_table))
    tok = np.asarray(tokens, np.int64)
    src = np.repeat(np.arange(n, dtype=np.int64), nb.shape[1])
    dst = nb.reshape(-1)
    has = dst >= 0
    src, dst = src[has], dst[has]
    sim = sim_vv[tok[src], tok[dst]]
    m_hist = histogram_median(sim)
    m_exact = float(np.median(sim.astype(np.float64))) if len(sim) else None
    thr = np.float32(cut) if m_hist is None else max(np.float32(m_hist), np.float32(cut))
    both = unassigned[src] & unassigned[dst]
    keep = both & (sim >= thr)

    candidates = np.nonzero(unassigned)[0]
    nc = len(candidates)
    local = np.full(n, -1, np.int64)
    local[candidates] = np.arange(nc, dtype=np.int64)
    ks, kd = local[src[keep]], local[dst[keep]]
    g = coo_matrix((np.ones(len(ks), np.int8), (ks, kd)), shape=(nc, nc)).tocsr()
    n_comp, comp = connected_components(g, directed=False)
    sizes = np.bincount(comp, minlength=n_comp)
    labels = np.full(n, None, dtype=object)
    big = np.nonzero(sizes >= min_transcripts)[0]
    tids_c = np.asarray(tids, dtype=object)[candidates] if not isinstance(tids, np.ndarray) \
        else tids[candidates]
    n_frag_tx = 0
    if len(big):
        inbig = np.isin(comp, big)
        members = np.nonzero(inbig)[0]
        # smallest transcript_id per component
        order = np.argsort(comp[members], kind="stable")
        members = members[order]
        cm = comp[members]
        starts = np.r_[0, np.nonzero(np.diff(cm))[0] + 1]
        ends = np.r_[starts[1:], len(members)]
        for s, e in zip(starts, ends):
            mem = members[s:e]
            vals = tids_c[mem]
            try:
                mn = min(vals.tolist())
            except TypeError:
                mn = min(format_id(v) for v in vals)
            labels[candidates[mem]] = f"fragment-{format_id(mn)}"
        n_frag_tx = int(inbig.sum())
    info = {
        "n_candidates": int(nc),
        "n_similarities": int(len(sim)),
        "n_self_absent": self_absent,
        "n_edges": int(both.sum()),
        "median_hist": m_hist,
        "median_exact": m_exact,
        "threshold": float(thr),
        "n_kept_edges": int(keep.sum()),
        "n_components": int(n_comp),
        "n_fragments": int(len(big)),
        "n_fragment_transcripts": n_frag_tx,
    }
    return labels, info


# ---------------------------------------------------------------------------
# command line: fragments of an existing output's unassigned set
# ---------------------------------------------------------------------------

def _inputs_from_output(other, genes):
    """Kept transcripts as the output itself records them: x, y, z, gene and
    filter_reason columns (seggpu's segger_transcripts.parquet has them)."""
    import pyarrow.compute as pc
    need = [c for c in ("x", "y", "z", "gene", "filter_reason") if c not in other.column_names]
    if need:
        raise SystemExit(f"error: the assignments file lacks column(s) {', '.join(need)}; "
                         "give the input folder with --xenium instead")
    pos = np.stack([np.asarray(pc.cast(other[c], "float64").to_numpy(zero_copy_only=False), np.float64)
                    for c in ("x", "y", "z")], axis=1)
    reason = np.array(other["filter_reason"].to_pylist(), dtype=object)
    kept = np.array([r is None for r in reason], bool)
    vocab = {g: i for i, g in enumerate(genes)}
    gene = other["gene"].to_pylist()
    token = np.array([vocab.get(g, -1) for g in gene], np.int64)
    unknown = kept & (token < 0)
    if unknown.any():
        first = sorted({gene[i] for i in np.nonzero(unknown)[0]})[:5]
        raise SystemExit(f"error: {int(unknown.sum())} kept rows have a gene outside the model's "
                         f"vocabulary (first: {first})")
    tid_arrow = other["transcript_id"].combine_chunks()
    tid = tid_arrow.to_numpy(zero_copy_only=False)
    if tid.dtype == object:
        tid = np.array([format_id(v) for v in tid.tolist()], dtype=object)
    return {"pos": pos, "token": token, "kept": kept, "filter_reason": reason,
            "transcript_id": tid, "transcript_id_arrow": tid_arrow}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xenium", default=None,
                    help="the input folder (pipeline_ref.py's reader and filters); without it, "
                         "positions, genes and filters come from the assignments file's own columns")
    ap.add_argument("--model", required=True)
    ap.add_argument("--assignments", required=True, help="an output parquet (transcript_id, assignment, ...)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--fragment-cut", type=float, default=0.5)
    ap.add_argument("--k-tx", type=int, default=5)
    ap.add_argument("--dist-tx", type=float, default=5.0)
    ap.add_argument("--min-transcripts", type=int, default=5)
    a = ap.parse_args(argv)

    import pyarrow as pa
    import pyarrow.parquet as pq
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import pipeline_ref as pr

    t0 = time.time()
    state, meta = pr.load_model(a.model)
    genes = json.loads(meta["seggpu.genes"])
    other = pq.read_table(a.assignments)
    if a.xenium is None:
        tx = _inputs_from_output(other, genes)
        rows = np.arange(other.num_rows, dtype=np.int64)
    else:
        tx = pr.read_transcripts(a.xenium, genes)
        tid_to_row = {format_id(v): i for i, v in enumerate(other["transcript_id"].to_pylist())}
        rows = np.array([tid_to_row.get(format_id(v), -1) for v in tx["transcript_id"].tolist()], np.int64)
        if (rows < 0).any():
            raise SystemExit(f"error: {(rows < 0).sum()} transcript ids of the input are missing "
                             f"from {a.assignments}")
    asg = np.array(other["assignment"].to_pylist(), dtype=object)[rows]
    kept = tx["kept"]
    kept_idx = np.nonzero(kept)[0]
    is_cell = (asg == "cell") & kept
    emb = state["tx_embedding.tx.weight"].numpy()
    labels, info = fragments(tx["pos"][kept_idx], tx["token"][kept_idx], tx["transcript_id"][kept_idx],
                             emb, ~is_cell[kept_idx], a.k_tx, a.dist_tx, a.fragment_cut,
                             a.min_transcripts)
    n = len(kept)
    seg = np.full(n, "UNASSIGNED", dtype=object)
    assignment = np.where(kept, "unassigned", "filtered").astype(object)
    seg[is_cell] = np.array(other["segger_cell_id"].to_pylist(), dtype=object)[rows][is_cell]
    assignment[is_cell] = "cell"
    fr = np.array([lab is not None for lab in labels], bool)
    seg[kept_idx[fr]] = labels[fr]
    assignment[kept_idx[fr]] = "fragment"
    cols = {
        "transcript_id": tx["transcript_id_arrow"],
        "segger_cell_id": pa.array(seg.tolist(), pa.string()),
        "assignment": pa.array(assignment.tolist(), pa.string()),
        "filter_reason": pa.array(tx["filter_reason"].tolist(), pa.string()),
    }
    if "score" in other.column_names:
        sc = np.array([np.nan if v is None else v for v in other["score"].to_pylist()], np.float32)[rows]
        cols["score"] = pa.array(sc, pa.float32(), mask=np.isnan(sc))
    table = pa.table(cols)
    table = table.replace_schema_metadata({"fragments_ref.info": json.dumps(info)})
    pq.write_table(table, a.out, compression="zstd")
    info["total_seconds"] = round(time.time() - t0, 3)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Make a large random graph file for benchmarks (bench_pyg.py, seggpu).

    make_bench_graph.py --n-tx N --model M.safetensors --out G.safetensors
                        [--density 0.5] [--seed 0]

Transcripts uniform in a square box (density per um^2, z in [0, 3]), one
nucleus per 100 um^2 on a jittered grid; a transcript within 3 um (2-D) of its
nearest nucleus centroid is nuclear (belongs edge).  Graphs as docs/contract.md §5
(k_tx = 5, dist_tx = 5 with self, k_bd = 4, dist_bd = 12 strict), built with
scipy's cKDTree (tie order between equal distances is cKDTree's, which is fine
for timing but not a reference for tie-breaking).  Writes tx_token, bd_x,
edge_tx_tx, edge_tx_bd, rf_index, tx_pos, bd_pos.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from scipy.spatial import cKDTree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from weights_io import load_seggpu_weights, save_file  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-tx", type=int, required=True)
    ap.add_argument("--model", required=True, help="weights file (for the vocabulary size)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--density", type=float, default=0.5, help="transcripts per um^2")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    _, meta = load_seggpu_weights(a.model)
    n_genes = len(json.loads(meta["seggpu.genes"]))
    rng = np.random.default_rng(a.seed)
    side = float(np.sqrt(a.n_tx / a.density))
    tx = np.empty((a.n_tx, 3), dtype=np.float32)
    tx[:, :2] = rng.uniform(0, side, (a.n_tx, 2))
    tx[:, 2] = rng.uniform(0, 3, a.n_tx)
    g = np.arange(5.0, side, 10.0)
    gx, gy = np.meshgrid(g, g)
    bd = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-2, 2, (gx.size, 2))
    bd = bd.astype(np.float32)
    n_bd = len(bd)
    bd_x = np.stack([rng.uniform(25, 90, n_bd), rng.uniform(1, 1.15, n_bd),
                     rng.uniform(0.55, 1, n_bd), rng.uniform(1.6, 3.1, n_bd)], 1).astype(np.float32)
    tokens = rng.integers(0, n_genes, a.n_tx).astype(np.int64)

    t3 = cKDTree(tx.astype(np.float64))
    d, j = t3.query(tx.astype(np.float64), k=5, distance_upper_bound=5.0)
    ok = np.isfinite(d)
    src = np.repeat(np.arange(a.n_tx), 5).reshape(a.n_tx, 5)
    e_tt = np.stack([src[ok], j[ok]]).astype(np.int64)

    t2 = cKDTree(bd.astype(np.float64))
    d2, j2 = t2.query(tx[:, :2].astype(np.float64), k=min(4, n_bd), distance_upper_bound=12.0)
    d2, j2 = d2.reshape(a.n_tx, -1), j2.reshape(a.n_tx, -1)
    rf = np.full((a.n_tx, 4), -1, dtype=np.int64)
    valid = np.isfinite(d2) & (d2 < 12.0)
    rf[:, :d2.shape[1]] = np.where(valid, j2, -1)
    nearest_d, nearest = t2.query(tx[:, :2].astype(np.float64), k=1)
    nuc = np.nonzero(nearest_d < 3.0)[0]
    e_tb = np.stack([nuc, nearest[nuc]]).astype(np.int64)

    out = {"tx_token": torch.from_numpy(tokens), "bd_x": torch.from_numpy(bd_x),
           "edge_tx_tx": torch.from_numpy(e_tt), "edge_tx_bd": torch.from_numpy(e_tb),
           "rf_index": torch.from_numpy(rf), "tx_pos": torch.from_numpy(tx),
           "bd_pos": torch.from_numpy(bd)}
    save_file(out, a.out, metadata={"bench.seed": str(a.seed), "bench.density": str(a.density)})
    print(json.dumps({"out": a.out, "n_tx": a.n_tx, "n_bd": n_bd, "n_edges_tx_tx": int(e_tt.shape[1]),
                      "n_edges_tx_bd": int(e_tb.shape[1]), "side_um": side}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Train a small Segger model on one of the real sample crops (self-supervised).

Segger trains per gene panel by link prediction: nuclear transcripts → their
own nucleus. This script does that on the crop itself, so that the model's
vocabulary covers exactly that crop's panel:

    train_real.py --preset spatialdata --out tests/data/xenium_breast_model.safetensors
    train_real.py --preset merscope    --out tests/data/merscope_mouse_brain_model.safetensors

Presets (data in tests/data, see its README):

* spatialdata: ``xenium_breast_spatialdata/points.parquet`` (x, y, z,
  feature_name, cell_id, qv, overlaps_nucleus) + ``sd_nucleus_boundaries.parquet``
  (GeoParquet, WKB ``geometry``, ``cell_id``). Kept: qv ≥ 20, no control prefix.
  Belongs: overlaps_nucleus == 1 and cell_id == the nucleus's cell_id (as strings).
* merscope: ``merscope_mouse_brain_mini/vizgen_transcripts.gz`` (global_x,
  global_y, gene, global_z) + ``z0_polygons.gz`` (vertex table x, y, poly_ID;
  y negated: y_polygon × −1). Controls Blank-, BLANK. No nuclear flag: belongs =
  transcript strictly inside a polygon (lowest polygon index, polygons sorted by
  poly_ID as strings). NB these polygons are whole cells, not nuclei.

Vocabulary = sorted non-control gene names of the file (docs/contract.md §3); nucleus
features docs/contract.md §4 (props); graphs docs/contract.md §5 (k_tx = 5 with self, dist_tx = 5
inclusive; receptive field k_bd = 4 centroids < 12 µm), exact tie rule via
fragments_ref.knn_exact.

Training (as tools/reference/train.py, whose window_subgraph / training_pairs /
forward it reuses): 20 % of the belongs edges (nuclear transcripts) are held out
for validation and never seen in training (neither as message edges nor as
positives). Per step a random window; its training belongs edges are split into
supervision-only (removed from message passing) and message edges; positives are
all of them, negatives the other receptive-field nuclei plus random nuclei of the
window; balanced BCE on z_tx · z_bd. Validation: full-crop forward with only the
training belongs edges as messages; accuracy = fraction of held-out nuclear
transcripts whose best receptive-field nucleus (docs/contract.md §8) is their own and scores
≥ 0.5. The final (last-step) weights are saved, f16 by default.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import segger_ref as sr  # noqa: E402
import weights_io  # noqa: E402
from fragments_ref import knn_exact  # noqa: E402
from pipeline_ref import _as_str, _clean_ring  # noqa: E402
from sim_graphs import Sample  # noqa: E402
from train import forward, training_pairs, window_subgraph  # noqa: E402

DATA = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data"))
XENIUM_CONTROLS = ("NegControlProbe_", "antisense_", "NegControlCodeword", "BLANK_",
                   "DeprecatedCodeword_", "UnassignedCodeword_", "Intergenic_")
MERSCOPE_CONTROLS = ("Blank-", "BLANK")
DEFAULTS = {"k_tx": 5, "dist_tx": 5, "k_bd": 4, "dist_bd": 12, "score_cut": 0.5}


def polygon_props(ids, rings):
    """Sorted-as-given ids + rings → kept ids, [B,4] docs/contract.md §4 features, [B,2] centroids, polygons."""
    keep_ids, polys, skipped = [], [], 0
    for c, xy in zip(ids, rings):
        xy = _clean_ring(np.asarray(xy, np.float64))
        if len(xy) < 3 or len(np.unique(xy, axis=0)) < 3:
            skipped += 1
            continue
        p = shapely.Polygon(xy)
        if p.area == 0:
            skipped += 1
            continue
        keep_ids.append(c)
        polys.append(p)
    P = np.array(polys, dtype=object)
    area = shapely.area(P)
    conv = shapely.area(shapely.convex_hull(P)) / area
    elong = shapely.area(shapely.oriented_envelope(P)) / shapely.area(shapely.envelope(P))
    r = shapely.minimum_bounding_radius(P)
    feats = np.stack([area, conv, elong, area / (r * r)], 1).astype(np.float32)
    cen = shapely.centroid(P)
    cent = np.stack([shapely.get_x(cen), shapely.get_y(cen)], 1).astype(np.float64)
    return keep_ids, feats, cent, P, skipped


def load_spatialdata(d):
    t = pq.read_table(os.path.join(d, "points.parquet"))
    gene = _as_str(t["feature_name"])
    qv = t["qv"].to_numpy().astype(np.float64)
    control = np.array([g.startswith(XENIUM_CONTROLS) for g in gene])
    keep = (qv >= 20) & ~control
    pos = np.stack([t[c].to_numpy().astype(np.float64) for c in ("x", "y", "z")], 1)[keep]
    cell = _as_str(t["cell_id"])[keep]
    nuclear = t["overlaps_nucleus"].to_numpy()[keep] == 1
    genes = sorted({g for g, c in zip(gene, control) if not c})

    b = pq.read_table(os.path.join(d, "sd_nucleus_boundaries.parquet"))
    geoms = shapely.from_wkb(b["geometry"].to_numpy(zero_copy_only=False))
    bid = _as_str(b["cell_id"])
    order = sorted(range(len(bid)), key=lambda i: bid[i])
    rings = []
    for i in order:
        g = geoms[i]
        if g.geom_type == "MultiPolygon":
            g = max(g.geoms, key=lambda q: q.area)
        rings.append(np.asarray(g.exterior.coords)[:, :2])
    ids, feats, cent, _, skipped = polygon_props([bid[i] for i in order], rings)
    lookup = {c: i for i, c in enumerate(ids)}
    bd_of = np.array([lookup.get(c, -1) if n else -1 for c, n in zip(cell, nuclear)], np.int64)
    stats = {"rows": t.num_rows, "kept": int(keep.sum()), "filtered_qv": int(((qv < 20) & ~control).sum()),
             "filtered_control": int(control.sum()), "polygons": len(bid), "nuclei": len(ids),
             "skipped_polygons": skipped}
    return genes, gene[keep], pos, ids, feats, cent, bd_of, stats


def load_merscope(d):
    tx = pd.read_csv(os.path.join(d, "vizgen_transcripts.gz"))
    gene = tx["gene"].astype(str).to_numpy()
    control = np.array([g.startswith(MERSCOPE_CONTROLS) for g in gene])
    keep = ~control
    pos = np.stack([tx[c].to_numpy().astype(np.float64)
                    for c in ("global_x", "global_y", "global_z")], 1)[keep]
    genes = sorted({g for g, c in zip(gene, control) if not c})

    pv = pd.read_csv(os.path.join(d, "z0_polygons.gz"), dtype={"poly_ID": str})
    pid = pv["poly_ID"].to_numpy()
    vx = pv["x"].to_numpy(np.float64)
    vy = -pv["y"].to_numpy(np.float64)          # y negated relative to the transcripts
    groups = {}
    for i, c in enumerate(pid):
        groups.setdefault(c, []).append(i)
    keys = sorted(groups)
    rings = [np.stack([vx[groups[c]], vy[groups[c]]], 1) for c in keys]
    ids, feats, cent, P, skipped = polygon_props(keys, rings)
    # belongs: strictly inside (interior), lowest polygon index on overlap
    tree = shapely.STRtree(P)
    pts = shapely.points(pos[:, 0], pos[:, 1])
    qi, pi = tree.query(pts, predicate="within")
    bd_of = np.full(len(pos), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(bd_of, qi, pi.astype(np.int64))
    bd_of[bd_of == np.iinfo(np.int64).max] = -1
    stats = {"rows": len(tx), "kept": int(keep.sum()), "filtered_control": int(control.sum()),
             "polygons": len(keys), "nuclei": len(ids), "skipped_polygons": skipped}
    return genes, gene[keep], pos, ids, feats, cent, bd_of, stats


def load_xenium(d):
    """A Xenium output folder (e.g. `seggpu simulate`): transcripts.parquet (x_location,
    y_location, z_location, feature_name, cell_id, overlaps_nucleus, qv) and
    nucleus_boundaries.parquet (vertex table cell_id, vertex_x, vertex_y). Kept: qv ≥ 20, no
    control prefix; belongs: overlaps_nucleus == 1 and cell_id == the nucleus's id."""
    from sim_graphs import nucleus_features
    t = pq.read_table(os.path.join(d, "transcripts.parquet"))
    gene = _as_str(t["feature_name"])
    qv = t["qv"].to_numpy().astype(np.float64)
    control = np.array([g.startswith(XENIUM_CONTROLS) for g in gene])
    keep = (qv >= 20) & ~control
    pos = np.stack([t[c].to_numpy().astype(np.float64)
                    for c in ("x_location", "y_location", "z_location")], 1)[keep]
    cell = _as_str(t["cell_id"])[keep]
    nuclear = t["overlaps_nucleus"].to_numpy()[keep] == 1
    genes = sorted({g for g, c in zip(gene, control) if not c})
    nb = pq.read_table(os.path.join(d, "nucleus_boundaries.parquet"))
    ids, feats, cent = nucleus_features(_as_str(nb["cell_id"]), nb["vertex_x"].to_numpy(),
                                        nb["vertex_y"].to_numpy())
    lookup = {c: i for i, c in enumerate(ids)}
    bd_of = np.array([lookup.get(c, -1) if n else -1 for c, n in zip(cell, nuclear)], np.int64)
    stats = {"rows": t.num_rows, "kept": int(keep.sum()), "nuclei": len(ids)}
    return genes, gene[keep], pos, ids, feats, cent.astype(np.float64), bd_of, stats


def build(genes, gene_kept, pos, ids, feats, cent, bd_of, k_tx=5, dist_tx=5.0, k_bd=4, dist_bd=12.0):
    lookup = {g: i for i, g in enumerate(genes)}
    tok = np.array([lookup[g] for g in gene_kept], np.int64)
    n = len(pos)
    nb = knn_exact(pos, pos, k_tx, dist_tx, inclusive=True)
    src = np.repeat(np.arange(n, dtype=np.int64), k_tx)
    dst = nb.reshape(-1)
    ok = dst >= 0
    edge_tt = torch.from_numpy(np.stack([src[ok], dst[ok]]))
    rf = knn_exact(cent, pos[:, :2], k_bd, dist_bd, inclusive=False)
    bel = np.nonzero(bd_of >= 0)[0]
    edge_tb = np.stack([bel, bd_of[bel]])
    return tok, edge_tt, torch.from_numpy(rf), edge_tb


@torch.no_grad()
def validate(model, s, held, own, cut=0.5):
    model.eval()
    z_tx, z_bd = forward(model, s.tx_token, s.bd_x, s.edge_tx_tx, s.edge_tx_bd)
    model.train()
    _, best, idx = sr.score(z_tx, z_bd, s.rf_index)
    b, i = best[held], idx[held]
    correct = (i == own) & (b >= cut)
    reach = (s.rf_index[held] == own[:, None]).any(1)
    return {"accuracy": float(correct.float().mean()),
            "best_is_own": float((i == own).float().mean()),
            "own_in_rf": float(reach.float().mean()),
            "n_heldout": int(len(held))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, choices=["spatialdata", "merscope", "xenium"])
    ap.add_argument("--data", help="data folder (default: tests/data/<crop>)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--minutes", type=float, default=4.0, help="stop early after this long")
    ap.add_argument("--window", type=float, default=100.0)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--supervision-fraction", type=float, default=0.5)
    ap.add_argument("--random-negatives", type=int, default=1)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--emb", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--mid-layers", type=int, default=1)
    ap.add_argument("--out-channels", type=int, default=16)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--dtype", default="f16", choices=["f32", "f16", "bf16"])
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--log", help="write a JSON training log here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    t0 = time.time()
    if a.preset == "spatialdata":
        d = a.data or os.path.join(DATA, "xenium_breast_spatialdata")
        loaded = load_spatialdata(d)
    elif a.preset == "xenium":
        if not a.data:
            ap.error("--preset xenium needs --data DIR (a Xenium output folder)")
        loaded = load_xenium(a.data)
    else:
        d = a.data or os.path.join(DATA, "merscope_mouse_brain_mini")
        loaded = load_merscope(d)
    genes, gene_kept, pos, ids, feats, cent, bd_of, stats = loaded
    tok, edge_tt, rf, edge_tb = build(*loaded[:7])
    nb = edge_tb.shape[1]
    perm = rng.permutation(nb)
    n_hold = int(round(a.holdout * nb))
    hold_e, train_e = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    s = Sample(genes=genes, tx_token=torch.from_numpy(tok), pos=pos, bd_ids=ids,
               bd_x=torch.from_numpy(feats), bd_pos=cent, edge_tx_tx=edge_tt,
               edge_tx_bd=torch.from_numpy(edge_tb[:, train_e].copy()), rf_index=rf,
               truth=None, n_rows=stats["rows"], n_true_cell_rows=0)
    held = torch.from_numpy(edge_tb[0, hold_e].copy())
    own = torch.from_numpy(edge_tb[1, hold_e].copy())
    stats.update({"genes": len(genes), "tx_tx_edges": int(edge_tt.shape[1]), "belongs": int(nb),
                  "belongs_train": int(len(train_e)), "belongs_heldout": int(n_hold),
                  "extent": [float(v) for v in np.concatenate([pos[:, :2].min(0), pos[:, :2].max(0)])],
                  "load_s": round(time.time() - t0, 1)})
    print(json.dumps(stats), flush=True)

    arch = sr.Arch(len(genes), a.emb, a.hidden, a.mid_layers, a.out_channels, a.heads)
    model = sr.build_model(arch, seed=a.seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    lo, hi = pos[:, :2].min(0), pos[:, :2].max(0)
    win = min(a.window, float(max(hi - lo)))
    log = {"args": vars(a), "arch": arch.as_dict(), "data": stats, "evals": []}
    step, ema, start = 0, None, time.time()
    budget = a.minutes * 60
    v0 = validate(model, s, held, own)
    log["init_val_seconds"] = round(time.time() - start, 2)
    print(f"init val {v0} ({log['init_val_seconds']} s)", flush=True)
    while step < a.steps and time.time() - start < budget:
        x0 = rng.uniform(lo[0] - win / 4, hi[0] - 3 * win / 4)
        y0 = rng.uniform(lo[1] - win / 4, hi[1] - 3 * win / 4)
        g = window_subgraph(s, x0, y0, win, rng, a.supervision_fraction)
        if g is None or g["pos"].shape[1] == 0:
            continue
        z_tx, z_bd = forward(model, g["tx_token"], g["bd_x"], g["edge_tt"], g["edge_tb"])
        (ps, pd_), (ns, nd) = training_pairs(g, a.random_negatives, rng)
        pl = (z_tx[ps] * z_bd[pd_]).sum(-1)
        nl = (z_tx[ns] * z_bd[nd]).sum(-1)
        logits = torch.cat([pl, nl])
        labels = torch.cat([torch.ones_like(pl), torch.zeros_like(nl)])
        pw = torch.tensor(max(len(ns), 1) / max(len(ps), 1))
        loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pw)
        frac = step / a.steps
        for group in opt.param_groups:
            group["lr"] = a.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % a.eval_every == 0:
            v = validate(model, s, held, own)
            log["evals"].append({"step": step, "seconds": round(time.time() - start, 1),
                                 "loss_ema": ema, "val": v})
            print(f"step {step:5d} {time.time() - start:6.1f} s loss {ema:.4f} val {v}", flush=True)
    v = validate(model, s, held, own)
    log["final"] = {"step": step, "seconds": round(time.time() - start, 1), "loss_ema": ema,
                    "last_loss": loss.item(), "val": v}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    weights_io.save_seggpu_weights(model.state_dict(), genes, a.out, bd_features="props",
                                   dtype=a.dtype, defaults=DEFAULTS)
    # validation again with the weights as stored (f16 rounding)
    st, _ = weights_io.load_seggpu_weights(a.out)
    v2 = validate(sr.model_from_state(st), s, held, own)
    log["final"]["val_stored_weights"] = v2
    print(json.dumps(log["final"], indent=1))
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes)")
    if a.log:
        with open(a.log, "w") as f:
            json.dump(log, f, indent=1)


if __name__ == "__main__":
    main()

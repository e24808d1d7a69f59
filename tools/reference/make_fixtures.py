#!/usr/bin/env python3
"""Generate the seggpu model/graph test fixtures (deterministic).

For each architecture NAME this writes

  tests/fixtures/NAME.model.safetensors   seggpu weights file (weights_io)
  tests/fixtures/NAME.graph.safetensors   inputs + every intermediate + scores

Graph tensors (see README.md for the full contract):
  tx_token [N_tx] i64, bd_x [N_bd,4] f32, edge_tx_tx [2,E] i64 (row 0 source,
  row 1 target), edge_tx_bd [2,E_b] i64 (row 0 tx, row 1 bd), rf_index
  [N_tx,k_bd] i64 (-1 padded), expected.h_tx.{l}/expected.h_bd.{l} for
  l = 0..L, expected.z_tx, expected.z_bd, expected.scores, expected.best_score,
  expected.best_index; extra (informational): tx_pos [N_tx,3] f32 and
  bd_pos [N_bd,2] f32, the positions the graphs were built from.

Usage: make_fixtures.py [--out-dir tests/fixtures]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import segger_ref as sr  # noqa: E402
import spec_math  # noqa: E402
from weights_io import cast_state, load_seggpu_weights, save_file, save_seggpu_weights  # noqa: E402

K_TX, DIST_TX, K_BD, DIST_BD = 5, 5.0, 4, 12.0
GRID = 16.0  # positions are multiples of 1/16 um: squared distances are exact in f32 and f64

CONFIGS = [
    # name, arch kwargs, dtype, bd_features, vocab size, seed, zero conv_last belongs bias
    dict(name="dev", arch=dict(in_channels=16, hidden_channels=32, num_mid_layers=3,
                               out_channels=32, heads=3),
         V=40, n_genes=40, dtype="f32", bd_features="props", seed=1234, zero_last_bd_bias=False, last_scale=2.5),
    dict(name="small", arch=dict(in_channels=8, hidden_channels=16, num_mid_layers=1,
                                 out_channels=8, heads=2),
         V=40, n_genes=40, dtype="f16", bd_features="props", seed=2024, zero_last_bd_bias=True, last_scale=2.5),
    dict(name="small_zero", arch=dict(in_channels=8, hidden_channels=12, num_mid_layers=0,
                                      out_channels=6, heads=1),
         V=40, n_genes=38, dtype="bf16", bd_features="zeros", seed=77, zero_last_bd_bias=True, last_scale=2.5),
]


def q(a):
    """Quantise to the 1/16 um grid (float32-exact)."""
    return (np.round(np.asarray(a, dtype=np.float64) * GRID) / GRID).astype(np.float32)


# ---------------------------------------------------------------------------
# synthetic tile
# ---------------------------------------------------------------------------

def make_scene(rng: np.random.Generator, n_genes: int, bd_features: str):
    """Nuclei and transcripts with the edge cases the tests need."""
    # --- nuclei: regular ones on a jittered 10 um grid in x in [5.5, 40.5], y in [5.5, 30.5]
    cents, kinds = [], []
    for gy in (8.0, 18.0, 28.0):
        for gx in (8.0, 18.0, 28.0, 38.0):
            cents.append((gx + rng.uniform(-2.5, 2.5), gy + rng.uniform(-2.5, 2.5)))
            kinds.append("normal")
    # one nucleus without belongs edges among the regular ones (replaces a grid slot)
    kinds[5] = "empty"
    # the duplicate pair, in the top band y ~ 54, away from all other nuclei (> 12 um)
    cents.append((8.0, 54.0))
    kinds.append("dup")
    cents.append((12.0, 54.0))
    kinds.append("dup")
    cents = q(np.array(cents))
    n_bd = len(cents)
    # shuffle nucleus order, but make sure the duplicate pair has the LOWER index on the
    # right-hand (x = 12) copy, so transcripts left of the pair list the higher index first
    perm = rng.permutation(n_bd)
    cents, kinds = cents[perm], [kinds[i] for i in perm]
    dups = [i for i, k in enumerate(kinds) if k == "dup"]
    left = min(dups, key=lambda i: cents[i, 0])
    right = max(dups, key=lambda i: cents[i, 0])
    if left < right:  # swap positions so the left copy has the higher index
        cents[[left, right]] = cents[[right, left]]

    # node features (area, convexity, elongation, circularity)
    if bd_features == "zeros":
        bd_x = np.zeros((n_bd, 4), dtype=np.float32)
    else:
        bd_x = np.stack([
            rng.uniform(25.0, 90.0, n_bd),     # area um^2
            rng.uniform(1.0, 1.15, n_bd),      # convexity
            rng.uniform(0.55, 1.0, n_bd),      # elongation
            rng.uniform(1.6, 3.1, n_bd),       # circularity
        ], axis=1).astype(np.float32)
        dups = [i for i, k in enumerate(kinds) if k == "dup"]
        bd_x[dups[1]] = bd_x[dups[0]]          # exact duplicate features

    # --- transcripts
    pos, nuc_of = [], []

    def add(xy_center, r_lo, r_hi, n, nucleus):
        for _ in range(n):
            ang = rng.uniform(0, 2 * np.pi)
            r = rng.uniform(r_lo, r_hi)
            pos.append((xy_center[0] + r * np.cos(ang), xy_center[1] + r * np.sin(ang),
                        rng.uniform(0, 3)))
            nuc_of.append(nucleus)

    for n, k in enumerate(kinds):
        if k == "normal":
            add(cents[n], 0.0, 2.5, int(rng.integers(6, 11)), n)       # nuclear -> belongs
            add(cents[n], 3.0, 7.0, int(rng.integers(5, 9)), -1)      # cytoplasm
        else:
            add(cents[n], 0.0, 6.0, 7, -1)                            # no belongs edges
    # background over the nucleus area
    for _ in range(30):
        pos.append((rng.uniform(0, 50), rng.uniform(0, 44), rng.uniform(0, 3)))
        nuc_of.append(-1)
    # far strip: no nucleus centroid within 12 um
    for _ in range(6):
        pos.append((rng.uniform(57.5, 60.0), rng.uniform(0, 60), rng.uniform(0, 3)))
        nuc_of.append(-1)
    pos = q(np.array(pos))
    nuc_of = np.array(nuc_of)
    # shuffle transcript order
    perm = rng.permutation(len(pos))
    pos, nuc_of = pos[perm], nuc_of[perm]
    n_tx = len(pos)
    # duplicate coordinates: 3 pairs and one triple share exact positions
    idx = rng.choice(n_tx, size=9, replace=False)
    groups = [idx[0:2], idx[2:4], idx[4:6], idx[6:9]]
    for g in groups:
        pos[g[1:]] = pos[g[0]]
    tokens = rng.integers(0, n_genes, n_tx).astype(np.int64)
    # one duplicate pair also shares the gene
    tokens[groups[0][1]] = tokens[groups[0][0]]
    return dict(tx_pos=pos, bd_pos=cents, bd_x=bd_x, tokens=tokens, nuc_of=nuc_of,
                dup_groups=[g.tolist() for g in groups], kinds=kinds)


def knn_edges(pos: np.ndarray, k: int, dmax: float):
    """Edge i -> j for each of the k nearest j of i (3-D, self included, d <= dmax).
    Ties in distance: lower index first."""
    p = pos.astype(np.float64)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    n = len(p)
    src, dst = [], []
    for i in range(n):
        order = np.lexsort((np.arange(n), d2[i]))
        for j in order[:k]:
            if d2[i, j] <= dmax * dmax:
                src.append(i)
                dst.append(int(j))
    return np.array([src, dst], dtype=np.int64)


def receptive_field(tx_pos: np.ndarray, bd_pos: np.ndarray, k: int, dmax: float):
    """k nearest nucleus centroids in 2-D with d < dmax (strict), -1 padded.
    Ties in distance: lower nucleus index first."""
    t = tx_pos[:, :2].astype(np.float64)
    b = bd_pos.astype(np.float64)
    d2 = ((t[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rf = np.full((len(t), k), -1, dtype=np.int64)
    nb = len(b)
    for i in range(len(t)):
        order = np.lexsort((np.arange(nb), d2[i]))
        cand = [int(j) for j in order if d2[i, j] < dmax * dmax][:k]
        rf[i, :len(cand)] = cand
    return rf


def build_graph(scene, rng):
    e_tt = knn_edges(scene["tx_pos"], K_TX, DIST_TX)
    n_tx = len(scene["tx_pos"])
    # choose a transcript with several incoming edges that is not in a duplicate group
    # and remove every edge into it (its self-edge included)
    in_deg = np.bincount(e_tt[1], minlength=n_tx)
    dup_members = {i for g in scene["dup_groups"] for i in g}
    cands = [i for i in range(n_tx) if in_deg[i] >= 3 and i not in dup_members]
    isolated = int(rng.choice(cands))
    keep = e_tt[1] != isolated
    e_tt = e_tt[:, keep]
    nuc_of = scene["nuc_of"]
    tx_b = np.nonzero(nuc_of >= 0)[0]
    e_tb = np.array([tx_b, nuc_of[tx_b]], dtype=np.int64)
    rf = receptive_field(scene["tx_pos"], scene["bd_pos"], K_BD, DIST_BD)
    return e_tt, e_tb, rf, isolated


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------

def make_weights(cfg):
    arch = sr.Arch(num_tx_tokens=cfg["V"], **cfg["arch"])
    model = sr.build_model(arch, seed=cfg["seed"])           # PyG initialisation
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k in sorted(state):
        if k.endswith(".bias") or k.endswith(".att"):
            state[k] = torch.randn(state[k].shape, generator=g) * 0.3
    # widen the output scale so that scores spread over (0, 1)
    for rel in sr.RELS:
        for part in ("lin_l.weight", "lin_l.bias", "bias"):
            state[f"conv_last.{rel}.{part}"] *= cfg["last_scale"]
    if cfg["zero_last_bd_bias"]:
        state[f"conv_last.{sr.REL_TB}.bias"].zero_()
    # what the file holds, back in float32: the reference uses exactly these values
    stored = cast_state(state, cfg["dtype"])
    ref_state = {k: v.to(torch.float32) for k, v in stored.items()}
    model.load_state_dict(ref_state, strict=True)
    return arch, model, state


# ---------------------------------------------------------------------------
# checks and summaries
# ---------------------------------------------------------------------------

def edge_case_summary(name, arch, scene, e_tt, e_tb, rf, isolated, inter, scores, best_s, best_i):
    n_tx, n_bd = len(scene["tx_pos"]), len(scene["bd_pos"])
    z_bd = inter["z_bd"]
    in_deg = np.bincount(e_tt[1], minlength=n_tx)
    bd_in = np.bincount(e_tb[1], minlength=n_bd)
    rfv = rf >= 0
    n_cand = rfv.sum(1)
    s = scores.numpy()
    bi = best_i.numpy()
    bs = best_s.numpy()
    # exact ties at the best score
    tie_rows, tie_reversed, fragile = [], [], []
    for i in range(n_tx):
        c = rf[i][rfv[i]]
        if len(c) == 0:
            continue
        sc = s[i][rfv[i]]
        top = sc.max()
        at_top = c[sc == top]
        if len(at_top) > 1:
            tie_rows.append(i)
            first = c[np.argmax(sc == top)]
            if first != bi[i]:
                tie_reversed.append(i)
        # fragility: a candidate with a different z_bd row whose dot product is within
        # 1e-3 of the best one's (an implementation with other rounding could flip it)
        best_row = z_bd[bi[i]]
        d_best = float(inter["z_tx"][i].double() @ best_row.double())
        for n_ in c:
            if n_ != bi[i] and not torch.equal(z_bd[n_], best_row):
                d = float(inter["z_tx"][i].double() @ z_bd[n_].double())
                if abs(d - d_best) < 1e-3:
                    fragile.append((i, int(n_), d_best - d))
    zero_bd_rows = [n for n in range(n_bd) if bool((z_bd[n] == 0).all())]
    dots = (inter["z_tx"][:, None, :] * z_bd[torch.from_numpy(rf).clamp(min=0)]).sum(-1)
    dots = dots[torch.from_numpy(rfv)]
    dup_bd = [i for i, k in enumerate(scene["kinds"]) if k == "dup"]
    summ = {
        "name": name,
        "arch": arch.as_dict(),
        "n_tx": n_tx, "n_bd": n_bd, "n_edges_tx_tx": int(e_tt.shape[1]),
        "n_edges_tx_bd": int(e_tb.shape[1]),
        "tx_without_incoming_tx_tx_edge": [int(i) for i in np.nonzero(in_deg == 0)[0]],
        "isolated_by_construction": isolated,
        "duplicate_position_groups": scene["dup_groups"],
        "bd_without_belongs_edge": [int(i) for i in np.nonzero(bd_in == 0)[0]],
        "duplicate_nuclei_pair": dup_bd,
        "tx_without_candidates": int((n_cand == 0).sum()),
        "tx_with_partial_rf(1..3)": int(((n_cand > 0) & (n_cand < K_BD)).sum()),
        "tx_with_full_rf": int((n_cand == K_BD).sum()),
        "z_bd_rows_exactly_zero": zero_bd_rows,
        "exact_zero_scores": int((s == 0).sum()),
        "tx_best_score_zero": int((bs == 0).sum()),
        "tx_with_exact_tie_at_best": len(tie_rows),
        "tx_tie_where_rf_first_is_not_lowest_index": len(tie_reversed),
        "fragile_near_ties(|dot gap|<1e-3, distinct z_bd)": len(fragile),
        "dot_range": [float(dots.min()), float(dots.max())],
        "best_score_range": [float(np.nanmin(bs)), float(np.nanmax(bs))],
        "n_best_ge_0.5": int((bs >= 0.5).sum()),
    }
    return summ, fragile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out-dir", default=os.path.normpath(os.path.join(here, "..", "..", "tests", "fixtures")))
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    all_ok = True
    for cfg in CONFIGS:
        name = cfg["name"]
        rng = np.random.default_rng(cfg["seed"])
        arch, model, state = make_weights(cfg)
        genes = [f"GENE{i + 1:04d}" for i in range(cfg["n_genes"])]
        assert genes == sorted(genes)
        scene = make_scene(rng, cfg["n_genes"], cfg["bd_features"])
        e_tt, e_tb, rf, isolated = build_graph(scene, rng)

        bd_x = torch.from_numpy(scene["bd_x"])
        t_tt, t_tb = torch.from_numpy(e_tt), torch.from_numpy(e_tb)
        # Re-draw the genes of transcripts whose best nucleus is a near-tie between
        # nuclei with different embeddings (fragile across implementations).
        for attempt in range(50):
            tx_token = torch.from_numpy(scene["tokens"])
            inter = sr.forward_intermediates(model, tx_token, bd_x, t_tt, t_tb)
            scores, best_s, best_i = sr.score(inter["z_tx"], inter["z_bd"], torch.from_numpy(rf))
            summ, fragile = edge_case_summary(name, arch, scene, e_tt, e_tb, rf, isolated, inter,
                                              scores, best_s, best_i)
            if not fragile:
                break
            for i, _, _ in fragile:
                scene["tokens"][i] = rng.integers(0, cfg["n_genes"])
        summ["gene_redraw_rounds"] = attempt
        # cross-checks: the to_hetero module itself, and float64 contract math
        z_tx_h, z_bd_h = sr.forward_hetero(model, tx_token, bd_x, t_tt, t_tb)
        same = torch.equal(z_tx_h, inter["z_tx"]) and torch.equal(z_bd_h, inter["z_bd"])
        d_het = max(float((z_tx_h - inter["z_tx"]).abs().max()), float((z_bd_h - inter["z_bd"]).abs().max()))
        ref_state = {k: v.float() for k, v in model.state_dict().items()}
        spec = spec_math.forward(ref_state, tx_token, bd_x, t_tt, t_tb)
        worst = 0.0
        for k in inter:
            a, b = inter[k].double(), spec[k]
            rel = float(((a - b).abs() / (1.0 + b.abs())).max())
            worst = max(worst, rel)

        summ["to_hetero_vs_layerwise_max_abs_diff"] = d_het
        summ["to_hetero_bitwise_equal"] = same
        summ["f32_vs_f64_spec_max_rel_err"] = worst
        print(json.dumps(summ, indent=None))
        ok = (worst < 1e-4 and d_het < 1e-5 and not fragile
              and summ["tx_without_incoming_tx_tx_edge"]
              and summ["tx_without_candidates"] > 0
              and len(summ["bd_without_belongs_edge"]) >= 1
              and summ["tx_with_exact_tie_at_best"] > 0
              and summ["tx_tie_where_rf_first_is_not_lowest_index"] > 0)
        if cfg["zero_last_bd_bias"]:
            ok = ok and summ["exact_zero_scores"] > 0 and summ["tx_best_score_zero"] > 0
        if not ok:
            print(f"!! {name}: edge-case requirements not met; fragile={fragile[:5]}", file=sys.stderr)
            all_ok = False

        # --- write
        mpath = os.path.join(args.out_dir, f"{name}.model.safetensors")
        gpath = os.path.join(args.out_dir, f"{name}.graph.safetensors")
        save_seggpu_weights(state, genes, mpath, bd_features=cfg["bd_features"], dtype=cfg["dtype"],
                            defaults={"k_bd": K_BD, "dist_bd": DIST_BD, "score_cut": 0.5})
        g = {
            "tx_token": tx_token.contiguous(),
            "bd_x": bd_x.contiguous(),
            "edge_tx_tx": t_tt.contiguous(),
            "edge_tx_bd": t_tb.contiguous(),
            "rf_index": torch.from_numpy(rf).contiguous(),
            "tx_pos": torch.from_numpy(scene["tx_pos"]).contiguous(),
            "bd_pos": torch.from_numpy(scene["bd_pos"]).contiguous(),
        }
        for k, v in inter.items():
            g[f"expected.{k}"] = v.to(torch.float32).clone().contiguous()
        g["expected.scores"] = scores.contiguous()
        g["expected.best_score"] = best_s.contiguous()
        g["expected.best_index"] = best_i.contiguous()
        meta = {
            "fixture.model": os.path.basename(mpath),
            "fixture.arch": json.dumps(arch.as_dict()),
            "fixture.n_layers": str(arch.n_layers),
            "fixture.graph_params": json.dumps({"k_tx": K_TX, "dist_tx": DIST_TX, "k_bd": K_BD,
                                                "dist_bd": DIST_BD, "isolated_tx": isolated}),
            "fixture.generator": "tools/reference/make_fixtures.py",
        }
        save_file(g, gpath, metadata=meta)

        # --- verify by reloading
        st2, meta2 = load_seggpu_weights(mpath)
        m2 = sr.model_from_state(st2)
        with safe_open(gpath, framework="pt") as f:
            g2 = {k: f.get_tensor(k) for k in f.keys()}
        inter2 = sr.forward_intermediates(m2, g2["tx_token"], g2["bd_x"], g2["edge_tx_tx"], g2["edge_tx_bd"])
        for k, v in inter2.items():
            if not torch.equal(v, g2[f"expected.{k}"]):
                print(f"!! {name}: reload mismatch in {k}", file=sys.stderr)
                all_ok = False
        sc2, bs2, bi2 = sr.score(inter2["z_tx"], inter2["z_bd"], g2["rf_index"])
        if not (torch.equal(bi2, g2["expected.best_index"])
                and torch.allclose(bs2, g2["expected.best_score"], equal_nan=True, atol=0, rtol=0)
                and torch.allclose(sc2, g2["expected.scores"], equal_nan=True, atol=0, rtol=0)):
            print(f"!! {name}: reload mismatch in scores", file=sys.stderr)
            all_ok = False
        print(f"{name}: wrote {mpath} ({os.path.getsize(mpath)} B), {gpath} ({os.path.getsize(gpath)} B)")
    total = sum(os.path.getsize(os.path.join(args.out_dir, f)) for f in os.listdir(args.out_dir)
                if f.endswith(".safetensors"))
    print(f"total fixture size: {total} B")
    if not all_ok:
        sys.exit(1)


if __name__ == "__main__":
    main()

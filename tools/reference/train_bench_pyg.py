#!/usr/bin/env python3
"""Time PyTorch + PyG training steps on the windows `cargo bench --bench train` wrote.

    cargo bench --bench train                      # writes target/bench/train/
    train_bench_pyg.py --dir target/bench/train --threads 2

The folder holds `model.safetensors` (the starting weights) and
`batch_NNN.safetensors`, one training window each in the `seggpu forward`
graph format (tx_token, bd_x, edge_tx_tx with the window's message edges,
edge_tx_bd) plus `pos_pairs` [2, P] and `neg_pairs` [2, Q]. Each step is
what tools/reference/train.py does per window: the to_hetero forward, binary
cross-entropy with logits on z_tx · z_bd with pos_weight = Q / P, backward,
and one torch.optim.Adam step. One pass over the windows warms up, then
`--repeat` timed passes; prints one JSON line with the median seconds per
pass, steps per second and window transcripts per second (forward +
backward + Adam).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import segger_ref as sr  # noqa: E402
from weights_io import load_graph, load_seggpu_weights  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    state, _ = load_seggpu_weights(os.path.join(a.dir, "model.safetensors"))
    model = sr.model_from_state(state)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    batches = []
    for path in sorted(glob.glob(os.path.join(a.dir, "batch_*.safetensors"))):
        g = load_graph(path)
        batches.append(g)
    # The sizes `cargo bench --bench train` prints too: the same windows.
    n_tx = sum(int(g["tx_token"].shape[0]) for g in batches)
    counts = {
        "edges_tx_tx": sum(int(g["edge_tx_tx"].shape[1]) for g in batches),
        "edges_tx_bd": sum(int(g["edge_tx_bd"].shape[1]) for g in batches),
        "pairs": sum(int(g["pos_pairs"].shape[1] + g["neg_pairs"].shape[1]) for g in batches),
    }

    def step(g):
        out = model({"tx": g["tx_token"].long(), "bd": g["bd_x"].float()},
                    {sr.EDGE_TT: g["edge_tx_tx"].long(), sr.EDGE_TB: g["edge_tx_bd"].long()})
        z_tx, z_bd = out["tx"], out["bd"]
        pos, neg = g["pos_pairs"].long(), g["neg_pairs"].long()
        pl = (z_tx[pos[0]] * z_bd[pos[1]]).sum(-1)
        nl = (z_tx[neg[0]] * z_bd[neg[1]]).sum(-1)
        logits = torch.cat([pl, nl])
        labels = torch.cat([torch.ones_like(pl), torch.zeros_like(nl)])
        pw = torch.tensor(max(neg.shape[1], 1) / max(pos.shape[1], 1))
        loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for g in batches:
        step(g)
    times = []
    for _ in range(a.repeat):
        start = time.perf_counter()
        for g in batches:
            step(g)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"impl": "pytorch+pyg", "windows": len(batches), "window_tx": n_tx,
                      **counts,
                      "seconds_per_pass": round(median, 4),
                      "steps_per_s": round(len(batches) / median, 2),
                      "tx_per_s": round(n_tx / median), "threads": a.threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()

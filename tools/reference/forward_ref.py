#!/usr/bin/env python3
"""Run the PyG reference (segger's to_hetero model) on a graph file.

    forward_ref.py --graph G.safetensors --model M.safetensors --out O.safetensors [--all]

Writes z_tx [N_tx, H*C_out], z_bd [N_bd, H*C_out] (float32) and, when the graph
has rf_index, scores [N_tx, k_bd], best_score [N_tx] (float32, NaN without a
candidate) and best_index [N_tx] (int64, -1 without a candidate) -- the names
of the fixtures' ``expected.*`` tensors without the prefix.  --all also writes
h_tx.{l} / h_bd.{l} for every layer l = 0..L.  Use it to check seggpu's output
against PyTorch Geometric on your own model and data.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import segger_ref as sr  # noqa: E402
from weights_io import bd_features_of, load_graph, load_seggpu_weights, save_file  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graph", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--all", action="store_true", help="also write every intermediate layer")
    a = ap.parse_args(argv)
    state, meta = load_seggpu_weights(a.model)
    model = sr.model_from_state(state)
    g = load_graph(a.graph)
    bd_x = g["bd_x"]
    if bd_features_of(meta) == "zeros":
        bd_x = torch.zeros_like(bd_x)
    z_tx, z_bd = sr.forward_hetero(model, g["tx_token"], bd_x, g["edge_tx_tx"], g["edge_tx_bd"])
    out = {"z_tx": z_tx.contiguous(), "z_bd": z_bd.contiguous()}
    if a.all:
        inter = sr.forward_intermediates(model, g["tx_token"], bd_x, g["edge_tx_tx"], g["edge_tx_bd"])
        for k, v in inter.items():
            if k.startswith("h_"):
                out[k] = v.clone().contiguous()
    if "rf_index" in g:
        scores, best_s, best_i = sr.score(z_tx, z_bd, g["rf_index"])
        out.update(scores=scores.contiguous(), best_score=best_s.contiguous(),
                   best_index=best_i.contiguous())
    save_file(out, a.out, metadata={"forward_ref.model": os.path.basename(a.model),
                                    "forward_ref.graph": os.path.basename(a.graph),
                                    "forward_ref.arch": json.dumps(sr.infer_arch(state).as_dict())})
    print(json.dumps({"out": a.out, "tensors": {k: list(v.shape) for k, v in out.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

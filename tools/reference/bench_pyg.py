#!/usr/bin/env python3
"""Time the PyG reference forward pass (+ scoring) on a graph file.

    bench_pyg.py --graph G.safetensors --model M.safetensors --threads T
                 [--repeat R] [--device cpu|cuda]

The graph file holds tx_token, bd_x, edge_tx_tx, edge_tx_bd and optionally
rf_index (fixtures or make_bench_graph.py output).  The model is segger's
to_hetero network built from the weights file (architecture read from tensor
shapes).  One warm-up pass, then R timed passes under torch.no_grad(); each
pass is the forward plus, when rf_index is present, scoring with the
best-nucleus rule.  Prints one JSON line:

  {"impl":"pyg","n_tx":...,"seconds":<median>,"tx_per_s":...,"threads":T,"device":"cpu",
   "cpu_seconds":<median CPU time of all threads>, ...}
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import segger_ref as sr  # noqa: E402
from weights_io import bd_features_of, load_graph, load_seggpu_weights  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graph", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("error: CUDA requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    state, meta = load_seggpu_weights(a.model)
    model = sr.model_from_state(state).to(dev)
    g = load_graph(a.graph)
    bd_x = g["bd_x"]
    if bd_features_of(meta) == "zeros":
        bd_x = torch.zeros_like(bd_x)
    tok, bd_x = g["tx_token"].to(dev), bd_x.to(dev)
    e_tt, e_tb = g["edge_tx_tx"].to(dev), g["edge_tx_bd"].to(dev)
    rf = g["rf_index"].to(dev) if "rf_index" in g else None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def once():
        with torch.no_grad():
            z_tx, z_bd = sr.forward_hetero(model, tok, bd_x, e_tt, e_tb)
            if rf is not None:
                _, best_s, best_i = sr.score(z_tx, z_bd, rf)
        sync()

    once()  # warm-up
    times, cpu_times = [], []
    for _ in range(max(1, a.repeat)):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        once()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    med = statistics.median(times)
    n_tx = int(tok.shape[0])
    print(json.dumps({
        "impl": "pyg", "n_tx": n_tx, "n_bd": int(bd_x.shape[0]),
        "n_edges_tx_tx": int(e_tt.shape[1]), "n_edges_tx_bd": int(e_tb.shape[1]),
        "scoring": rf is not None, "seconds": med, "tx_per_s": n_tx / med if med > 0 else None,
        "threads": a.threads, "device": str(dev.type), "repeat": len(times),
        "min_seconds": min(times), "torch": torch.__version__,
        # CPU seconds of all threads: steadier than the wall clock on a shared machine.
        "cpu_seconds": statistics.median(cpu_times),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

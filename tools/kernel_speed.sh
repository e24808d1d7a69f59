#!/bin/bash
# Kernel-only speed of the CPU forward pass + scoring against PyTorch Geometric
# on the same 200k-transcript graph and weights, run alternately.
#
#   tools/kernel_speed.sh ROUNDS [PYTHON]
#
# PYTHON: an interpreter with tools/reference/requirements.txt (default
# python3). Each round runs `cargo bench --bench forward` (which also writes
# the graph and model to target/bench/, so the first round builds it), then
# tools/reference/bench_pyg.py with as many threads as rayon uses. Prints both
# JSON lines and the ratio PyG seconds / seggpu seconds, by wall and by CPU
# time (CPU time varies less on a shared machine), then the load average.
set -euo pipefail
rounds=$1 python=${2:-python3}
cd "$(dirname "$0")/.."
echo "uptime: $(uptime)"
threads=$(nproc)
for round in $(seq "$rounds"); do
  ours=$(cargo bench --locked --bench forward 2>/dev/null | tail -1)
  theirs=$("$python" tools/reference/bench_pyg.py --graph target/bench/tile200k.graph.safetensors \
    --model target/bench/tile200k.model.safetensors --threads "$threads" --repeat 3 | tail -1)
  echo "round $round seggpu $ours"
  echo "round $round pyg    $theirs"
  "$python" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio wall {b['seconds'] / a['seconds']:.2f}x  cpu {b['cpu_seconds'] / a['cpu_seconds']:.2f}x")
PY
done
echo "uptime: $(uptime)"

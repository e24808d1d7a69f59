#!/bin/bash
# End-to-end speed of seggpu binaries on one sample, run alternately.
#
#   tools/e2e_speed.sh ROUNDS DATA_DIR OUTPUTS BIN...
#
# DATA_DIR holds points.parquet, sd_nucleus_boundaries.parquet and
# model.safetensors (tools/tile_crop.py makes one). Each round segments the
# sample once with every BIN in turn (CPU backend); OUTPUTS is passed as
# `--outputs` to every binary except ones that predate the flag (write "-" to
# pass none). Prints per run: wall and CPU seconds, peak RSS, throughput and the
# stage seconds of `-v`; then the load average, and whether each binary's
# segger_transcripts.parquet and cells.parquet are byte-identical to the first
# binary's.
set -euo pipefail
rounds=$1 data=$2 outputs=$3
shift 3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "uptime: $(uptime)"
n=0
for round in $(seq "$rounds"); do
  n=0
  for bin in "$@"; do
    n=$((n + 1))
    args=(segment --preset spatialdata --transcripts "$data/points.parquet"
      --boundaries "$data/sd_nucleus_boundaries.parquet" --model "$data/model.safetensors"
      --backend cpu -v --out "$work/out$n")
    if [ "$outputs" != "-" ] && "$bin" segment --help | grep -q -- '--outputs'; then
      args+=(--outputs "$outputs")
    fi
    /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$bin" "${args[@]}" > "$work/log" 2>&1
    read -r wall user sys rss < "$work/time"
    tx=$(grep -o '[0-9]* transcripts read' "$work/log" | cut -d' ' -f1)
    stages=$(grep -E '^ +[a-z+]+: +[0-9.]+ s' "$work/log" | awk '{printf "%s%s ", $1, $2}')
    echo "round $round bin$n $(basename "$bin") wall $wall cpu $(echo "$user + $sys" | bc) rss_kb $rss tx_per_s $(echo "$tx / $wall" | bc) | $stages"
  done
done
echo "uptime: $(uptime)"
for i in $(seq 2 $n); do
  for f in segger_transcripts.parquet cells.parquet; do
    if cmp -s "$work/out1/$f" "$work/out$i/$f"; then echo "bin$i $f identical to bin1"; else echo "bin$i $f DIFFERS from bin1"; fi
  done
done

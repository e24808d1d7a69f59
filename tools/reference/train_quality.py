#!/usr/bin/env python3
"""Validation accuracy of `seggpu train` against train_real.py (PyG) at the same wall-clock
budget, several seeds per side (tools/reference/README.md, "Quality").

Per sample, a probe run per side (seed 99, --minutes PROBE/60, no step limit) measures its
steps per second; each side's --steps is then 95% of the steps it would fit in the budget,
so that both cosine schedules end near it. Then, per seed, one run per side with
--minutes BUDGET/60, 1 thread each, `nice`, segger_dev's architecture (16, 32, 3 heads,
3 mid layers, out 32), validation only before and after; the side that goes first
alternates. Results are appended to OUT/results.jsonl (a rerun skips what is there);
--summary prints mean ± sd per side and the difference.

    train_quality.py --seggpu target/release/seggpu --demo DIR --out DIR [--budget 120] [--seeds 1,2,3]
    train_quality.py --out DIR --summary

DIR for --demo: `seggpu simulate --cells 1000 --seed 2026 --out DIR` (the --demo sample).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data"))
SIDES = ("seggpu", "pyg")


def samples(demo):
    x, m = f"{DATA}/xenium_breast_spatialdata", f"{DATA}/merscope_mouse_brain_mini"
    return {
        "demo": (["--xenium", demo], ["--preset", "xenium", "--data", demo]),
        "xenium": (["--preset", "spatialdata", "--transcripts", f"{x}/points.parquet",
                    "--boundaries", f"{x}/sd_nucleus_boundaries.parquet"], ["--preset", "spatialdata"]),
        "merscope": (["--preset", "merscope", "--transcripts", f"{m}/vizgen_transcripts.gz",
                      "--boundaries", f"{m}/z0_polygons.gz", "--boundary-y-scale", "-1"],
                     ["--preset", "merscope"]),
    }


def load_average():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def run(a, inputs, sample, side, seed, steps, minutes, kind):
    tag = f"{kind}_{sample}_{side}_{seed}"
    model = os.path.join(a.out, f"{tag}.safetensors")
    start, load_start = time.time(), load_average()
    if side == "seggpu":
        subprocess.run(["nice", "-n", "5", a.seggpu, "--threads", "1", "train", *inputs[sample][0],
                        "--out", model, "--steps", str(steps), "--minutes", str(minutes),
                        "--eval-every", "0", "--seed", str(seed), "-q"], check=True)
        with open(os.path.join(a.out, f"{tag}.training.json")) as f:
            log = json.load(f)
        r = {"steps": log["steps"], "stopped_by": log["stopped_by"],
             "acc": log["validation_stored_weights"]["accuracy"],
             "held_out": log["validation_stored_weights"]["held_out"],
             "train_s": log["seconds"]["train"], "init_val_s": log["validation"][0]["seconds"]}
    else:
        log_path = os.path.join(a.out, f"{tag}.json")
        subprocess.run(["nice", "-n", "5", a.python, os.path.join(HERE, "train_real.py"),
                        *inputs[sample][1], "--threads", "1", "--steps", str(steps),
                        "--minutes", str(minutes), "--eval-every", "1000000000", "--seed", str(seed),
                        "--emb", "16", "--hidden", "32", "--heads", "3", "--mid-layers", "3",
                        "--out-channels", "32", "--dtype", "f32", "--out", model, "--log", log_path],
                       check=True, stdout=subprocess.DEVNULL)
        with open(log_path) as f:
            log = json.load(f)
        final = log["final"]
        # final["seconds"] includes the first and the last validation, about equally long.
        r = {"steps": final["step"], "stopped_by": "steps" if final["step"] >= steps else "minutes",
             "acc": final["val"]["accuracy"], "held_out": final["val"]["n_heldout"],
             "train_s": final["seconds"] - 2 * log["init_val_seconds"],
             "init_val_s": log["init_val_seconds"]}
    os.remove(model)
    r.update({"sample": sample, "side": side, "seed": seed, "kind": kind, "steps_asked": steps,
              "minutes": minutes, "wall_s": round(time.time() - start, 1),
              "load_start": load_start, "load_end": load_average()})
    with open(os.path.join(a.out, "results.jsonl"), "a") as f:
        f.write(json.dumps(r) + "\n")
    print(json.dumps(r), flush=True)
    return r


def summary(out):
    with open(os.path.join(out, "results.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    runs = [r for r in rows if r["kind"] == "run"]
    for sample in dict.fromkeys(r["sample"] for r in runs):
        means = {}
        for side in SIDES:
            acc = [100 * r["acc"] for r in runs if r["sample"] == sample and r["side"] == side]
            steps = [r["steps"] for r in runs if r["sample"] == sample and r["side"] == side]
            if not acc:
                continue
            means[side] = statistics.mean(acc)
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            print(f"{sample:9s} {side:6s} n={len(acc)} accuracy {means[side]:.1f} ± {sd:.1f} % "
                  f"(min {min(acc):.1f}, max {max(acc):.1f}), steps {min(steps)}–{max(steps)}")
        if len(means) == 2:
            print(f"{sample:9s} seggpu − PyG: {means['seggpu'] - means['pyg']:+.1f} points")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder of results.jsonl and the runs' logs")
    ap.add_argument("--summary", action="store_true", help="print the table of OUT and stop")
    ap.add_argument("--seggpu", help="the seggpu binary")
    ap.add_argument("--python", default=sys.executable,
                    help="Python with torch and torch_geometric for train_real.py (default: this one)")
    ap.add_argument("--demo", help="the simulated demo sample (seggpu simulate --cells 1000 --seed 2026)")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds per run (--minutes)")
    ap.add_argument("--probe", type=float, default=45.0, help="seconds of each probe run")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--samples", default="demo,xenium,merscope")
    a = ap.parse_args()
    if a.summary:
        summary(a.out)
        return
    if not a.seggpu or not a.demo:
        ap.error("--seggpu and --demo are needed to run")
    os.makedirs(a.out, exist_ok=True)
    inputs = samples(a.demo)
    done = {}
    results = os.path.join(a.out, "results.jsonl")
    if os.path.exists(results):
        with open(results) as f:
            for line in f:
                r = json.loads(line)
                done[(r["sample"], r["side"], r["seed"], r["kind"])] = r
    chosen = a.samples.split(",")
    plan = {}
    for sample in chosen:
        for side in SIDES:
            r = done.get((sample, side, 99, "probe")) or run(a, inputs, sample, side, 99, 100000,
                                                             a.probe / 60, "probe")
            rate = r["steps"] / max(r["train_s"], 1e-9)
            plan[(sample, side)] = max(10, int(0.95 * rate * (a.budget - r["init_val_s"])))
    print("steps per run:", plan, flush=True)
    for seed in [int(s) for s in a.seeds.split(",")]:
        for i, sample in enumerate(chosen):
            order = SIDES if (seed + i) % 2 else SIDES[::-1]
            for side in order:
                if (sample, side, seed, "run") not in done:
                    run(a, inputs, sample, side, seed, plan[(sample, side)], a.budget / 60, "run")
    summary(a.out)


if __name__ == "__main__":
    main()

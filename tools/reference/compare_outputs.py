#!/usr/bin/env python3
"""Compare two per-transcript outputs (pipeline_ref.py, fragments_ref.py or
seggpu's segger_transcripts.parquet) row by row.

    compare_outputs.py A.parquet B.parquet [--score-col score] [--score-col-b COL]
        [--score-cut 0.5] [--tol 1e-6] [--min-identical 0.999] [--strict-fragments]
        [--max-list N] [--diff-out diffs.csv] [--json summary.json]

A or B may be a directory: its segger_transcripts.parquet is read.  Rows are
joined on transcript_id (compared as text).  Reports: row counts (and ids
missing on either side), the fraction of identical segger_cell_id, an
assignment confusion table, score agreement on the rows both scored, and
every row whose segger_cell_id differs with both sides' segger_cell_id,
assignment, score and (where present) second_best_score, flagged:

  near_tie   both are cells of different nuclei and |score_A − score_B| < tol
             (the two best candidates are (nearly) tied)
  near_cut   |score − score_cut| < tol on either side
  near_2nd   best − second_best < tol on either side
  frag_only  neither side assigns a cell (a fragment / unassigned difference)

Fragments: over the rows that are a fragment in either output, the two
partitions (a non-fragment row is its own singleton) are compared: number of
fragments, identical member sets, rows in fragments that differ.

Exit status 1 when the identical fraction is below --min-identical, when
rows are missing on either side, or (--strict-fragments) when the fragment
partitions differ; 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def _read(path: str):
    if os.path.isdir(path):
        path = os.path.join(path, "segger_transcripts.parquet")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no such file: {path}")
    t = pq.read_table(path)
    return path, t


def _text(col) -> np.ndarray:
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if pa.types.is_floating(t):
        vals = col.to_pylist()
        return np.array([None if v is None else (str(int(v)) if float(v).is_integer() else str(v))
                         for v in vals], dtype=object)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return np.array([None if v is None else v.decode("utf-8", "replace") for v in col.to_pylist()],
                        dtype=object)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        col = pc.cast(col, pa.string())
    return np.array(col.to_pylist(), dtype=object)


def _float(t: pa.Table, name: str, n: int) -> np.ndarray:
    if name not in t.column_names:
        return np.full(n, np.nan)
    return np.asarray(pc.cast(t[name], pa.float64()).to_numpy(zero_copy_only=False), np.float64)


def _load(path: str, score_col: str):
    path, t = _read(path)
    n = t.num_rows
    d = {
        "path": path,
        "tid": _text(t["transcript_id"]),
        "seg": _text(t["segger_cell_id"]),
        "asg": _text(t["assignment"]) if "assignment" in t.column_names else np.full(n, None, object),
        "reason": _text(t["filter_reason"]) if "filter_reason" in t.column_names else None,
        "score": _float(t, score_col, n),
        "second": _float(t, "second_best_score", n),
        "has_second": "second_best_score" in t.column_names,
        "has_score": score_col in t.column_names,
    }
    return d


def _partition_compare(rows_a_lab, rows_b_lab, tids):
    """Labels per row (None = singleton).  -> dict of partition statistics."""
    la = [a if a is not None else ("#row", t) for a, t in zip(rows_a_lab, tids)]
    lb = [b if b is not None else ("#row", t) for b, t in zip(rows_b_lab, tids)]
    ga, gb = {}, {}
    for i, (a, b) in enumerate(zip(la, lb)):
        ga.setdefault(a, set()).add(i)
        gb.setdefault(b, set()).add(i)
    fa = {k: frozenset(v) for k, v in ga.items() if not isinstance(k, tuple)}
    fb = {k: frozenset(v) for k, v in gb.items() if not isinstance(k, tuple)}
    sa, sb = set(fa.values()), set(fb.values())
    same_sets = sa & sb
    bad_rows = set()
    for s in (sa ^ sb):
        bad_rows |= set(s)
    same_ids = sum(1 for k, v in fa.items() if k in fb and fb[k] == v)
    return {
        "rows": len(tids),
        "fragments_a": len(fa),
        "fragments_b": len(fb),
        "identical_member_sets": len(same_sets),
        "identical_ids_and_members": same_ids,
        "rows_in_differing_fragments": len(bad_rows),
        "identical": sa == sb,
    }


def compare(a_path, b_path, score_col="score", score_col_b=None, score_cut=0.5, tol=1e-6):
    A = _load(a_path, score_col)
    B = _load(b_path, score_col_b or score_col)
    out = {"a": A["path"], "b": B["path"], "rows_a": len(A["tid"]), "rows_b": len(B["tid"])}
    ia = {t: i for i, t in enumerate(A["tid"])}
    out["duplicate_ids_a"] = len(A["tid"]) - len(ia)
    ib = {t: i for i, t in enumerate(B["tid"])}
    out["duplicate_ids_b"] = len(B["tid"]) - len(ib)
    common = [t for t in A["tid"] if t in ib]
    out["only_in_a"] = len(ia) - sum(1 for t in ia if t in ib)
    out["only_in_b"] = len(ib) - sum(1 for t in ib if t in ia)
    ra = np.array([ia[t] for t in common], np.int64)
    rb = np.array([ib[t] for t in common], np.int64)
    n = len(common)
    out["n"] = n
    sa, sb = A["seg"][ra], B["seg"][rb]
    same = np.array([x == y for x, y in zip(sa, sb)], bool)
    out["identical"] = int(same.sum())
    out["identical_fraction"] = float(same.mean()) if n else 1.0
    asa, asb = A["asg"][ra], B["asg"][rb]
    conf = {}
    for x, y in zip(asa, asb):
        conf[f"{x}->{y}"] = conf.get(f"{x}->{y}", 0) + 1
    out["assignment_a_to_b"] = dict(sorted(conf.items()))
    if A["reason"] is not None and B["reason"] is not None:
        fa, fb = A["reason"][ra], B["reason"][rb]
        rconf = {}
        for x, y in zip(fa, fb):
            if x != y:
                rconf[f"{x}->{y}"] = rconf.get(f"{x}->{y}", 0) + 1
        out["filter_reason_mismatches"] = dict(sorted(rconf.items()))
    ca, cb = A["score"][ra], B["score"][rb]
    both = ~np.isnan(ca) & ~np.isnan(cb)
    out["scores"] = {
        "both_scored": int(both.sum()),
        "null_mismatch": int((np.isnan(ca) != np.isnan(cb)).sum()),
        "max_abs_diff": float(np.abs(ca - cb)[both].max()) if both.any() else 0.0,
        "mean_abs_diff": float(np.abs(ca - cb)[both].mean()) if both.any() else 0.0,
        "n_abs_diff_gt_1e-5": int((np.abs(ca - cb)[both] > 1e-5).sum()),
    }
    # differences
    diffs = []
    qa, qb = A["second"][ra], B["second"][rb]
    for r in np.nonzero(~same)[0]:
        flags = []
        cell_a, cell_b = asa[r] == "cell", asb[r] == "cell"
        if cell_a and cell_b and abs(ca[r] - cb[r]) < tol:
            flags.append("near_tie")
        if (not np.isnan(ca[r]) and abs(ca[r] - score_cut) < tol) or \
           (not np.isnan(cb[r]) and abs(cb[r] - score_cut) < tol):
            flags.append("near_cut")
        if (not np.isnan(qa[r]) and ca[r] - qa[r] < tol) or (not np.isnan(qb[r]) and cb[r] - qb[r] < tol):
            flags.append("near_2nd")
        if not cell_a and not cell_b:
            flags.append("frag_only")
        diffs.append({
            "transcript_id": common[r],
            "a_segger_cell_id": sa[r], "a_assignment": asa[r],
            "a_score": None if np.isnan(ca[r]) else float(ca[r]),
            "a_second_best": None if np.isnan(qa[r]) else float(qa[r]),
            "b_segger_cell_id": sb[r], "b_assignment": asb[r],
            "b_score": None if np.isnan(cb[r]) else float(cb[r]),
            "b_second_best": None if np.isnan(qb[r]) else float(qb[r]),
            "flags": ",".join(flags),
        })
    out["n_differences"] = len(diffs)
    kinds = {}
    for d in diffs:
        key = d["flags"] or "unexplained"
        kinds[key] = kinds.get(key, 0) + 1
    out["differences_by_flags"] = dict(sorted(kinds.items()))
    # fragments
    fr = np.array([x == "fragment" or y == "fragment" for x, y in zip(asa, asb)], bool)
    idx = np.nonzero(fr)[0]
    out["fragments"] = _partition_compare(
        [sa[i] if asa[i] == "fragment" else None for i in idx],
        [sb[i] if asb[i] == "fragment" else None for i in idx],
        [common[i] for i in idx])
    return out, diffs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--score-col", default="score", help="score column (of A, and of B unless --score-col-b)")
    ap.add_argument("--score-col-b", default=None)
    ap.add_argument("--score-cut", type=float, default=0.5)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--min-identical", type=float, default=0.999)
    ap.add_argument("--strict-fragments", action="store_true", help="exit 1 if fragment partitions differ")
    ap.add_argument("--max-list", type=int, default=None, help="print at most N differences (all by default)")
    ap.add_argument("--diff-out", default=None, help="write every difference as CSV")
    ap.add_argument("--json", default=None, help="write the summary as JSON")
    a = ap.parse_args(argv)
    out, diffs = compare(a.a, a.b, a.score_col, a.score_col_b, a.score_cut, a.tol)
    print(json.dumps(out, indent=1))
    shown = diffs if a.max_list is None else diffs[:a.max_list]
    if shown:
        cols = list(shown[0].keys())
        print("\t".join(cols))
        for d in shown:
            print("\t".join("" if d[c] is None else (f"{d[c]:.9g}" if isinstance(d[c], float) else str(d[c]))
                            for c in cols))
        if len(shown) < len(diffs):
            print(f"... {len(diffs) - len(shown)} more (use --diff-out)")
    if a.diff_out:
        import csv
        with open(a.diff_out, "w", newline="") as f:
            cols = ["transcript_id", "a_segger_cell_id", "a_assignment", "a_score", "a_second_best",
                    "b_segger_cell_id", "b_assignment", "b_score", "b_second_best", "flags"]
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(diffs)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    rc = 0
    if out["identical_fraction"] < a.min_identical:
        print(f"FAIL: identical fraction {out['identical_fraction']:.6f} < {a.min_identical}", file=sys.stderr)
        rc = 1
    if out["only_in_a"] or out["only_in_b"]:
        print(f"FAIL: rows missing (only in A: {out['only_in_a']}, only in B: {out['only_in_b']})", file=sys.stderr)
        rc = 1
    if a.strict_fragments and not out["fragments"]["identical"]:
        print("FAIL: fragment partitions differ", file=sys.stderr)
        rc = 1
    if rc == 0:
        print(f"OK: {out['identical']}/{out['n']} identical ({out['identical_fraction']:.6f}); "
              f"fragment partitions {'identical' if out['fragments']['identical'] else 'differ'}",
              file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())

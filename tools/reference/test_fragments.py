#!/usr/bin/env python3
"""Self-test of fragments_ref.py's fragment rule (docs/contract.md §5/§9) on hand-built
cases whose answers are worked out in the comments (run: python
test_fragments.py, or pytest)."""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fragments_ref as fr  # noqa: E402

# gene 0 = (1, 0), gene 1 = (0.6, 0.8): cos(0, 0) = 1, cos(0, 1) = 0.6
EMBEDDINGS = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)


def test_duplicates_keep_k_others_when_self_is_crowded_out():
    """7 transcripts at one point, k = 5: every list is [0, 1, 2, 3, 4] (all at
    distance 0, lower index first). Rows 0–4 hold themselves and keep 4
    others; rows 5 and 6 do not hold themselves and keep all 5."""
    pos = np.zeros((7, 3))
    tx_tx = fr.knn_exact(pos, pos, 5, 5.0, inclusive=True)
    assert (tx_tx == np.arange(5)).all()
    nb = fr.fragment_neighbours(tx_tx)
    for i in range(5):
        assert sorted(nb[i][nb[i] >= 0].tolist()) == [j for j in range(5) if j != i]
    for i in (5, 6):
        assert nb[i].tolist() == [0, 1, 2, 3, 4]


def test_neighbours_come_from_all_kept_transcripts():
    """Unassigned 0 (x = 0) and 3 (x = 1) with assigned 1, 2 (x = 0.1, 0.2)
    between them; k = 3, so 2 others each. 0's others are 1, 2 and 3's are
    2, 1: no edge joins two unassigned transcripts, so no fragment (a kNN
    among the unassigned would have joined 0 and 3). With 1 and 2 unassigned
    too, all four join: fragment-<smallest id> = fragment-5."""
    pos = np.array([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [1.0, 0, 0]])
    tokens = np.zeros(4, np.int64)
    tids = np.array([8, 7, 5, 6], np.int64)
    labels, info = fr.fragments(pos, tokens, tids, EMBEDDINGS, np.array([True, False, False, True]),
                                3, 5.0, 0.5, 2)
    assert labels.tolist() == [None] * 4
    assert info["n_similarities"] == 8 and info["n_edges"] == 0
    labels, _ = fr.fragments(pos, tokens, tids, EMBEDDINGS, np.ones(4, bool), 3, 5.0, 0.5, 2)
    assert labels.tolist() == ["fragment-5"] * 4


def test_median_counts_assigned_transcripts():
    """Unassigned 0, 1, 2 at x = 0, 0.1, 0.2 with genes 0, 1, 0; six assigned
    gene-0 transcripts far away; k = 3. Slots: the unassigned ones give
    0.6, 1, 0.6, 0.6, 0.6, 1; the assigned ones 12 × 1. Lower median of the
    18 = 1, in the last bin: m = −1 + 65535 · 2 / 65536. Cut 0 → threshold m,
    so only the 0–2 edge (similarity 1) stays: fragment {0, 2} with id
    fragment-10 (smallest of ids 30, 10), 1 left unassigned. A median over
    the unassigned slots alone (0.6) would have joined all three."""
    pos = np.array([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]
                   + [[100.0 + 0.1 * i, 0, 0] for i in range(6)])
    tokens = np.array([0, 1, 0] + [0] * 6, np.int64)
    tids = np.array([30, 20, 10, 1, 2, 3, 4, 5, 6], np.int64)
    unassigned = np.array([True] * 3 + [False] * 6)
    labels, info = fr.fragments(pos, tokens, tids, EMBEDDINGS, unassigned, 3, 5.0, 0.0, 2)
    assert info["n_similarities"] == 18 and info["n_edges"] == 6
    assert info["median_hist"] == -1 + 65535 * 2 / 65536
    assert labels.tolist() == ["fragment-10", None, "fragment-10"] + [None] * 6


if __name__ == "__main__":
    n = 0
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            print(f"ok {name}")
            n += 1
    print(f"{n} passed, 0 failed")

#!/usr/bin/env python3
"""Self-test of convert_checkpoint.py (run: python test_convert.py, or pytest)."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import convert_checkpoint as cc  # noqa: E402
import segger_ref as sr  # noqa: E402
from weights_io import load_seggpu_weights  # noqa: E402

ARCH = sr.Arch(num_tx_tokens=12, in_channels=8, hidden_channels=6, num_mid_layers=2,
               out_channels=5, heads=2)


def _state():
    return {k: v.clone() for k, v in sr.build_model(ARCH, seed=3).state_dict().items()}


def _write(tmp, state, genes, extra=None, name="m.ckpt"):
    ck = {"state_dict": {"model." + k: v for k, v in state.items()}, "epoch": 3}
    ck["state_dict"]["other.loss_weight"] = torch.ones(1)  # outside model.: ignored
    if extra:
        ck.update(extra)
    p = os.path.join(tmp, name)
    torch.save(ck, p)
    g = os.path.join(tmp, "genes.txt")
    with open(g, "w") as f:
        f.write("\n".join(genes) + "\n")
    return p, g


def _expect_error(fn, *needles):
    try:
        fn()
    except cc.ConvertError as e:
        msg = str(e)
        for n in needles:
            assert n in msg, f"{n!r} not in error message {msg!r}"
        return msg
    raise AssertionError("expected ConvertError")


def test_roundtrip_f32():
    st = _state()
    genes = [f"G{i:02d}" for i in range(10)]  # shorter than V = 12: allowed
    with tempfile.TemporaryDirectory() as tmp:
        ck, g = _write(tmp, st, genes)
        out = os.path.join(tmp, "w.safetensors")
        arch = cc.convert(ck, g, out, quiet=True)
        assert arch == ARCH
        st2, meta = load_seggpu_weights(out)
        assert set(st2) == set(sr.expected_names(ARCH))
        for k in st2:
            assert torch.equal(st2[k], st[k]), k
        assert meta["seggpu.format"] == "segger-hetero/1"
        assert json.loads(meta["seggpu.genes"]) == genes
        assert meta["seggpu.bd_features"] == "props"
        assert "seggpu.defaults" not in meta


def test_f16_and_options():
    st = _state()
    genes = [f"G{i:02d}" for i in range(12)]
    with tempfile.TemporaryDirectory() as tmp:
        ck, g = _write(tmp, st, genes)
        out = os.path.join(tmp, "w.safetensors")
        rc = cc.main([ck, "--genes", g, "--dtype", "f16", "--bd-features", "zeros",
                      "--defaults", '{"dist_bd": 12, "score_cut": 0.5}', "--out", out])
        assert rc == 0
        st2, meta = load_seggpu_weights(out)
        for k in st2:
            assert torch.equal(st2[k], st[k].half().float()), k
        assert meta["seggpu.bd_features"] == "zeros"
        assert json.loads(meta["seggpu.defaults"]) == {"dist_bd": 12, "score_cut": 0.5}
        from safetensors import safe_open
        with safe_open(out, "pt") as f:
            assert f.get_tensor("conv_last.tx__belongs__bd.att").dtype == torch.float16


def test_missing_tensor_named():
    st = _state()
    del st["conv_mid_layers.1.tx__belongs__bd.lin_r.bias"]
    del st["lin0.bd.weight"]
    with tempfile.TemporaryDirectory() as tmp:
        ck, g = _write(tmp, st, ["A", "B"])
        _expect_error(lambda: cc.convert(ck, g, os.path.join(tmp, "o"), quiet=True),
                      "conv_mid_layers.1.tx__belongs__bd.lin_r.bias", "lin0.bd.weight")


def test_wrong_shape_named():
    st = _state()
    st["conv_last.tx__neighbors__tx.lin_r.weight"] = torch.zeros(10, 7)
    with tempfile.TemporaryDirectory() as tmp:
        ck, g = _write(tmp, st, ["A"])
        _expect_error(lambda: cc.convert(ck, g, os.path.join(tmp, "o"), quiet=True),
                      "conv_last.tx__neighbors__tx.lin_r.weight", "[10, 12]", "[10, 7]")


def test_vocabulary_too_long():
    st = _state()
    with tempfile.TemporaryDirectory() as tmp:
        ck, g = _write(tmp, st, [f"G{i}" for i in range(13)])
        _expect_error(lambda: cc.convert(ck, g, os.path.join(tmp, "o"), quiet=True), "13", "12")


def test_genes_required_and_unique():
    st = _state()
    with tempfile.TemporaryDirectory() as tmp:
        ck, g = _write(tmp, st, ["A", "B", "A"])
        _expect_error(lambda: cc.convert(ck, None, os.path.join(tmp, "o"), quiet=True), "--genes")
        _expect_error(lambda: cc.convert(ck, g, os.path.join(tmp, "o"), quiet=True), "duplicate")
        assert cc.main([ck, "--out", os.path.join(tmp, "o")]) == 2


def test_unknown_pickled_classes():
    """A checkpoint pickling objects of classes that are not installed still converts."""
    mod = types.ModuleType("fake_lightning_mod")

    class HParams:
        def __init__(self):
            self.lr = 0.001
    HParams.__module__ = "fake_lightning_mod"
    HParams.__qualname__ = "HParams"
    mod.HParams = HParams
    sys.modules["fake_lightning_mod"] = mod
    st = _state()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ck, g = _write(tmp, st, ["A", "B"], extra={"hyper_parameters": HParams()})
        finally:
            del sys.modules["fake_lightning_mod"]
        out = os.path.join(tmp, "w.safetensors")
        cc.convert(ck, g, out, quiet=True)
        st2, _ = load_seggpu_weights(out)
        assert torch.equal(st2["tx_embedding.tx.weight"], st["tx_embedding.tx.weight"])


def test_converted_model_runs():
    st = _state()
    with tempfile.TemporaryDirectory() as tmp:
        ck, g = _write(tmp, st, ["A", "B"])
        out = os.path.join(tmp, "w.safetensors")
        cc.convert(ck, g, out, quiet=True)
        st2, _ = load_seggpu_weights(out)
        m = sr.model_from_state(st2)
        tok = torch.tensor([0, 1, 1, 0])
        bd = torch.rand(2, 4)
        tt = torch.tensor([[0, 1, 2, 3, 0], [1, 2, 3, 0, 0]])
        tb = torch.tensor([[0, 2], [0, 0]])
        a = sr.forward_intermediates(m, tok, bd, tt, tb)
        ref = sr.build_model(ARCH)
        ref.load_state_dict(st)
        b = sr.forward_intermediates(ref, tok, bd, tt, tb)
        assert torch.equal(a["z_tx"], b["z_tx"]) and torch.equal(a["z_bd"], b["z_bd"])
        assert a["z_tx"].shape == (4, ARCH.heads * ARCH.out_channels)


if __name__ == "__main__":
    n = 0
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            print(f"ok {name}")
            n += 1
    print(f"{n} passed, 0 failed")

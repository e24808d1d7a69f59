#!/usr/bin/env python3
"""Convert a segger_dev Lightning checkpoint (.ckpt) to a seggpu weights file.

    convert_checkpoint.py CKPT --genes GENES.txt [--bd-features props|zeros]
                          [--dtype f32|f16|bf16] [--defaults JSON] --out OUT.safetensors

GENES.txt: one gene name per line, in token order (token id = line number,
starting at 0; blank lines are ignored).  segger_dev's vocabulary is the
lexicographically sorted set of non-control gene names of the training panel.

The checkpoint's state_dict keys carry Lightning's ``model.`` prefix, which is
removed; keys outside ``model.`` are ignored.  The tensor set is checked
against docs/contract.md §6 (a missing tensor or a wrong shape is an error naming
it), the architecture is read from the shapes, and the vocabulary must not be
longer than V (the rows of tx_embedding.tx.weight).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import segger_ref as sr  # noqa: E402
from weights_io import BD_FEATURES, DTYPES, save_seggpu_weights  # noqa: E402


class ConvertError(Exception):
    pass


# --- lenient unpickling: a Lightning checkpoint may pickle objects (hyper-
# parameters, callbacks) whose classes (lightning, segger, ...) are not
# installed here.  They are replaced by inert stand-ins; tensors load as usual.
class _Missing:
    def __init__(self, *a, **k):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def __call__(self, *a, **k):
        return self


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Missing,), {"__module__": f"missing.{module}"})


_lenient_pickle = types.ModuleType("lenient_pickle")
_lenient_pickle.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
_lenient_pickle.Unpickler = _LenientUnpickler
_lenient_pickle.load = lambda f, **kw: _LenientUnpickler(f, **kw).load()
_lenient_pickle.loads = lambda b, **kw: _LenientUnpickler(io.BytesIO(b), **kw).load()


def load_checkpoint(path: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError):
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        sd = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt  # a bare state_dict
    else:
        raise ConvertError(f"{path}: no 'state_dict' in the checkpoint")
    return sd


def strip_prefix(sd: dict, prefix: str = "model.") -> dict:
    out = {}
    has_prefix = any(k.startswith(prefix) for k in sd)
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        if has_prefix:
            if not k.startswith(prefix):
                continue
            k = k[len(prefix):]
        out[k] = v.detach().to("cpu")
    return out


def read_genes(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        genes = [line.strip() for line in f]
    genes = [g for g in genes if g]
    if not genes:
        raise ConvertError(f"{path}: no gene names")
    seen, dup = set(), []
    for g in genes:
        if g in seen:
            dup.append(g)
        seen.add(g)
    if dup:
        raise ConvertError(f"{path}: duplicate gene names: {dup[:20]}")
    return genes


def convert(ckpt_path: str, genes_path: str, out_path: str, bd_features: str = "props",
            dtype: str = "f32", defaults: dict | None = None, quiet: bool = False) -> sr.Arch:
    if not genes_path:
        raise ConvertError("--genes is required: a checkpoint does not carry its gene vocabulary")
    state = strip_prefix(load_checkpoint(ckpt_path))
    try:
        arch = sr.infer_arch(state)
    except (KeyError, ValueError) as e:
        raise ConvertError(f"{ckpt_path}: cannot read the architecture: {e}") from None
    try:
        extra = sr.check_state(state, arch)
    except ValueError as e:
        raise ConvertError(f"{ckpt_path}: {e}") from None
    genes = read_genes(genes_path)
    if len(genes) > arch.num_tx_tokens:
        raise ConvertError(f"vocabulary has {len(genes)} genes but the model has V = "
                           f"{arch.num_tx_tokens} (tx_embedding.tx.weight rows)")
    keep = {k: state[k] for k in sr.expected_names(arch)}
    for k, v in keep.items():
        if not torch.is_floating_point(v):
            raise ConvertError(f"{k}: not a floating-point tensor ({v.dtype})")
        if not torch.isfinite(v.float()).all():
            raise ConvertError(f"{k}: contains NaN or Inf")
    save_seggpu_weights(keep, genes, out_path, bd_features=bd_features, dtype=dtype, defaults=defaults)
    if not quiet:
        print(json.dumps({"out": out_path, "arch": arch.as_dict(), "genes": len(genes),
                          "dtype": dtype, "bd_features": bd_features,
                          "ignored_tensors": extra}))
    return arch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--genes", help="gene names, one per line, token order (required)")
    ap.add_argument("--bd-features", choices=BD_FEATURES, default="props")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--defaults", help="JSON object stored as seggpu.defaults")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        defaults = json.loads(a.defaults) if a.defaults else None
        if defaults is not None and not isinstance(defaults, dict):
            raise ConvertError("--defaults must be a JSON object")
        convert(a.ckpt, a.genes, a.out, a.bd_features, a.dtype, defaults)
    except (ConvertError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

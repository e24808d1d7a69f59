"""Read and write seggpu weights files (docs/contract.md §7).

A weights file is a safetensors file holding the heterogeneous Segger
state_dict (names as in docs/contract.md §6) in F32, F16 or BF16, with string
metadata:

    seggpu.format       = "segger-hetero/1"
    seggpu.genes        = JSON array of gene names, token order (required)
    seggpu.bd_features  = "props" | "zeros"
    seggpu.defaults     = JSON object (optional)
"""
from __future__ import annotations

import json
import struct
from typing import Dict, Iterable, Optional, Tuple

import torch
from safetensors import safe_open

FORMAT = "segger-hetero/1"
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
BD_FEATURES = ("props", "zeros")


_ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8",
}


def save_file(tensors: Dict[str, torch.Tensor], path: str, metadata: Optional[Dict[str, str]] = None):
    """Write a safetensors file byte-for-byte reproducibly.

    (safetensors' own writer does not keep the metadata order stable between
    runs.)  Header keys and tensors are laid out in sorted name order, the
    header is padded with spaces to a multiple of 8 bytes.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _ST_DTYPES:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)


def cast_state(state: Dict[str, torch.Tensor], dtype: str) -> Dict[str, torch.Tensor]:
    """The tensors exactly as they will be stored (contiguous, given dtype)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return {k: v.detach().to("cpu").to(DTYPES[dtype]).contiguous() for k, v in state.items()}


def save_seggpu_weights(state_dict: Dict[str, torch.Tensor], genes: Iterable[str], path: str,
                        bd_features: str = "props", dtype: str = "f32",
                        defaults: Optional[dict] = None) -> Dict[str, str]:
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError("gene vocabulary is empty")
    if len(set(genes)) != len(genes):
        dup = sorted({g for g in genes if genes.count(g) > 1})
        raise ValueError(f"duplicate gene names in vocabulary: {dup[:20]}")
    if bd_features not in BD_FEATURES:
        raise ValueError(f"bd_features must be one of {BD_FEATURES}, got {bd_features!r}")
    emb = state_dict.get("tx_embedding.tx.weight")
    if emb is not None and len(genes) > emb.shape[0]:
        raise ValueError(f"vocabulary has {len(genes)} genes but tx_embedding.tx.weight has "
                         f"V = {emb.shape[0]} rows")
    meta = {
        "seggpu.format": FORMAT,
        "seggpu.genes": json.dumps(genes),
        "seggpu.bd_features": bd_features,
    }
    if defaults is not None:
        if not isinstance(defaults, dict):
            raise ValueError("defaults must be a JSON object (dict)")
        meta["seggpu.defaults"] = json.dumps(defaults, sort_keys=True)
    tensors = cast_state(state_dict, dtype)
    save_file(tensors, path, metadata=meta)
    return meta


def load_seggpu_weights(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """-> (state_dict as float32, raw string metadata)."""
    state = {}
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata() or {})
        for k in f.keys():
            state[k] = f.get_tensor(k).to(torch.float32)
    if meta.get("seggpu.format") != FORMAT:
        raise ValueError(f"{path}: seggpu.format is {meta.get('seggpu.format')!r}, "
                         f"expected {FORMAT!r}")
    if "seggpu.genes" not in meta:
        raise ValueError(f"{path}: metadata seggpu.genes missing")
    return state, meta


def genes_of(meta: Dict[str, str]):
    return json.loads(meta["seggpu.genes"])


def bd_features_of(meta: Dict[str, str]) -> str:
    return meta.get("seggpu.bd_features", "props")


GRAPH_INPUTS = ("tx_token", "bd_x", "edge_tx_tx", "edge_tx_bd")


def load_graph(path: str) -> Dict[str, torch.Tensor]:
    """Load a graph file (tx_token, bd_x, edge_tx_tx, edge_tx_bd, optional rf_index, ...)."""
    with safe_open(path, framework="pt") as f:
        g = {k: f.get_tensor(k) for k in f.keys()}
    missing = [k for k in GRAPH_INPUTS if k not in g]
    if missing:
        raise ValueError(f"{path}: missing graph tensors {missing}")
    g["tx_token"] = g["tx_token"].long()
    g["bd_x"] = g["bd_x"].float()
    g["edge_tx_tx"] = g["edge_tx_tx"].long()
    g["edge_tx_bd"] = g["edge_tx_bd"].long()
    if "rf_index" in g:
        g["rf_index"] = g["rf_index"].long()
    return g

"""Independent float64 implementation of docs/contract.md §6 (no PyG).

Used by make_fixtures.py to cross-check the PyG reference: the formulas of the
spec, written out with plain torch scatter operations.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from segger_ref import REL_TB, REL_TT, infer_arch


def gatv2(p: Dict[str, Tensor], prefix: str, x_src: Tensor, x_dst: Tensor, ei: Tensor,
          heads: int) -> Tensor:
    att = p[f"{prefix}.att"].double()            # [1, H, C]
    H, C = att.shape[1], att.shape[2]
    assert H == heads
    xl = (x_src @ p[f"{prefix}.lin_l.weight"].double().T + p[f"{prefix}.lin_l.bias"].double())
    xr = (x_dst @ p[f"{prefix}.lin_r.weight"].double().T + p[f"{prefix}.lin_r.bias"].double())
    xl = xl.view(-1, H, C)
    xr = xr.view(-1, H, C)
    n_dst = x_dst.shape[0]
    src, dst = ei[0].long(), ei[1].long()
    s = xl[src] + xr[dst]                          # [E, H, C]
    s = torch.where(s > 0, s, 0.2 * s)
    e = (s * att[0]).sum(-1)                       # [E, H]
    mx = torch.full((n_dst, H), float("-inf"), dtype=torch.float64)
    mx = mx.scatter_reduce(0, dst[:, None].expand(-1, H), e, reduce="amax", include_self=True)
    ex = torch.exp(e - mx[dst])
    den = torch.zeros(n_dst, H, dtype=torch.float64).index_add(0, dst, ex)
    alpha = ex / (den[dst] + 1e-16)
    out = torch.zeros(n_dst, H, C, dtype=torch.float64).index_add(0, dst, alpha[..., None] * xl[src])
    return out.reshape(n_dst, H * C) + p[f"{prefix}.bias"].double()


def forward(p: Dict[str, Tensor], tx_token: Tensor, bd_x: Tensor, e_tt: Tensor, e_tb: Tensor):
    arch = infer_arch(p)
    h_tx = p["tx_embedding.tx.weight"].double()[tx_token.long()].relu()
    h_bd = (torch.nan_to_num(bd_x.double(), nan=0.0) @ p["lin0.bd.weight"].double().T).relu()
    out = {"h_tx.0": h_tx, "h_bd.0": h_bd}
    names = arch.layer_names()
    for li, name in enumerate(names, start=1):
        n_tx = gatv2(p, f"{name}.{REL_TT}", h_tx, h_tx, e_tt, arch.heads)
        n_bd = gatv2(p, f"{name}.{REL_TB}", h_tx, h_bd, e_tb, arch.heads)
        if li < len(names):
            n_tx, n_bd = n_tx.relu(), n_bd.relu()
        h_tx, h_bd = n_tx, n_bd
        out[f"h_tx.{li}"], out[f"h_bd.{li}"] = h_tx, h_bd
    out["z_tx"], out["z_bd"] = h_tx, h_bd
    return out

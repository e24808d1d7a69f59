"""Reference implementation of the heterogeneous Segger model (docs/contract.md §6).

The module below has the structure of segger_dev's ``Segger`` (module names,
lazy layer sizes, the 1-D/2-D input dispatch) so that ``to_hetero`` produces a
state_dict whose keys and shapes are exactly those of a segger_dev checkpoint
(with the Lightning ``model.`` prefix removed):

    tx_embedding.tx.weight  [V, E]     (used: token embedding)
    tx_embedding.bd.weight  [V, E]     (present, unused)
    lin0.tx.weight          [E, 1]     (present, unused)
    lin0.bd.weight          [E, 4]     (used: nucleus features)
    conv_first.<R>.{att, bias, lin_l.weight, lin_l.bias, lin_r.weight, lin_r.bias}
    conv_mid_layers.<i>.<R>.{...}      (i = 0 .. M-1, absent when M == 0)
    conv_last.<R>.{...}
with R in {tx__neighbors__tx, tx__belongs__bd}.

``forward_intermediates`` recomputes the same forward step by step from the
per-type sub-modules and returns every intermediate activation.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, asdict
from typing import Dict, List, Optional

import torch
from torch import Tensor
from torch.nn import Embedding, ModuleList

# PyG's import triggers torch's "torch.jit.script is deprecated" FutureWarning.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
from torch_geometric.nn import GATv2Conv, Linear, to_hetero  # noqa: E402

NODE_TYPES = ["tx", "bd"]
EDGE_TT = ("tx", "neighbors", "tx")
EDGE_TB = ("tx", "belongs", "bd")
EDGE_TYPES = [EDGE_TT, EDGE_TB]
METADATA = (NODE_TYPES, EDGE_TYPES)
REL_TT = "tx__neighbors__tx"
REL_TB = "tx__belongs__bd"
RELS = [REL_TT, REL_TB]
CONV_PARAMS = ["att", "bias", "lin_l.weight", "lin_l.bias", "lin_r.weight", "lin_r.bias"]
N_BD_FEATURES = 4


@dataclass(frozen=True)
class Arch:
    num_tx_tokens: int          # V
    in_channels: int = 16       # E
    hidden_channels: int = 32   # C_hidden
    num_mid_layers: int = 3     # M
    out_channels: int = 32      # C_out
    heads: int = 3              # H

    @property
    def n_layers(self) -> int:
        return self.num_mid_layers + 2

    def layer_names(self) -> List[str]:
        return (["conv_first"]
                + [f"conv_mid_layers.{i}" for i in range(self.num_mid_layers)]
                + ["conv_last"])

    def as_dict(self) -> dict:
        return asdict(self)


class Segger(torch.nn.Module):
    """Homogeneous Segger network; made heterogeneous with ``to_hetero``."""

    def __init__(self, num_tx_tokens: int, in_channels: int = 16, hidden_channels: int = 32,
                 num_mid_layers: int = 3, out_channels: int = 32, heads: int = 3):
        super().__init__()
        self.tx_embedding = Embedding(num_tx_tokens, in_channels)
        self.lin0 = Linear(-1, in_channels, bias=False)
        self.conv_first = GATv2Conv((-1, -1), hidden_channels, heads=heads, add_self_loops=False)
        self.num_mid_layers = num_mid_layers
        if num_mid_layers > 0:
            self.conv_mid_layers = ModuleList(
                [GATv2Conv((-1, -1), hidden_channels, heads=heads, add_self_loops=False)
                 for _ in range(num_mid_layers)])
        self.conv_last = GATv2Conv((-1, -1), out_channels, heads=heads, add_self_loops=False)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        # Node inputs are either token ids (1-D, transcripts) or feature rows
        # (2-D, nuclei).  The choice is made arithmetically (no Python branch
        # on a traced value) so that torch.fx / to_hetero can trace it; both
        # the embedding and the linear map exist for every node type, which is
        # why the checkpoint also holds tx_embedding.bd and lin0.tx.
        x = torch.nan_to_num(x, nan=0.0)
        one_d = (x.ndim == 1) * 1
        x = x[:, None]                       # [N, 1] tokens or [N, 1, F] features
        tokens = (x.sum(-1) * one_d).int()   # all zeros for feature rows
        h = self.tx_embedding(tokens) * one_d + self.lin0(x.float()) * (1 - one_d)
        h = h.reshape(h.shape[0], h.shape[-1])
        h = h.relu()
        h = self.conv_first(h, edge_index).relu()
        if self.num_mid_layers > 0:
            for conv in self.conv_mid_layers:
                h = conv(h, edge_index).relu()
        return self.conv_last(h, edge_index)


def _dummy_inputs(num_tx_tokens: int):
    tok = torch.tensor([0, min(1, num_tx_tokens - 1), 0], dtype=torch.long)
    bd = torch.zeros(2, N_BD_FEATURES)
    x_dict = {"tx": tok, "bd": bd}
    ei = {
        EDGE_TT: torch.tensor([[0, 1, 2], [1, 2, 0]], dtype=torch.long),
        EDGE_TB: torch.tensor([[0, 1], [0, 1]], dtype=torch.long),
    }
    return x_dict, ei


def build_model(arch: Arch, seed: Optional[int] = None) -> torch.nn.Module:
    """Heterogeneous Segger, lazy modules initialised by a dummy forward."""
    if seed is not None:
        torch.manual_seed(seed)
    base = Segger(arch.num_tx_tokens, arch.in_channels, arch.hidden_channels,
                  arch.num_mid_layers, arch.out_channels, arch.heads)
    model = to_hetero(base, metadata=METADATA, aggr="sum")
    x_dict, ei = _dummy_inputs(arch.num_tx_tokens)
    with torch.no_grad():
        model(x_dict, ei)
    model.eval()
    return model


def expected_names(arch: Arch) -> Dict[str, tuple]:
    """All state_dict tensor names with their shapes (docs/contract.md §6)."""
    V, E, H = arch.num_tx_tokens, arch.in_channels, arch.heads
    out = {
        "tx_embedding.tx.weight": (V, E),
        "tx_embedding.bd.weight": (V, E),
        "lin0.tx.weight": (E, 1),
        "lin0.bd.weight": (E, N_BD_FEATURES),
    }
    in_dim = E
    for li, name in enumerate(arch.layer_names()):
        C = arch.out_channels if li == arch.n_layers - 1 else arch.hidden_channels
        for rel in RELS:
            p = f"{name}.{rel}"
            out[f"{p}.att"] = (1, H, C)
            out[f"{p}.bias"] = (H * C,)
            out[f"{p}.lin_l.weight"] = (H * C, in_dim)
            out[f"{p}.lin_l.bias"] = (H * C,)
            out[f"{p}.lin_r.weight"] = (H * C, in_dim)
            out[f"{p}.lin_r.bias"] = (H * C,)
        in_dim = H * C
    return out


# Tensors the forward pass actually reads (the others are required by the
# checkpoint layout but never used).
UNUSED = {"tx_embedding.bd.weight", "lin0.tx.weight"}

_MID_RE = re.compile(r"^conv_mid_layers\.(\d+)\.")


def infer_arch(state: Dict[str, Tensor]) -> Arch:
    """Read V, E, M, H, C_hidden, C_out from tensor shapes (never guessed)."""
    def need(name):
        if name not in state:
            raise KeyError(f"missing tensor {name!r}")
        return state[name]

    emb = need("tx_embedding.tx.weight")
    if emb.ndim != 2:
        raise ValueError(f"tx_embedding.tx.weight must be 2-D, got {tuple(emb.shape)}")
    V, E = emb.shape
    mids = sorted({int(m.group(1)) for k in state for m in [_MID_RE.match(k)] if m})
    M = len(mids)
    if mids != list(range(M)):
        raise ValueError(f"conv_mid_layers indices are not 0..M-1: {mids}")
    att_first = need(f"conv_first.{REL_TT}.att")
    att_last = need(f"conv_last.{REL_TT}.att")
    if att_first.ndim != 3 or att_last.ndim != 3:
        raise ValueError("att tensors must have shape [1, H, C]")
    H, C_hidden = att_first.shape[1], att_first.shape[2]
    H_last, C_out = att_last.shape[1], att_last.shape[2]
    if H_last != H:
        raise ValueError(f"heads differ between conv_first ({H}) and conv_last ({H_last})")
    return Arch(int(V), int(E), int(C_hidden), int(M), int(C_out), int(H))


def check_state(state: Dict[str, Tensor], arch: Arch, allow_missing_unused: bool = False) -> List[str]:
    """Raise ValueError naming every missing/ill-shaped tensor; return unexpected names."""
    exp = expected_names(arch)
    missing = [k for k in exp if k not in state and not (allow_missing_unused and k in UNUSED)]
    bad = [f"{k}: expected {list(exp[k])}, got {list(state[k].shape)}"
           for k in exp if k in state and tuple(state[k].shape) != tuple(exp[k])]
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if bad:
        problems.append("wrong shapes: " + "; ".join(bad))
    if problems:
        raise ValueError("; ".join(problems))
    return sorted(k for k in state if k not in exp)


def model_from_state(state: Dict[str, Tensor]) -> torch.nn.Module:
    arch = infer_arch(state)
    check_state(state, arch, allow_missing_unused=True)
    model = build_model(arch)
    own = model.state_dict()
    merged = {k: (state[k].to(torch.float32) if k in state else own[k]) for k in own}
    model.load_state_dict(merged, strict=True)
    return model


def _sub(model: torch.nn.Module, path: str) -> torch.nn.Module:
    return model.get_submodule(path)


@torch.no_grad()
def forward_intermediates(model: torch.nn.Module, tx_token: Tensor, bd_x: Tensor,
                          edge_tx_tx: Tensor, edge_tx_bd: Tensor) -> Dict[str, Tensor]:
    """Run the model layer by layer.

    Returns ``h_tx.{l}``/``h_bd.{l}`` for l = 0 (embedding + relu) .. L (last
    conv, no relu) plus ``z_tx``/``z_bd`` (= layer L).
    """
    arch = infer_arch(model.state_dict())
    out: Dict[str, Tensor] = {}
    emb_tx = _sub(model, "tx_embedding.tx")
    lin_bd = _sub(model, "lin0.bd")
    h_tx = emb_tx(tx_token.long()).relu()
    h_bd = lin_bd(torch.nan_to_num(bd_x.float(), nan=0.0)).relu()
    out["h_tx.0"], out["h_bd.0"] = h_tx, h_bd
    names = arch.layer_names()
    for li, name in enumerate(names, start=1):
        conv_tt = _sub(model, f"{name}.{REL_TT}")
        conv_tb = _sub(model, f"{name}.{REL_TB}")
        # to_hetero with aggr="sum": each destination type has exactly one
        # incoming relation, so the sum is that relation's output.
        n_tx = conv_tt((h_tx, h_tx), edge_tx_tx)
        n_bd = conv_tb((h_tx, h_bd), edge_tx_bd)
        if li < len(names):
            n_tx, n_bd = n_tx.relu(), n_bd.relu()
        h_tx, h_bd = n_tx, n_bd
        out[f"h_tx.{li}"], out[f"h_bd.{li}"] = h_tx, h_bd
    out["z_tx"], out["z_bd"] = h_tx, h_bd
    return out


@torch.no_grad()
def forward_hetero(model: torch.nn.Module, tx_token: Tensor, bd_x: Tensor,
                   edge_tx_tx: Tensor, edge_tx_bd: Tensor):
    """The to_hetero module itself, as segger_dev calls it."""
    out = model({"tx": tx_token.long(), "bd": bd_x.float()},
                {EDGE_TT: edge_tx_tx, EDGE_TB: edge_tx_bd})
    return out["tx"], out["bd"]


def score(z_tx: Tensor, z_bd: Tensor, rf_index: Tensor):
    """docs/contract.md §8.

    scores[i, k] = sigmoid(z_tx[i] . z_bd[rf[i, k]]), 0 where the dot product is
    exactly 0, NaN where rf is -1.  best_index = nucleus index with the highest
    score, ties to the lower nucleus index; -1 / NaN where no candidate.
    """
    rf = rf_index.long()
    valid = rf >= 0
    safe = rf.clamp(min=0)
    if z_bd.shape[0] == 0:  # no nuclei: every rf entry is -1
        z_bd = torch.zeros(1, z_tx.shape[1], dtype=z_tx.dtype, device=z_tx.device)
    dots = (z_tx[:, None, :] * z_bd[safe]).sum(-1)
    scores = torch.sigmoid(dots)
    scores = torch.where(dots == 0, torch.zeros_like(scores), scores)
    scores = torch.where(valid, scores, torch.full_like(scores, float("nan")))
    n_tx, dev = rf.shape[0], rf.device
    any_valid = valid.any(dim=1)
    if rf.shape[1] == 0:
        return (scores.to(torch.float32),
                torch.full((n_tx,), float("nan"), dtype=torch.float32, device=dev),
                torch.full((n_tx,), -1, dtype=torch.long, device=dev))
    # among valid entries: the highest score, then the lowest nucleus index
    s_masked = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    mx = s_masked.max(dim=1).values
    is_best = valid & (s_masked == mx[:, None])
    big = torch.iinfo(torch.long).max
    bi = torch.where(is_best, rf, torch.full_like(rf, big)).min(dim=1).values
    best_index = torch.where(any_valid, bi, torch.full_like(bi, -1))
    best_score = torch.where(any_valid, mx, torch.full_like(mx, float("nan"))).to(torch.float32)
    return scores.to(torch.float32), best_score, best_index

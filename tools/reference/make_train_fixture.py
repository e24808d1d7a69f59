#!/usr/bin/env python3
"""Gradient-parity fixture for `seggpu train` (tests/fixtures/train_grad/).

PyTorch autograd on the PyG Segger model (segger_ref.build_model, to_hetero,
as tools/reference/train.py trains it) for a few small hand-made graphs, with
the training loss of train.py: binary cross-entropy with logits on
z_tx[s] · z_bd[d] over positive and negative pairs, positives weighted by
`pos_weight`. The graphs include a nucleus without belongs edges, a
transcript without incoming neighbour edges and a transcript without any
edge, so the empty-softmax paths are covered.

Written (all f32):

* ``model.safetensors``     initial weights (a seggpu weights file);
* ``graph_<i>.safetensors`` tx_token, bd_x, edge_tx_tx, edge_tx_bd (the
  `seggpu forward` graph format) plus pos_pairs [2, P], neg_pairs [2, Q],
  pos_weight [1] and the loss [1];
* ``grad_<i>.safetensors``  d loss / d parameter of graph i at the initial
  weights, stored under the parameter names as a seggpu weights file (so the
  same reader lays them out as the weights);
* ``adam.safetensors``      the weights after 20 Adam steps (betas 0.9, 0.999,
  eps 1e-8) on graphs 0, 1, 2, 0, 1, … with the learning rate of step t in
  ``adam_lr`` [20] (train.py's cosine decay from 1e-2);
* ``adam_grads.safetensors`` the gradient of every step, ``<step>.<name>``
  (PyTorch layout), to check Adam's update apart from the gradients, and
  ``adam_weights.safetensors`` the weights before every step, ``<step>.<name>``,
  so that each step's gradient can be checked at PyTorch's own weights;
* ``adam_f64.safetensors``  the same 20 steps computed in float64 (stored as
  f32; metadata ``fixture.f32_vs_f64`` = max |float32 run − float64 run|);
* ``adam_eps.safetensors``  20 steps as above but with Adam's eps = 1e-4,
  computed in float64 (stored as f32), with ``adam_eps`` [1].

Why two trajectories: with eps = 1e-8 a gradient entry that is exactly 0 in
exact arithmetic but ~1e-9 in float32 rounding (GATv2's softmax is invariant
to shifting all logits of a destination, so lin_r's gradient vanishes wherever
leaky_relu' is the same on all of a destination's edges) gets an Adam step of
about lr · 1e-9 / (1e-9 + 1e-8) ≈ 0.1 · lr, whose sign is the rounding noise's.
PyTorch's own float32 run then ends ~7e-3 from its float64 run (and two runs
of this script differ by ~3e-3: PyG's CPU scatter is not bit-reproducible), so
no float32 implementation that sums those gradients the textbook way can match
it to 1e-4 after 20 steps; seggpu sums them so that they are exactly 0 there
(docs/contract.md, section 12) and matches the float64 run at both eps. With
eps = 1e-4 the noise is not amplified (PyTorch float32 vs float64: < 4e-6).

    /work/venv-ref/bin/python tools/reference/make_train_fixture.py tests/fixtures/train_grad
"""
from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import segger_ref as sr  # noqa: E402
import weights_io  # noqa: E402

ARCH = sr.Arch(num_tx_tokens=7, in_channels=4, hidden_channels=3, num_mid_layers=1,
               out_channels=3, heads=2)
GENES = [f"g{i}" for i in range(ARCH.num_tx_tokens)]
ADAM_STEPS = 20
BASE_LR = 1e-2


def graphs():
    """Small graphs as (tx_token, bd_x, edge_tt, edge_tb, pos_pairs, neg_pairs)."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for n_tx, n_bd, n_tt, n_tb in [(9, 3, 20, 4), (12, 4, 30, 6), (6, 2, 8, 2)]:
        tok = torch.randint(0, ARCH.num_tx_tokens, (n_tx,), generator=gen)
        bd_x = torch.rand(n_bd, sr.N_BD_FEATURES, generator=gen) * 2.0
        # Transcript n_tx-1 has no edge at all; transcript n_tx-2 sends but
        # receives nothing.
        src = torch.randint(0, n_tx - 1, (n_tt,), generator=gen)
        dst = torch.randint(0, n_tx - 2, (n_tt,), generator=gen)
        edge_tt = torch.stack([src, dst])
        # Nucleus n_bd-1 has no belongs edge; the others have at least two,
        # so no gradient is zero only up to rounding (a one-edge softmax is
        # constant), which Adam would amplify into noise-sized steps.
        tb_src = torch.randperm(n_tx - 1, generator=gen)[:n_tb]
        tb_dst = torch.arange(n_tb) % (n_bd - 1)
        edge_tb = torch.stack([tb_src, tb_dst])
        # Positives: the belongs edges and one supervision-only pair (not a
        # message edge), as the trainer's window split makes them.
        extra = torch.tensor([[n_tx - 1], [n_bd - 1]])
        pos = torch.cat([edge_tb, extra], 1)
        neg_src = pos[0].repeat(2)
        neg_dst = (pos[1].repeat(2) + torch.randint(1, n_bd, (2 * pos.shape[1],), generator=gen)) % n_bd
        out.append((tok, bd_x, edge_tt, edge_tb, pos, torch.stack([neg_src, neg_dst])))
    return out


def forward_parts(model, tok, bd_x, edge_tt, edge_tb):
    """The to_hetero forward from its per-relation sub-modules (any dtype:
    the to_hetero module casts the nucleus features to float32)."""
    names = sr.infer_arch(model.state_dict()).layer_names()
    h_tx = model.get_submodule("tx_embedding.tx")(tok).relu()
    h_bd = model.get_submodule("lin0.bd")(bd_x).relu()
    for li, name in enumerate(names, start=1):
        n_tx = model.get_submodule(f"{name}.{sr.REL_TT}")((h_tx, h_tx), edge_tt)
        n_bd = model.get_submodule(f"{name}.{sr.REL_TB}")((h_tx, h_bd), edge_tb)
        if li < len(names):
            n_tx, n_bd = n_tx.relu(), n_bd.relu()
        h_tx, h_bd = n_tx, n_bd
    return h_tx, h_bd


def loss_of(model, g, dtype=None):
    if dtype is not None:
        tok, bd_x, edge_tt, edge_tb, pos, neg = g
        z_tx, z_bd = forward_parts(model, tok, bd_x.to(dtype), edge_tt, edge_tb)
        pl = (z_tx[pos[0]] * z_bd[pos[1]]).sum(-1)
        nl = (z_tx[neg[0]] * z_bd[neg[1]]).sum(-1)
        logits = torch.cat([pl, nl])
        labels = torch.cat([torch.ones_like(pl), torch.zeros_like(nl)])
        pw = torch.tensor(neg.shape[1] / pos.shape[1], dtype=dtype)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pw), pw

    tok, bd_x, edge_tt, edge_tb, pos, neg = g
    o = model({"tx": tok, "bd": bd_x}, {sr.EDGE_TT: edge_tt, sr.EDGE_TB: edge_tb})
    z_tx, z_bd = o["tx"], o["bd"]
    pl = (z_tx[pos[0]] * z_bd[pos[1]]).sum(-1)
    nl = (z_tx[neg[0]] * z_bd[neg[1]]).sum(-1)
    logits = torch.cat([pl, nl])
    labels = torch.cat([torch.ones_like(pl), torch.zeros_like(nl)])
    pw = torch.tensor(neg.shape[1] / pos.shape[1])
    return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pw), pw


def lr_at(step):
    return BASE_LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / ADAM_STEPS)))


def trajectory(start, gs, dtype, eps):
    """ADAM_STEPS steps from the state_dict `start` computed in `dtype`; the final weights."""
    model = sr.build_model(ARCH, seed=0)
    model.load_state_dict(start)
    model = model.to(dtype)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=BASE_LR, eps=eps)
    for step in range(ADAM_STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad()
        loss, _ = loss_of(model, gs[step % len(gs)], dtype)
        loss.backward()
        opt.step()
    return {k: v.detach().float() for k, v in model.state_dict().items()}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = sr.build_model(ARCH, seed=0)
    model.train()
    weights_io.save_seggpu_weights(model.state_dict(), GENES, os.path.join(out, "model.safetensors"))
    gs = graphs()
    for i, g in enumerate(gs):
        model.zero_grad()
        loss, pw = loss_of(model, g)
        loss.backward()
        grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p))
                 for k, p in model.named_parameters()}
        weights_io.save_seggpu_weights(grads, GENES, os.path.join(out, f"grad_{i}.safetensors"))
        tok, bd_x, edge_tt, edge_tb, pos, neg = g
        weights_io.save_file({
            "tx_token": tok.long(), "bd_x": bd_x.float(), "edge_tx_tx": edge_tt.long(),
            "edge_tx_bd": edge_tb.long(), "pos_pairs": pos.long(), "neg_pairs": neg.long(),
            "pos_weight": pw.reshape(1).float(), "loss": loss.detach().reshape(1).float(),
        }, os.path.join(out, f"graph_{i}.safetensors"))
        print(f"graph {i}: loss {loss.item():.6f}, max |grad| "
              f"{max(float(v.abs().max()) for v in grads.values()):.4g}")
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=BASE_LR)
    lrs, recorded, before = [], {}, {}
    for step in range(ADAM_STEPS):
        lr = lr_at(step)
        lrs.append(lr)
        for k, p in model.named_parameters():
            before[f"{step}.{k}"] = p.detach().clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss, _ = loss_of(model, gs[step % len(gs)])
        loss.backward()
        for k, p in model.named_parameters():
            recorded[f"{step}.{k}"] = p.grad.detach().clone()
        opt.step()
    weights_io.save_file(recorded, os.path.join(out, "adam_grads.safetensors"))
    state = dict(model.state_dict())
    state["adam_lr"] = torch.tensor(lrs, dtype=torch.float32)
    weights_io.save_seggpu_weights(state, GENES, os.path.join(out, "adam.safetensors"))
    weights_io.save_file(before, os.path.join(out, "adam_weights.safetensors"))
    print(f"adam: {ADAM_STEPS} steps, last loss {loss.item():.6f}")

    # The float64 reference of the same run, and the eps = 1e-4 run (float64).
    exact = trajectory(start, gs, torch.float64, 1e-8)
    spread = max(float((exact[k] - v).abs().max()) for k, v in model.state_dict().items())
    weights_io.save_file({k: v for k, v in exact.items()}, os.path.join(out, "adam_f64.safetensors"),
                         metadata={"fixture.f32_vs_f64": f"{spread:.3e}"})
    print(f"adam float64: max |float32 run - float64 run| = {spread:.3e}")
    eps = 1e-4
    state = trajectory(start, gs, torch.float64, eps)
    state32 = trajectory(start, gs, torch.float32, eps)
    spread = max(float((state[k] - v).abs().max()) for k, v in state32.items())
    state["adam_lr"] = torch.tensor(lrs, dtype=torch.float32)
    state["adam_eps"] = torch.tensor([eps], dtype=torch.float32)
    weights_io.save_seggpu_weights(state, GENES, os.path.join(out, "adam_eps.safetensors"))
    print(f"adam eps {eps}: max |float32 run - float64 run| = {spread:.3e}")


if __name__ == "__main__":
    main()

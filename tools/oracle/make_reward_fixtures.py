#!/usr/bin/env python3
"""Oracle fixtures for the PAVRM reward head (`prfl::reward`, tests/reward_oracle.rs).

Run from the crate root with the project venv (CPU torch):

    .venv/bin/python tools/oracle/make_reward_fixtures.py

The head (method.md section 3) is built from stock torch modules: a learned query `[Q, D]`, a
`torch.nn.MultiheadAttention(D, heads, batch_first=True, bias=True)` (dropout 0), the residual
query add, the mean over the Q pooled vectors (the Rust engine's documented choice for Q > 1; the
identity for the method's Q = 1), and `nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)`.
Every parameter is random and non-zero, biases included (the real init zeroes the biases, which
would hide bugs): weights N(0, 1/fan_in), biases 0.1 N, the query 0.5 N, features N(0, 1); the
logits then land where the sigmoid is not saturated, so every gradient is non-trivial.

Writes one file per case to tests/fixtures/reward/ (all float32):

- parameters under the Rust names: `pool.query` [Q, D], `pool.{q,k,v}_proj.{weight,bias}` (the
  three row blocks of torch's packed `in_proj_weight` [3D, D] / `in_proj_bias` [3D]),
  `pool.out_proj.{weight,bias}`, `mlp.{0,2,4}.{weight,bias}`;
- `input.x` [B*L, D] (sample-major features), `input.labels` [B] (0/1);
- `out.logits` [B];
- BCE (`BCEWithLogitsLoss`, mean): `bce.loss` [1], `bce.grad.x` [B*L, D], `bce.grad.<param>`;
- Bradley-Terry over the pairs (`bt.a_idx`, `bt.b_idx` [P] sample indices, stored as floats,
  `bt.a_wins` [P] 0/1): BCE of sigmoid(logit[a] - logit[b]) against a_wins, mean over pairs:
  `bt.loss` [1], `bt.grad.x`, `bt.grad.<param>`.

The safetensors metadata records the dimensions and the float64 self-check (the same model and
losses re-run in float64: the largest relative difference, max|a - b| / max|b| per tensor, of the
float32 fixture from it). Everything is seeded; reruns are byte-identical on the same torch.
"""

import copy
import json
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "reward")

# name, D, heads, Q, hidden, B, L, seed. Small hidden widths keep the files small (the method's
# 1024/512 changes nothing in the algebra).
CASES = [
    ("pool_mlp", 32, 8, 1, (24, 16), 3, 10, 0),
    ("pool_mlp_q2", 48, 4, 2, (20, 12), 3, 10, 1),
]
# Bradley-Terry pairs over a batch of 3: sample 0 appears in both pairs (once as `a`, once as
# `b`), so its logit gradient is the sum of two contributions.
BT_A = [0, 2]
BT_B = [1, 0]
BT_A_WINS = [1.0, 0.0]
# Gradients that vanish in exact arithmetic, so a relative error against them means nothing:
# the key bias adds the same q . b to every attention score of a query (softmax is invariant to
# that), and with Bradley-Terry every pair adds +g and -g to the final bias's gradient.
ZERO_GRADS = {"bce.grad.pool.k_proj.bias", "bt.grad.pool.k_proj.bias", "bt.grad.mlp.4.bias"}


class RewardHead(torch.nn.Module):
    def __init__(self, dim, heads, queries, hidden):
        super().__init__()
        self.query = torch.nn.Parameter(torch.empty(queries, dim))
        self.mha = torch.nn.MultiheadAttention(dim, heads, dropout=0.0, bias=True, batch_first=True)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden[0]),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden[0], hidden[1]),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden[1], 1),
        )

    def forward(self, x):
        """x: [B, L, D] -> logits [B]."""
        q = self.query.unsqueeze(0).expand(x.shape[0], -1, -1)
        attn, _ = self.mha(q, x, x, need_weights=False)
        pooled = (attn + q).mean(dim=1)
        return self.mlp(pooled).squeeze(-1)


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if p.dim() == 2 and name != "query":
                scale = p.shape[1] ** -0.5
            else:
                scale = 0.1 if name != "query" else 0.5
            p.copy_((z * scale).to(p.dtype))


def rust_params(model, dim):
    """The model's parameters (or their gradients) under the Rust names."""

    def named(get):
        m = model.mha
        w, b = get(m.in_proj_weight), get(m.in_proj_bias)
        out = {"pool.query": get(model.query)}
        for i, proj in enumerate(["q_proj", "k_proj", "v_proj"]):
            out[f"pool.{proj}.weight"] = w[i * dim : (i + 1) * dim]
            out[f"pool.{proj}.bias"] = b[i * dim : (i + 1) * dim]
        out["pool.out_proj.weight"] = get(m.out_proj.weight)
        out["pool.out_proj.bias"] = get(m.out_proj.bias)
        for i in (0, 2, 4):
            out[f"mlp.{i}.weight"] = get(model.mlp[i].weight)
            out[f"mlp.{i}.bias"] = get(model.mlp[i].bias)
        return out

    return named


def losses(model, x, labels, tokens):
    """Logits, and for each loss its value and the gradients of x and every parameter."""
    bsz = labels.shape[0]
    dim = x.shape[-1]
    names = rust_params(model, dim)
    results = {}
    for kind in ("bce", "bt"):
        model.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        logits = model(xg.reshape(bsz, tokens, dim))
        if kind == "bce":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        else:
            diff = logits[BT_A] - logits[BT_B]
            target = torch.tensor(BT_A_WINS, dtype=x.dtype)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(diff, target)
        loss.backward()
        results["logits"] = logits.detach().clone()
        results[f"{kind}.loss"] = loss.detach().reshape(1).clone()
        results[f"{kind}.grad.x"] = xg.grad.clone()
        for name, g in names(lambda p: p.grad).items():
            results[f"{kind}.grad.{name}"] = g.clone()
    return results


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


def make_case(name, dim, heads, queries, hidden, bsz, tokens, seed):
    gen = torch.Generator().manual_seed(seed)
    model = RewardHead(dim, heads, queries, hidden)
    randomise(model, gen)
    model.eval()  # no dropout anyway; eval only pins that
    x = torch.randn(bsz * tokens, dim, generator=gen, dtype=torch.float64).float()
    labels = torch.tensor([1.0, 0.0, 1.0][:bsz])

    res = losses(model, x, labels, tokens)
    ref = losses(copy.deepcopy(model).double(), x.double(), labels.double(), tokens)
    worst_fwd = rel_err(res["logits"], ref["logits"])
    worst_grad = 0.0
    for k in (k for k in res if ".grad." in k):
        if k in ZERO_GRADS:
            # Identically zero in exact arithmetic: compare to the loss's largest gradient entry.
            kind = k.split(".")[0]
            scale = max(res[g].abs().max().item() for g in res if g.startswith(kind + ".grad."))
            assert ref[k].abs().max().item() < 1e-12 * scale, k
            err = res[k].abs().max().item() / scale
        else:
            err = rel_err(res[k], ref[k])
        worst_grad = max(worst_grad, err)
    assert worst_fwd < 1e-5 and worst_grad < 1e-4, (name, worst_fwd, worst_grad)

    tensors = {k: v.contiguous() for k, v in rust_params(model, dim)(lambda p: p.detach()).items()}
    tensors["input.x"] = x
    tensors["input.labels"] = labels
    tensors["out.logits"] = res.pop("logits")
    tensors["bt.a_idx"] = torch.tensor(BT_A, dtype=torch.float32)
    tensors["bt.b_idx"] = torch.tensor(BT_B, dtype=torch.float32)
    tensors["bt.a_wins"] = torch.tensor(BT_A_WINS, dtype=torch.float32)
    tensors.update({k: v.contiguous() for k, v in res.items()})
    tensors = {k: v.float().contiguous() for k, v in tensors.items()}

    meta = {
        "dim": dim,
        "heads": heads,
        "queries": queries,
        "hidden": list(hidden),
        "batch": bsz,
        "tokens": tokens,
        "seed": seed,
        "torch": torch.__version__,
        "f64_check": {"logits": worst_fwd, "worst_grad": worst_grad},
    }
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(tensors, path, metadata={"case": json.dumps(meta, sort_keys=True)})
    print(f"{name}: {len(tensors)} tensors, logits {tensors['out.logits'].tolist()}, "
          f"bce {tensors['bce.loss'].item():.6f}, bt {tensors['bt.loss'].item():.6f}, "
          f"f32 vs f64: logits {worst_fwd:.1e}, worst grad {worst_grad:.1e}")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for case in CASES:
        make_case(*case)


if __name__ == "__main__":
    main()

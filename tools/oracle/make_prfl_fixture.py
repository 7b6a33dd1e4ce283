#!/usr/bin/env python3
"""Oracle fixture for one complete PRFL step (method.md section 4; tests/prfl_oracle.rs).

Run from the crate root with the project venv (CPU torch + diffusers):

    .venv/bin/python tools/oracle/make_prfl_fixture.py [--out tests/fixtures/prfl] [--skip-ref]

Everything is stock PyTorch / diffusers, reusing the other oracle scripts' pieces:

- generator: a tiny random diffusers `WanTransformer3DModel` (make_fixtures.py: every parameter
  randomised, official float64 timestep sinusoid patched in, original-layout names);
- reward model: a SEPARATE tiny random Wan backbone of the same architecture with only K blocks
  (features = hidden tokens after block K-1, read with a forward hook; its head is dropped), then
  the PAVRM head of make_reward_fixtures.py (`nn.MultiheadAttention` pooling of one learned
  query with the residual query add, MLP D -> h0 -> ReLU -> h1 -> ReLU -> 1);
- sampler: diffusers `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5,
  prediction_type='flow_prediction', solver_order=2, solver_type='bh2', lower_order_final=True)`
  with `set_timesteps(N)`; the model is fed `scheduler.timesteps[i]` (int64) expanded to the batch,
  exactly as diffusers' `WanPipeline` does.

One PRFL step at mid step m: steps 0..m-1 under `torch.no_grad()`; then with gradients
`v = generator(x_m, t_m, ctx)`, `x_{m+1} = scheduler.step(v, t_m, x_m).prev_sample` (the solver
history from the rollout carries no graph), `score = sigmoid(head(features(x_{m+1}, t_{m+1}, ctx)))`
with `t_{m+1} = scheduler.timesteps[m+1]`, `loss = mean_b 0.1 * relu(2 - score_b)`, backward.
The reward model's parameters are frozen (requires_grad False); only the generator's gradients
are stored.

Writes to tests/fixtures/prfl/ (all float32):

- `generator/`: config.json + diffusion_pytorch_model.safetensors, original Wan2.1 layout;
- `reward_backbone.safetensors`: original names, embeddings and blocks 0..K-1 (no head);
- `reward_head.safetensors`: Rust names `pool.query`, `pool.{q,k,v,out}_proj.{weight,bias}`,
  `mlp.{0,2,4}.{weight,bias}`;
- `case.safetensors`: `noise` [B,16,F,H,W], `context` [B,Lc,text_dim], the scheduler grid
  `sigmas` [N+1] / `timesteps` [N] (float), and per mid step m (prefix `m{m}.`): `x_m`, `x_next`,
  `score` [B], `loss` [1], `grad.<original generator name>` for every generator parameter;
- `case.json`: N, shift, mid steps, K, pooling heads, hidden widths, shapes, the f64 self-check.

Self-check (unless --skip-ref): the same step re-run in float64 (the models' `.float()` casts
made no-ops for float64 tensors, scheduler coefficients as diffusers computes them from its float32
sigmas); the float32 fixture must be within 1e-6 (loss, score, x_next) / 1e-5 (every gradient) of
it, relative as max|a - b| / max|b|. Deterministic: single-threaded, seeded, math SDPA.
"""
import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import sys
import time

import torch
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

import diffusers
from diffusers import UniPCMultistepScheduler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as wf  # noqa: E402
import make_reward_fixtures as rf  # noqa: E402

# Generator (and reward backbone) architecture; the reward backbone keeps K of its layers.
GEN = dict(
    name="prfl_gen", model_type="t2v", heads=2, head_dim=16, ffn_dim=64, num_layers=3,
    text_dim=16, image_dim=None, in_dim=16, out_dim=16, freq_dim=256, dtype="f32", shards=1,
)
K = 2  # reward blocks (< num_layers: the reward model is a cut)
POOL_HEADS = 4
QUERIES = 1
HIDDEN = (16, 8)
B, FR, H, W, LC = 2, 3, 2, 4, 5
N, SHIFT = 6, 5.0
MID_STEPS = [0, 3]  # m = 0: no history, order 1; m = 3: order-2 corrector and predictor
MARGIN, SCALE = 2.0, 0.1
SEED = 4004

REF_TOL = {"fwd": 1e-6, "grad": 1e-5}


def make_scheduler():
    s = UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=SHIFT, prediction_type="flow_prediction",
        solver_order=2, solver_type="bh2", lower_order_final=True,
    )
    s.set_timesteps(N)
    return s


class RewardModel(torch.nn.Module):
    """K-block Wan backbone (features after its last block) + PAVRM head."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self._feats = None
        backbone.blocks[-1].register_forward_hook(self._grab)

    def _grab(self, mod, args, out):
        self._feats = out

    def forward(self, x, t, ctx):
        self._feats = None
        with sdpa_kernel(SDPBackend.MATH):
            # the full forward runs the (dropped) head too; only the block-K features are used
            self.backbone(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)
        feats, self._feats = self._feats, None  # [B, L, D], tokens in (f, h, w) order
        assert feats is not None and feats.shape[0] == x.shape[0]
        return self.head(feats)  # logits [B]


def gen_forward(model, x, t, ctx):
    with sdpa_kernel(SDPBackend.MATH):
        return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]


def prfl_step(gen, reward, noise, ctx, m):
    """One PRFL step; returns x_m, x_next, scores, loss and the generator's parameter gradients."""
    sched = make_scheduler()
    ts = sched.timesteps
    bsz = noise.shape[0]
    x = noise.clone()
    with torch.no_grad():
        for i in range(m):
            t = ts[i]
            v = gen_forward(gen, x, t.expand(bsz), ctx)
            x = sched.step(v, t, x, return_dict=False)[0]
    x_m = x.detach().clone()
    assert all(o is None or not o.requires_grad for o in sched.model_outputs)
    gen.zero_grad(set_to_none=True)
    t_m = ts[m]
    v = gen_forward(gen, x_m, t_m.expand(bsz), ctx)
    x_next = sched.step(v, t_m, x_m, return_dict=False)[0]
    assert x_next.requires_grad
    t_next = ts[m + 1]
    logits = reward(x_next, t_next.expand(bsz), ctx)
    score = torch.sigmoid(logits)
    loss = (SCALE * torch.relu(MARGIN - score)).mean()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in gen.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert all(p.grad is None for p in reward.parameters())
    return {
        "x_m": x_m, "x_next": x_next.detach().clone(), "score": score.detach().clone(),
        "loss": loss.detach().reshape(1).clone(), "grads": grads,
        "t_m": int(t_m), "t_next": int(t_next),
    }


@contextlib.contextmanager
def float64_casts():
    """diffusers' Wan blocks and FP32LayerNorm call `.float()`; make that a no-op on float64 tensors
    so that a `.double()` copy of the model really runs in float64."""
    orig = torch.Tensor.float

    def keep64(self, *a, **kw):
        return self if self.dtype == torch.float64 else orig(self, *a, **kw)

    torch.Tensor.float = keep64
    try:
        yield
    finally:
        torch.Tensor.float = orig


def rel_err(a, b):
    return wf.rel_err(a, b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "tests", "fixtures", "prfl"))
    ap.add_argument("--skip-ref", action="store_true", help="skip the float64 self-check")
    args = ap.parse_args()

    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    diffusers.utils.logging.set_verbosity_error()
    out = os.path.normpath(args.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)

    gen_rng = torch.Generator().manual_seed(SEED)
    dim = GEN["heads"] * GEN["head_dim"]
    rcfg = dict(GEN, num_layers=K)

    generator = wf.make_model(GEN)
    wf.randomise(generator, gen_rng)
    g_d2o = wf.build_name_map(generator, GEN)
    wf.patch_official_numerics(generator)

    backbone = wf.make_model(rcfg)
    wf.randomise(backbone, gen_rng)
    r_d2o = wf.build_name_map(backbone, rcfg)
    wf.patch_official_numerics(backbone)
    head = rf.RewardHead(dim, POOL_HEADS, QUERIES, HIDDEN)
    rf.randomise(head, gen_rng)
    reward = RewardModel(backbone, head).eval()
    reward.requires_grad_(False)

    noise = torch.randn(B, GEN["out_dim"], FR, H, W, generator=gen_rng)
    context = torch.randn(B, LC, GEN["text_dim"], generator=gen_rng)

    sched = make_scheduler()
    sigmas = sched.sigmas.clone().float()
    timesteps = sched.timesteps.clone()
    assert timesteps.dtype == torch.int64 and len(timesteps) == N and len(sigmas) == N + 1

    results = {m: prfl_step(generator, reward, noise, context, m) for m in MID_STEPS}

    # ---------------- float64 self-check ----------------
    ref = None
    if not args.skip_ref:
        ref = {}
        g64 = copy.deepcopy(generator).double()
        b64 = copy.deepcopy(backbone).double()
        b64.blocks[-1]._forward_hooks.clear()  # the copied hook is bound to the float32 model
        r64 = RewardModel(b64, copy.deepcopy(head).double()).eval()
        r64.requires_grad_(False)
        with float64_casts():
            for m in MID_STEPS:
                r = prfl_step(g64, r64, noise.double(), context.double(), m)
                a = results[m]
                e = {k: rel_err(a[k], r[k]) for k in ("x_m", "x_next", "score", "loss")}
                gw, gname = 0.0, None
                for n in a["grads"]:
                    err = rel_err(a["grads"][n], r["grads"][n])
                    if err > gw:
                        gw, gname = err, g_d2o[n]
                e["grad_worst"] = gw
                e["grad_worst_tensor"] = gname
                assert max(e[k] for k in ("x_m", "x_next", "score", "loss")) <= REF_TOL["fwd"], (m, e)
                assert gw <= REF_TOL["grad"], (m, e)
                ref[f"m{m}"] = {k: (float(f"{v:.3e}") if isinstance(v, float) else v) for k, v in e.items()}

    # ---------------- writing ----------------
    order = wf.original_names(GEN)
    g_o2d = {o: d for d, o in g_d2o.items()}
    gparams = dict(generator.named_parameters())
    gen_store = {o: gparams[g_o2d[o]].detach().contiguous() for o in order}
    files = wf.write_original(os.path.join(out, "generator"), GEN, gen_store)

    r_order = [o for o in wf.original_names(rcfg) if not o.startswith("head.")]
    r_o2d = {o: d for d, o in r_d2o.items()}
    bparams = dict(backbone.named_parameters())
    save_file({o: bparams[r_o2d[o]].detach().contiguous() for o in r_order},
              os.path.join(out, "reward_backbone.safetensors"), metadata={"format": "pt"})
    head_t = {k: v.contiguous() for k, v in rf.rust_params(head, dim)(lambda p: p.detach()).items()}
    save_file(head_t, os.path.join(out, "reward_head.safetensors"), metadata={"format": "pt"})

    case = {"noise": noise, "context": context, "sigmas": sigmas, "timesteps": timesteps.float()}
    for m, r in results.items():
        p = f"m{m}."
        for k in ("x_m", "x_next", "score", "loss"):
            case[p + k] = r[k]
        for o in order:
            case[p + "grad." + o] = r["grads"][g_o2d[o]]
    assert all(t.dtype == torch.float32 for t in case.values())
    save_file({k: t.contiguous() for k, t in case.items()}, os.path.join(out, "case.safetensors"),
              metadata={"format": "pt"})

    # self-check: the original-layout generator reloaded from disk reproduces the step's forward
    fresh = wf.make_model(GEN)
    fresh.load_state_dict({g_o2d[o]: t for o, t in wf.load_original(os.path.join(out, "generator")).items()},
                          strict=True)
    wf.patch_official_numerics(fresh)
    with torch.no_grad():
        t0_ = timesteps[0].expand(B)
        assert torch.equal(gen_forward(fresh, noise, t0_, context), gen_forward(generator, noise, t0_, context))
    assert set(load_file(os.path.join(out, "reward_backbone.safetensors"))) == set(r_order)

    meta = {
        "steps": N, "shift": SHIFT, "mid_steps": MID_STEPS, "margin": MARGIN, "scale": SCALE,
        "scheduler": "diffusers UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5, "
                     "prediction_type='flow_prediction', solver_order=2, solver_type='bh2', "
                     "lower_order_final=True).set_timesteps(N)",
        "timesteps": [int(t) for t in timesteps],
        "reward_timesteps": {f"m{m}": results[m]["t_next"] for m in MID_STEPS},
        "generator": {"dim": dim, "num_heads": GEN["heads"], "head_dim": GEN["head_dim"],
                      "ffn_dim": GEN["ffn_dim"], "num_layers": GEN["num_layers"], "text_dim": GEN["text_dim"],
                      "files": files, "params": len(order)},
        "reward": {"blocks": K, "heads": POOL_HEADS, "queries": QUERIES, "hidden": list(HIDDEN),
                   "backbone_params": len(r_order), "head_params": len(head_t)},
        "shape": {"batch": B, "channels": GEN["out_dim"], "frames": FR, "height": H, "width": W,
                  "tokens": FR * (H // 2) * (W // 2), "context_len": LC},
        "scores": {f"m{m}": results[m]["score"].tolist() for m in MID_STEPS},
        "losses": {f"m{m}": results[m]["loss"].item() for m in MID_STEPS},
        "tolerance": {"metric": "max|a-b| / max|b| per tensor", "loss_score": 1e-5, "grad": 1e-4},
        "seed": SEED,
        "oracle": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                   "timestep_sinusoid": "float64 (patched; official)", "sdpa": "math",
                   "float64_reference": ref},
    }
    text = json.dumps(meta, indent=2)
    text = re.sub(r"\[\s*([-0-9.e, \n]+?)\s*\]", lambda mm: "[" + re.sub(r"\s*\n\s*", " ", mm.group(1)) + "]", text)
    with open(os.path.join(out, "case.json"), "w") as fh:
        fh.write(text + "\n")

    for m in MID_STEPS:
        r = results[m]
        print(f"m={m}: t_m {r['t_m']} -> reward at t {r['t_next']}, scores {[round(s, 6) for s in r['score'].tolist()]}, "
              f"loss {r['loss'].item():.7f}" + (f"; f64 ref {ref[f'm{m}']}" if ref else ""))
    print(f"timesteps {meta['timesteps']}; {wf.dir_size(out) / 1e6:.3f} MB under {out}; "
          f"{time.time() - t0:.1f}s; self-checks passed")


if __name__ == "__main__":
    sys.exit(main())

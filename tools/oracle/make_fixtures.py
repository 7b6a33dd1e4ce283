#!/usr/bin/env python3
"""PyTorch oracle for prfl: writes the numeric fixtures the Rust Wan2.1 engine is tested against.

    python tools/oracle/make_fixtures.py [--out tests/fixtures/wan] [--skip-ref]

For each case it builds a tiny WanTransformer3DModel (diffusers) with EVERY parameter randomised
(seeded), rounds the parameters to the case's storage dtype, runs forward + backward in float32 with
the official Wan2.1 numerics (float64 timestep sinusoid, see README.md) and writes:

    <case>/original/config.json + weights in the ORIGINAL Wan2.1 layout (sharded for t2v_small)
    <case>/diffusers/config.json + diffusion_pytorch_model.safetensors (save_pretrained)
    <case>/inputs.safetensors    x, t, context, cotangent (+ y, clip_fea for I2V), float32
    <case>/expected.safetensors  v, grad.x, grad.context (+ grad.y, grad.clip_fea), grad.<original name>
    <case>/case.json             dims, dtypes, tolerances, tensor lists

Then it self-checks: reload both layouts from disk into fresh models and re-run the forward (must be
bitwise equal), cross-check the name mapping against diffusers' own original->diffusers converter,
and compare everything against an independent float64 re-implementation of the official forward
(docs/method.md section 1) built from the original-layout weights only.

Deterministic: single-threaded, seeded, math SDPA, deterministic algorithms. Idempotent: each case
directory is deleted and rewritten.
"""
import argparse
import copy
import json
import math
import os
import re
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from torch.nn.attention import SDPBackend, sdpa_kernel

FWD_TOL = 1e-5  # max|a-b| / max|b| on v
GRAD_TOL = 1e-4  # same metric, per gradient tensor
IMG_TOKENS = 257  # CLIP ViT-H/14 tokens (official I2V cross-attn splits the first 257 context tokens)
TEXT_LEN = 512  # diffusers' WanAttnProcessor hardcodes 512 text tokens for I2V

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}

CASES = [
    dict(
        name="t2v_small", model_type="t2v", heads=2, head_dim=16, ffn_dim=64, num_layers=3,
        text_dim=24, image_dim=None, in_dim=16, out_dim=16, freq_dim=256,
        B=2, F=3, H=4, W=6, Lc=7, t=[999.0, 421.0], dtype="f32", shards=2, seed=1001,
    ),
    dict(
        name="i2v_small", model_type="i2v", heads=4, head_dim=8, ffn_dim=48, num_layers=2,
        text_dim=16, image_dim=8, in_dim=36, out_dim=16, freq_dim=256,
        B=2, F=2, H=2, W=4, Lc=TEXT_LEN, t=[1000.0, 13.0], dtype="f16", shards=1, seed=2002,
    ),
    dict(
        name="t2v_hd128", model_type="t2v", heads=2, head_dim=128, ffn_dim=128, num_layers=2,
        text_dim=32, image_dim=None, in_dim=16, out_dim=16, freq_dim=256,
        B=1, F=3, H=2, W=4, Lc=5, t=[768.0], dtype="bf16", shards=1, seed=3003,
    ),
]


# --------------------------------------------------------------------------------------------
# Official numerics: the timestep sinusoid in float64 (Wan2.1 `sinusoidal_embedding_1d`).
# --------------------------------------------------------------------------------------------
def sinusoid_f64(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Exactly the official computation: float64 [cos, sin], w_i = 10000^(-i/half); returns float64."""
    half = dim // 2
    pos = t.to(torch.float64)
    sinusoid = torch.outer(pos, torch.pow(10000, -torch.arange(half).to(pos).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


class OfficialTimesteps(torch.nn.Module):
    """Drop-in for diffusers' `Timesteps` (flip_sin_to_cos=True, shift 0), computed in float64 then
    cast to float32 as the official model does (`time_embedding(sinusoidal_embedding_1d(...).float())`)."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return sinusoid_f64(timesteps, self.num_channels).float()


def patch_official_numerics(model: WanTransformer3DModel) -> WanTransformer3DModel:
    ce = model.condition_embedder
    assert type(ce.timesteps_proj).__name__ == "Timesteps"
    assert ce.timesteps_proj.flip_sin_to_cos and ce.timesteps_proj.downscale_freq_shift == 0
    ce.timesteps_proj = OfficialTimesteps(ce.timesteps_proj.num_channels)
    return model


def check_sinusoid_patch(freq_dim: int = 256):
    """The patched module must equal an independent float64 (numpy) computation cast to float32.
    Also returns how far diffusers' stock float32 sinusoid is from it."""
    from diffusers.models.embeddings import Timesteps

    t = torch.tensor([0.0, 1.0, 13.0, 113.0, 421.0, 768.0, 999.0, 1000.0])
    half = freq_dim // 2
    ang = np.outer(t.numpy().astype(np.float64), 10000.0 ** (-np.arange(half, dtype=np.float64) / half))
    ref = torch.from_numpy(np.concatenate([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32))
    patched = OfficialTimesteps(freq_dim)(t)
    assert patched.dtype == torch.float32 and patched.shape == ref.shape
    d_patched = (patched - ref).abs().max().item()
    # numpy and torch float64 pow/cos may differ in the last f64 bit; after the f32 cast they agree.
    assert d_patched == 0.0, f"patched sinusoid differs from float64 reference by {d_patched}"
    stock = Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    d_stock = (stock - ref).abs().max().item()
    return d_stock


# --------------------------------------------------------------------------------------------
# Names: diffusers <-> original Wan2.1 layout (inverse of diffusers' convert_wan_to_diffusers).
# --------------------------------------------------------------------------------------------
_BLOCK_MAP = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",  # diffusers' norm2 is the affine cross-attn norm; the original calls it norm3
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
_TOP_MAP = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}


def diffusers_to_original(name: str) -> str:
    if name == "scale_shift_table":
        return "head.modulation"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m:
        i, rest = m.groups()
        if rest == "scale_shift_table":
            return f"blocks.{i}.modulation"
        mod, param = rest.rsplit(".", 1)
        return f"blocks.{i}.{_BLOCK_MAP[mod]}.{param}"
    mod, param = name.rsplit(".", 1)
    return f"{_TOP_MAP[mod]}.{param}"


def original_names(c) -> list:
    """The original Wan2.1 state-dict names in the official module order (WanModel.state_dict())."""
    wb = lambda p: [f"{p}.weight", f"{p}.bias"]  # noqa: E731
    n = wb("patch_embedding") + wb("text_embedding.0") + wb("text_embedding.2")
    n += wb("time_embedding.0") + wb("time_embedding.2") + wb("time_projection.1")
    for i in range(c["num_layers"]):
        b = f"blocks.{i}"
        n.append(f"{b}.modulation")
        for a in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                n += wb(f"{b}.{a}.{p}")
            n += [f"{b}.{a}.norm_q.weight", f"{b}.{a}.norm_k.weight"]
            if a == "cross_attn" and c["model_type"] == "i2v":
                n += wb(f"{b}.{a}.k_img") + wb(f"{b}.{a}.v_img") + [f"{b}.{a}.norm_k_img.weight"]
            if a == "self_attn":
                n += wb(f"{b}.norm3")
        n += wb(f"{b}.ffn.0") + wb(f"{b}.ffn.2")
    n += ["head.modulation"] + wb("head.head")
    if c["model_type"] == "i2v":
        n += wb("img_emb.proj.0") + wb("img_emb.proj.1") + wb("img_emb.proj.3") + wb("img_emb.proj.4")
    return n


def build_name_map(model, c):
    """diffusers name -> original name for every parameter; asserts a bijection onto original_names
    and agreement with diffusers' own original->diffusers converter."""
    dnames = [n for n, _ in model.named_parameters()]
    assert len(dnames) == len(set(dnames))
    sd_keys = set(model.state_dict().keys())
    assert sd_keys == set(dnames), f"state_dict has non-parameter entries: {sd_keys ^ set(dnames)}"
    d2o = {d: diffusers_to_original(d) for d in dnames}
    onames = list(d2o.values())
    assert len(set(onames)) == len(onames), "name map is not injective"
    expect = original_names(c)
    assert len(expect) == len(set(expect))
    assert set(onames) == set(expect), f"map not onto the original layout: {set(onames) ^ set(expect)}"
    # cross-check against diffusers' converter (what from_single_file uses)
    conv = convert_wan_transformer_to_diffusers({o: torch.zeros(1) for o in expect})
    o2d = {o: d for d, o in d2o.items()}
    assert set(conv.keys()) == set(dnames), f"diffusers converter disagrees: {set(conv) ^ set(dnames)}"
    probe = convert_wan_transformer_to_diffusers({o: torch.tensor([float(k)]) for k, o in enumerate(expect)})
    for k, o in enumerate(expect):
        assert probe[o2d[o]].item() == float(k), f"converter maps {o} elsewhere"
    return d2o


# --------------------------------------------------------------------------------------------
# Model construction and randomisation
# --------------------------------------------------------------------------------------------
def diffusers_kwargs(c):
    dim = c["heads"] * c["head_dim"]
    kw = dict(
        patch_size=(1, 2, 2), num_attention_heads=c["heads"], attention_head_dim=c["head_dim"],
        in_channels=c["in_dim"], out_channels=c["out_dim"], text_dim=c["text_dim"], freq_dim=c["freq_dim"],
        ffn_dim=c["ffn_dim"], num_layers=c["num_layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    )
    if c["model_type"] == "i2v":
        kw.update(image_dim=c["image_dim"], added_kv_proj_dim=dim)
    return kw


def randomise(model, gen):
    """Every parameter random and non-trivial: Linear/Conv weights N(0, 1/fan_in), biases 0.1 N,
    norm weights 1 + 0.1 N, norm biases 0.1 N, modulation tables 0.1 N."""
    done = set()
    with torch.no_grad():
        for mname, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                if isinstance(mod, (torch.nn.Linear, torch.nn.Conv3d)):
                    if pname == "weight":
                        fan_in = p[0].numel()
                        v = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
                    else:
                        v = 0.1 * torch.randn(p.shape, generator=gen)
                elif isinstance(mod, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
                    v = (1.0 if pname == "weight" else 0.0) + 0.1 * torch.randn(p.shape, generator=gen)
                elif pname == "scale_shift_table":
                    v = 0.1 * torch.randn(p.shape, generator=gen)
                else:
                    raise RuntimeError(f"no randomisation rule for {full} in {type(mod).__name__}")
                p.copy_(v)
                done.add(full)
    assert done == {n for n, _ in model.named_parameters()}


def make_model(c):
    torch.manual_seed(0)  # default init is overwritten anyway; keep construction deterministic
    m = WanTransformer3DModel(**diffusers_kwargs(c)).eval()
    assert all(p.dtype == torch.float32 for p in m.parameters())
    return m


def make_inputs(c, gen):
    B, Fr, H, W = c["B"], c["F"], c["H"], c["W"]
    inp = {
        "x": torch.randn(B, 16, Fr, H, W, generator=gen),
        "t": torch.tensor(c["t"], dtype=torch.float32),
        "context": torch.randn(B, c["Lc"], c["text_dim"], generator=gen),
    }
    if c["model_type"] == "i2v":
        y = torch.randn(B, 20, Fr, H, W, generator=gen)
        # channels 0..3: the frame mask (1 on the first latent frame, 0 elsewhere) as the pipeline builds it
        y[:, :4] = 0.0
        y[:, :4, 0] = 1.0
        inp["y"] = y
        inp["clip_fea"] = torch.randn(B, IMG_TOKENS, c["image_dim"], generator=gen)
    inp["cotangent"] = torch.randn(B, 16, Fr, H, W, generator=gen)
    assert inp["t"].shape == (B,)
    return inp


# --------------------------------------------------------------------------------------------
# Running the oracle
# --------------------------------------------------------------------------------------------
def diffusers_forward(model, inp):
    hs = torch.cat([inp["x"], inp["y"]], dim=1) if "y" in inp else inp["x"]
    with sdpa_kernel(SDPBackend.MATH):
        return model(
            hidden_states=hs, timestep=inp["t"], encoder_hidden_states=inp["context"],
            encoder_hidden_states_image=inp.get("clip_fea"), return_dict=False,
        )[0]


def run_with_grads(model, inp):
    leaves = {k: inp[k].clone().requires_grad_(True) for k in ("x", "y", "context", "clip_fea") if k in inp}
    run_inp = dict(inp, **leaves)
    model.zero_grad(set_to_none=True)
    v = diffusers_forward(model, run_inp)
    (v * inp["cotangent"]).sum().backward()
    grads = {k: t.grad.detach().clone() for k, t in leaves.items()}
    pgrads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    assert all(g is not None for g in pgrads.values())
    return v.detach().clone(), grads, pgrads


# --------------------------------------------------------------------------------------------
# Independent float64 reference of the official forward (method.md section 1), original names.
# --------------------------------------------------------------------------------------------
def ref_forward_f64(W, inp, c):
    f64 = torch.float64
    dim, nh, d = c["heads"] * c["head_dim"], c["heads"], c["head_dim"]
    lin = lambda x, p: x @ W[p + ".weight"].T + W[p + ".bias"]  # noqa: E731
    ln = lambda x, eps=1e-6: F.layer_norm(x, (x.shape[-1],), eps=eps)  # noqa: E731
    lna = lambda x, p, eps: F.layer_norm(x, (x.shape[-1],), W[p + ".weight"], W[p + ".bias"], eps)  # noqa: E731
    rms = lambda x, p: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * W[p + ".weight"]  # noqa: E731

    x = inp["x"]
    if "y" in inp:
        x = torch.cat([x, inp["y"]], dim=1)
    B = x.shape[0]
    h = F.conv3d(x, W["patch_embedding.weight"], W["patch_embedding.bias"], stride=(1, 2, 2))
    f, hh, ww = h.shape[2:]
    L = f * hh * ww
    h = h.flatten(2).transpose(1, 2)  # [B, L, D], tokens in (f, h, w) order

    sin = sinusoid_f64(inp["t"], c["freq_dim"])
    e = lin(F.silu(lin(sin, "time_embedding.0")), "time_embedding.2")  # [B, D]
    e0 = lin(F.silu(e), "time_projection.1").unflatten(1, (6, dim))  # [B, 6, D]

    ctx = lin(F.gelu(lin(inp["context"], "text_embedding.0"), approximate="tanh"), "text_embedding.2")
    if "clip_fea" in inp:
        ci = lna(inp["clip_fea"], "img_emb.proj.0", 1e-5)
        ci = lin(F.gelu(lin(ci, "img_emb.proj.1")), "img_emb.proj.3")
        ci = lna(ci, "img_emb.proj.4", 1e-5)
        ctx = torch.cat([ci, ctx], dim=1)

    # 3-D RoPE: d/2 interleaved pairs split [d/2 - 2 floor(d/6), floor(d/6), floor(d/6)]
    g1 = d // 6
    groups = [d // 2 - 2 * g1, g1, g1]
    fi, hi, wi = torch.meshgrid(torch.arange(f), torch.arange(hh), torch.arange(ww), indexing="ij")
    angs = []
    for pos, n in zip((fi, hi, wi), groups):
        w = torch.pow(torch.tensor(10000.0, dtype=f64), -2.0 * torch.arange(n, dtype=f64) / (2 * n))
        angs.append(pos.reshape(-1, 1).to(f64) * w)
    ang = torch.cat(angs, dim=1)  # [L, d/2]
    cos, sn = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]

    def rope(q):  # [B, L, nh, d]
        a, b = q[..., 0::2], q[..., 1::2]
        return torch.stack([a * cos - b * sn, a * sn + b * cos], dim=-1).flatten(-2)

    def attn(q, k, v):  # [B, Lq, nh, d] x [B, Lk, nh, d]
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).flatten(2)

    heads = lambda t: t.unflatten(2, (nh, d))  # noqa: E731
    for i in range(c["num_layers"]):
        b = f"blocks.{i}"
        s = (W[f"{b}.modulation"] + e0).unbind(1)  # 6 x [B, D]
        s = [u[:, None, :] for u in s]
        a = ln(h) * (1 + s[1]) + s[0]
        q = rope(heads(rms(lin(a, f"{b}.self_attn.q"), f"{b}.self_attn.norm_q")))
        k = rope(heads(rms(lin(a, f"{b}.self_attn.k"), f"{b}.self_attn.norm_k")))
        v = heads(lin(a, f"{b}.self_attn.v"))
        h = h + lin(attn(q, k, v), f"{b}.self_attn.o") * s[2]

        a = lna(h, f"{b}.norm3", 1e-6)
        ca = f"{b}.cross_attn"
        if "clip_fea" in inp:  # official WanI2VCrossAttention: first 257 context tokens are the image
            cimg, ctxt = ctx[:, :IMG_TOKENS], ctx[:, IMG_TOKENS:]
        else:
            cimg, ctxt = None, ctx
        q = heads(rms(lin(a, f"{ca}.q"), f"{ca}.norm_q"))
        k = heads(rms(lin(ctxt, f"{ca}.k"), f"{ca}.norm_k"))
        v = heads(lin(ctxt, f"{ca}.v"))
        o = attn(q, k, v)
        if cimg is not None:
            ki = heads(rms(lin(cimg, f"{ca}.k_img"), f"{ca}.norm_k_img"))
            vi = heads(lin(cimg, f"{ca}.v_img"))
            o = o + attn(q, ki, vi)
        h = h + lin(o, f"{ca}.o")

        a = ln(h) * (1 + s[4]) + s[3]
        h = h + lin(F.gelu(lin(a, f"{b}.ffn.0"), approximate="tanh"), f"{b}.ffn.2") * s[5]

    hm = W["head.modulation"] + e[:, None, :]  # [B, 2, D]  (head uses e, not e0)
    out = lin(ln(h) * (1 + hm[:, 1:2]) + hm[:, 0:1], "head.head")  # [B, L, 4*16], (pt, ph, pw, c)
    out = out.reshape(B, f, hh, ww, 1, 2, 2, c["out_dim"])
    out = torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(B, c["out_dim"], f, 2 * hh, 2 * ww)
    assert L == out.shape[2] * hh * ww
    return out


def rel_err(a, b):
    a, b = a.double(), b.double()
    den = b.abs().max().item()
    return (a - b).abs().max().item() / (den if den > 0 else 1.0)


def ref_check(orig_f32, inp, c, v, grads_named):
    W = {k: t.double().requires_grad_(True) for k, t in orig_f32.items()}
    leaves = {k: inp[k].double().requires_grad_(True) for k in ("x", "y", "context", "clip_fea") if k in inp}
    rinp = dict(inp, **leaves)
    rinp["t"] = inp["t"].double()
    out = ref_forward_f64(W, rinp, c)
    (out * inp["cotangent"].double()).sum().backward()
    fwd = rel_err(v, out.detach())
    worst, worst_name = 0.0, None
    for k, t in list(leaves.items()) + list(W.items()):
        e = rel_err(grads_named["grad." + k], t.grad)
        if e > worst:
            worst, worst_name = e, k
    return fwd, worst, worst_name


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def official_config(c):
    return {
        "_class_name": "WanModel", "_diffusers_version": "0.30.0",
        "dim": c["heads"] * c["head_dim"], "eps": 1e-06, "ffn_dim": c["ffn_dim"], "freq_dim": c["freq_dim"],
        "in_dim": c["in_dim"], "model_type": c["model_type"], "num_heads": c["heads"],
        "num_layers": c["num_layers"], "out_dim": c["out_dim"], "text_len": 512,
    }


def write_original(dirp, c, orig_sd):
    """orig_sd: original name -> tensor in storage dtype, official order."""
    os.makedirs(dirp)
    with open(os.path.join(dirp, "config.json"), "w") as fh:
        json.dump(official_config(c), fh, indent=2)
        fh.write("\n")
    names = list(orig_sd.keys())
    if c["shards"] == 1:
        save_file(orig_sd, os.path.join(dirp, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        return ["diffusion_pytorch_model.safetensors"]
    # shard by bytes in official order (a block may straddle two shards, as in the official release)
    nbytes = {n: orig_sd[n].numel() * orig_sd[n].element_size() for n in names}
    total = sum(nbytes.values())
    k = c["shards"]
    fnames = [f"diffusion_pytorch_model-{i + 1:05d}-of-{k:05d}.safetensors" for i in range(k)]
    weight_map, acc, shard = {}, 0, 0
    for n in names:
        if acc >= (shard + 1) * total / k and shard < k - 1:
            shard += 1
        weight_map[n] = fnames[shard]
        acc += nbytes[n]
    for i, fn in enumerate(fnames):
        part = {n: orig_sd[n] for n in names if weight_map[n] == fn}
        assert part, "empty shard"
        save_file(part, os.path.join(dirp, fn), metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(dirp, "diffusion_pytorch_model.safetensors.index.json"), "w") as fh:
        json.dump(index, fh, indent=2)
        fh.write("\n")
    return fnames


def load_original(dirp):
    idx = os.path.join(dirp, "diffusion_pytorch_model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as fh:
            wm = json.load(fh)["weight_map"]
        sd = {}
        for fn in sorted(set(wm.values())):
            part = load_file(os.path.join(dirp, fn))
            for n, t in part.items():
                assert wm[n] == fn and n not in sd
                sd[n] = t
        assert set(sd) == set(wm)
        return sd
    return load_file(os.path.join(dirp, "diffusion_pytorch_model.safetensors"))


def dir_size(p):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs)


def make_case(c, out_root, do_ref):
    t0 = time.time()
    name = c["name"]
    sdt = DTYPES[c["dtype"]]
    case_dir = os.path.join(out_root, name)
    if os.path.exists(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)

    gen = torch.Generator().manual_seed(c["seed"])
    model = make_model(c)
    randomise(model, gen)
    with torch.no_grad():  # storage-dtype rounding, then compute in float32
        for p in model.parameters():
            p.copy_(p.to(sdt).to(torch.float32))
    d2o = build_name_map(model, c)
    inp = make_inputs(c, gen)

    # diffusers layout, written from an UNPATCHED model (patching only touches a parameterless module)
    dsave = copy.deepcopy(model).to(sdt)
    dsave.save_pretrained(os.path.join(case_dir, "diffusers"), safe_serialization=True)
    del dsave

    patch_official_numerics(model)
    v, igrads, pgrads = run_with_grads(model, inp)
    assert torch.isfinite(v).all()

    # original layout
    order = original_names(c)
    o2d = {o: d for d, o in d2o.items()}
    dparams = dict(model.named_parameters())
    orig_store = {o: dparams[o2d[o]].detach().to(sdt).contiguous() for o in order}
    for o in order:
        assert orig_store[o].shape == dparams[o2d[o]].shape
        assert torch.equal(orig_store[o].float(), dparams[o2d[o]].detach())  # rounding was exact
    files = write_original(os.path.join(case_dir, "original"), c, orig_store)

    # inputs / expected
    save_file({k: t.contiguous() for k, t in inp.items()}, os.path.join(case_dir, "inputs.safetensors"),
              metadata={"format": "pt"})
    expected = {"v": v}
    for k, g in igrads.items():
        expected["grad." + k] = g
    for o in order:
        expected["grad." + o] = pgrads[o2d[o]]
    assert all(t.dtype == torch.float32 for t in expected.values())
    save_file({k: t.contiguous() for k, t in expected.items()}, os.path.join(case_dir, "expected.safetensors"),
              metadata={"format": "pt"})

    # ---------------- self-checks ----------------
    # (1) original layout from disk -> diffusers names -> fresh model -> forward must equal v exactly
    orig_disk = load_original(os.path.join(case_dir, "original"))
    assert set(orig_disk) == set(order)
    assert all(t.dtype == sdt for t in orig_disk.values())
    fresh = make_model(c)
    fresh.load_state_dict({o2d[o]: t.float() for o, t in orig_disk.items()}, strict=True)
    patch_official_numerics(fresh)
    with torch.no_grad():
        v1 = diffusers_forward(fresh, inp)
    v_disk = load_file(os.path.join(case_dir, "expected.safetensors"))["v"]
    assert torch.equal(v1, v_disk) and torch.equal(v_disk, v), "original-layout reload does not reproduce v"
    # (2) the same through diffusers' own converter (the from_single_file path)
    conv = convert_wan_transformer_to_diffusers({o: t.float() for o, t in orig_disk.items()})
    fresh2 = make_model(c)
    fresh2.load_state_dict(conv, strict=True)
    patch_official_numerics(fresh2)
    with torch.no_grad():
        assert torch.equal(diffusers_forward(fresh2, inp), v), "diffusers converter path differs"
    # (3) diffusers layout from disk via from_pretrained
    #     (config through load_config/from_config: from_pretrained itself needs `accelerate` here)
    ddir = os.path.join(case_dir, "diffusers")
    dcfg = WanTransformer3DModel.load_config(ddir)
    assert dcfg["_class_name"] == "WanTransformer3DModel"
    fresh3 = WanTransformer3DModel.from_config(dcfg).eval()
    for k, val in diffusers_kwargs(c).items():
        assert (list(val) if isinstance(val, tuple) else val) == dcfg[k], f"diffusers config {k}"
    dsd = load_file(os.path.join(ddir, "diffusion_pytorch_model.safetensors"))
    assert all(t.dtype == sdt for t in dsd.values()) and set(dsd) == set(d2o)
    fresh3.load_state_dict({k: t.float() for k, t in dsd.items()}, strict=True)
    patch_official_numerics(fresh3)
    with torch.no_grad():
        assert torch.equal(diffusers_forward(fresh3, inp), v), "diffusers-layout reload does not reproduce v"
    # (4) stock diffusers (float32 sinusoid) vs the patched oracle: how much the patch matters
    stock = make_model(c)
    stock.load_state_dict({o2d[o]: t.float() for o, t in orig_disk.items()}, strict=True)
    with torch.no_grad():
        stock_err = rel_err(diffusers_forward(stock, inp), v)
    # (5) independent float64 reference of the official forward
    ref = None
    if do_ref:
        fwd, gw, gname = ref_check({o: t.float() for o, t in orig_disk.items()}, inp, c, v, expected)
        assert fwd <= FWD_TOL / 10, f"{name}: forward vs float64 reference {fwd:.3e}"
        assert gw <= GRAD_TOL / 10, f"{name}: gradient {gname} vs float64 reference {gw:.3e}"
        ref = {"v_max_rel_err": float(f"{fwd:.3e}"), "grad_max_rel_err": float(f"{gw:.3e}"),
               "grad_worst_tensor": gname}

    dim = c["heads"] * c["head_dim"]
    inputs_list = {k: list(t.shape) for k, t in inp.items()}
    meta = {
        "case": name, "model_type": c["model_type"],
        "dims": {"dim": dim, "num_heads": c["heads"], "head_dim": c["head_dim"], "ffn_dim": c["ffn_dim"],
                 "num_layers": c["num_layers"], "text_dim": c["text_dim"], "image_dim": c["image_dim"],
                 "in_dim": c["in_dim"], "out_dim": c["out_dim"], "freq_dim": c["freq_dim"], "eps": 1e-6,
                 "patch_size": [1, 2, 2], "text_len": 512,
                 "rope_pairs_f_h_w": [c["head_dim"] // 2 - 2 * (c["head_dim"] // 6), c["head_dim"] // 6,
                                      c["head_dim"] // 6]},
        "shape": {"batch": c["B"], "frames": c["F"], "height": c["H"], "width": c["W"],
                  "tokens": c["F"] * (c["H"] // 2) * (c["W"] // 2), "context_len": c["Lc"],
                  "image_tokens": IMG_TOKENS if c["model_type"] == "i2v" else 0},
        "t": c["t"],
        "weight_dtype": c["dtype"], "weight_safetensors_dtype": ST_DTYPE[c["dtype"]],
        "compute_dtype": "f32", "io_dtype": "f32",
        "original_files": files, "original_sharded": c["shards"] > 1,
        "inputs": inputs_list,
        "hidden_states_channels": "concat([x, y], dim=1)" if c["model_type"] == "i2v" else "x",
        "expected": {"v": list(v.shape), "input_grads": ["grad." + k for k in igrads],
                     "param_grads": len(order), "param_grad_names": "grad.<original-layout name>"},
        "loss": "sum(v * cotangent)",
        "tolerance": {"metric": "max|a-b| / max|b| per tensor", "forward": FWD_TOL, "grad": GRAD_TOL},
        "seed": c["seed"],
        "oracle": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                   "timestep_sinusoid": "float64 (patched; official)", "sdpa": "math",
                   "stock_diffusers_v_rel_diff": float(f"{stock_err:.3e}"),
                   "float64_reference": ref},
    }
    text = json.dumps(meta, indent=2)
    # keep short numeric lists (shapes) on one line
    text = re.sub(r"\[\s*([-0-9.e, \n]+?)\s*\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text)
    with open(os.path.join(case_dir, "case.json"), "w") as fh:
        fh.write(text + "\n")
    return {"name": name, "bytes": dir_size(case_dir), "secs": time.time() - t0, "stock": stock_err, "ref": ref,
            "n_params": len(order), "n_elems": sum(t.numel() for t in orig_store.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "tests", "fixtures", "wan"))
    ap.add_argument("--skip-ref", action="store_true", help="skip the float64 reference cross-check")
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    args = ap.parse_args()

    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()  # silences the `_keep_in_fp32_modules` .to() warning
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    assert os.environ.get("DIFFUSERS_ATTN_BACKEND", "native") == "native"

    t0 = time.time()
    out = os.path.normpath(args.out)
    os.makedirs(out, exist_ok=True)
    d_stock = check_sinusoid_patch()
    print(f"timestep sinusoid: patched == float64 reference exactly; stock diffusers float32 "
          f"sinusoid differs by up to {d_stock:.3e} (abs)")
    results = []
    for c in CASES:
        if args.only and c["name"] not in args.only:
            continue
        r = make_case(c, out, not args.skip_ref)
        results.append(r)
        ref = r["ref"]
        ref_s = (f"f64-ref v {ref['v_max_rel_err']:.2e}, grads {ref['grad_max_rel_err']:.2e} "
                 f"({ref['grad_worst_tensor']})" if ref else "f64-ref skipped")
        print(f"{r['name']:10s} {r['bytes'] / 1e6:7.3f} MB  {r['n_params']:3d} params "
              f"({r['n_elems']} elems)  stock-diffusers v diff {r['stock']:.2e}  {ref_s}  [{r['secs']:.1f}s]")
    total = dir_size(out)
    print(f"total {total / 1e6:.3f} MB under {out}; {time.time() - t0:.1f}s; self-checks passed")


if __name__ == "__main__":
    sys.exit(main())

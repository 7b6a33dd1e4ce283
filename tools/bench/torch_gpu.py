#!/usr/bin/env python3
"""PyTorch side of `prfl bench --preset ...`: the same three steps (PAVRM training step, PRFL step,
score) with Wan2.1-1.3B shapes and random weights, done the way the reference does them: fp32
master weights under bf16 autocast, F.scaled_dot_product_attention (flash on the GPU), gradient
checkpointing per block (torch.utils.checkpoint, non-reentrant), torch.optim.AdamW, grad-norm
clipping at 1.0.

The model is a minimal, faithful PyTorch Wan2.1 T2V (the structure of the reference
wan/modules/model.py: modulation tables added to the time projection in fp32, LayerNorms and
RMSNorms computed in fp32, q/k RMSNorm over the full width, 3-D RoPE on self-attention, cross-
attention to 512 text tokens, tanh-GELU FFN, gated residuals in fp32). One deliberate
difference: RoPE is applied in fp32 real arithmetic (as diffusers does) instead of the
reference's float64 complex multiply, which only makes this baseline faster. The reward model is
the first K blocks plus the learned-query attention pooling (nn.MultiheadAttention, 8 heads) and
the MLP D -> 1024 -> 512 -> 1 (method.md section 3). With `--impl diffusers` (and diffusers
importable) the generator is diffusers' WanTransformer3DModel instead.

Steps, timing, memory and FLOPs follow src/bin/prfl/bench.rs (its module documentation has the
FLOP formula, repeated in `step_flops` below): median of the timed steps after warm-up, each
synchronised; peak = torch.cuda.max_memory_allocated over the timed steps (model, optimiser state
and activations; `reserved` is the caching allocator's high-water mark too).

Usage:
  python tools/bench/torch_gpu.py --preset 480p [--steps score,pavrm,prfl] [--json out.json]
  python tools/bench/torch_gpu.py --measure-peak        # bf16 GEMM peak and copy bandwidth
  python tools/bench/torch_gpu.py --device cpu --tiny   # a check that runs anywhere
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

WAN_1_3B = dict(dim=1536, ffn=8960, heads=12, layers=30, text_dim=4096, freq_dim=256,
                in_dim=16, out_dim=16, eps=1e-6)
PRESETS = {
    # 480 x 832 x 81 frames -> latent 16 x 21 x 60 x 104 -> 32760 tokens.
    "480p": dict(name="480p x 81f", frames=21, height=60, width=104, text_len=512),
    # 240 x 416 x 33 frames -> latent 16 x 9 x 30 x 52 -> 3510 tokens.
    "240p": dict(name="240p x 33f", frames=9, height=30, width=52, text_len=512),
    "tiny": dict(name="tiny", frames=2, height=8, width=8, text_len=16,
                 model=dict(dim=256, ffn=512, heads=2, layers=4, text_dim=64)),
}


# ------------------------------------------------------------------------------------ model

def sinusoidal_embedding_1d(dim, position):
    half = dim // 2
    position = position.double()
    sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def rope_tables(head_dim, f, h, w, device, theta=10000.0):
    """cos/sin [L, head_dim/2] of Wan's 3-D RoPE: the pairs split (f, h, w) as c - 2(c//3),
    c//3, c//3 with c = head_dim/2."""
    c = head_dim // 2
    splits = [c - 2 * (c // 3), c // 3, c // 3]
    angles = []
    for n, (size, axis) in zip(splits, [(f, 0), (h, 1), (w, 2)]):
        dim = 2 * n
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
        pos = torch.arange(size, dtype=torch.float64, device=device)
        a = torch.outer(pos, freqs)  # [size, n]
        shape = [1, 1, 1, n]
        shape[axis] = size
        angles.append(a.view(*shape).expand(f, h, w, n))
    ang = torch.cat(angles, dim=-1).reshape(f * h * w, c)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x, cos, sin):
    """x [B, L, H, d]: rotates interleaved pairs (fp32)."""
    dt = x.dtype
    x = x.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)
    return out.to(dt)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.float()).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim, heads, eps):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x, context=None, rope=None):
        b, l, d = x.shape
        ctx = x if context is None else context
        q = self.norm_q(self.q(x)).view(b, l, self.heads, -1)
        k = self.norm_k(self.k(ctx)).view(b, ctx.shape[1], self.heads, -1)
        v = self.v(ctx).view(b, ctx.shape[1], self.heads, -1)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # SDPA wants [B, H, L, d]; bf16 under autocast -> the flash kernel on the GPU.
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype))
        return self.o(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["dim"]
        self.norm1 = LayerNorm(d, eps=c["eps"], elementwise_affine=False)
        self.self_attn = Attention(d, c["heads"], c["eps"])
        self.norm3 = LayerNorm(d, eps=c["eps"], elementwise_affine=True)
        self.cross_attn = Attention(d, c["heads"], c["eps"])
        self.norm2 = LayerNorm(d, eps=c["eps"], elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, c["ffn"]), nn.GELU(approximate="tanh"),
                                 nn.Linear(c["ffn"], d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)

    def forward(self, x, e, context, cos, sin):
        with torch.autocast(x.device.type, enabled=False):
            e = (self.modulation + e).chunk(6, dim=1)
        y = self.self_attn(self.norm1(x).float() * (1 + e[1]) + e[0], rope=(cos, sin))
        with torch.autocast(x.device.type, enabled=False):
            x = x + y * e[2]
        x = x + self.cross_attn(self.norm3(x), context=context)
        y = self.ffn(self.norm2(x).float() * (1 + e[4]) + e[3])
        with torch.autocast(x.device.type, enabled=False):
            x = x + y * e[5]
        return x


class Wan(nn.Module):
    """Wan2.1 T2V; `blocks` < layers and `head=False` make the reward backbone."""

    def __init__(self, c, blocks=None, head=True):
        super().__init__()
        self.c = c
        d = c["dim"]
        self.patch_embedding = nn.Conv3d(c["in_dim"], d, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.text_embedding = nn.Sequential(nn.Linear(c["text_dim"], d), nn.GELU(approximate="tanh"),
                                            nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(c["freq_dim"], d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(c) for _ in range(blocks or c["layers"]))
        if head:
            self.head_norm = LayerNorm(d, eps=c["eps"], elementwise_affine=False)
            self.head = nn.Linear(d, c["out_dim"] * 4)
            self.head_modulation = nn.Parameter(torch.randn(1, 2, d) / d ** 0.5)
        self.has_head = head
        self.checkpointing = False

    def forward(self, x, t, context):
        b, _, f, h, w = x.shape
        hp, wp = h // 2, w // 2
        x = self.patch_embedding(x).flatten(2).transpose(1, 2)  # [B, L, D]
        cos, sin = rope_tables(self.c["dim"] // self.c["heads"], f, hp, wp, x.device)
        with torch.autocast(x.device.type, enabled=False):
            e = self.time_embedding(sinusoidal_embedding_1d(self.c["freq_dim"], t).float())
            e0 = self.time_projection(e).unflatten(1, (6, self.c["dim"]))
        context = self.text_embedding(context)
        for blk in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, e0, context, cos, sin, use_reentrant=False)
            else:
                x = blk(x, e0, context, cos, sin)
        if not self.has_head:
            return x
        with torch.autocast(x.device.type, enabled=False):
            m = (self.head_modulation + e.unsqueeze(1)).chunk(2, dim=1)
            y = self.head_norm(x) * (1 + m[1]) + m[0]
        y = self.head(y)  # [B, L, 4 C]
        c = self.c["out_dim"]
        y = y.view(b, f, hp, wp, 2, 2, c).permute(0, 6, 1, 2, 4, 3, 5)
        return y.reshape(b, c, f, h, w)


class RewardModel(nn.Module):
    def __init__(self, c, k, pool_heads=8, queries=1, hidden=(1024, 512)):
        super().__init__()
        self.backbone = Wan(c, blocks=k, head=False)
        d = c["dim"]
        self.query = nn.Parameter(torch.randn(1, queries, d) / d ** 0.5)
        self.pool = nn.MultiheadAttention(d, pool_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d * queries, hidden[0]), nn.ReLU(),
                                 nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
                                 nn.Linear(hidden[1], 1))

    def forward(self, x, t, context):
        feats = self.backbone(x, t, context)
        q = self.query.expand(feats.shape[0], -1, -1).to(feats.dtype)
        pooled, _ = self.pool(q, feats, feats, need_weights=False)
        pooled = pooled + q
        return self.mlp(pooled.flatten(1)).squeeze(-1)


def diffusers_generator(c):
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=c["heads"], attention_head_dim=c["dim"] // c["heads"],
        in_channels=c["in_dim"], out_channels=c["out_dim"], text_dim=c["text_dim"], freq_dim=c["freq_dim"],
        ffn_dim=c["ffn"], num_layers=c["layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=c["eps"])

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        @property
        def checkpointing(self):
            return self.m.gradient_checkpointing

        @checkpointing.setter
        def checkpointing(self, on):
            if on:
                self.m.enable_gradient_checkpointing()

        def forward(self, x, t, context):
            return self.m(x, t, context, return_dict=False)[0]

    return Wrap()


# ------------------------------------------------------------------------------------ FLOPs

def flops_parts(c, tokens, text_len):
    """Forward FLOPs, as in src/bin/prfl/bench.rs (multiply-add = 2)."""
    l, t, d, f = float(tokens), float(text_len), float(c["dim"]), float(c["ffn"])
    block = 8 * l * d * d + 4 * l * l * d + 4 * l * d * d + 4 * t * d * d + 4 * l * t * d + 4 * l * d * f
    embed = 2 * l * (4 * c["in_dim"]) * d + 2 * t * (c["text_dim"] * d + d * d)
    head = 2 * l * d * (4 * c["out_dim"])
    pool = 4 * l * d * d + 4 * l * d
    return block, embed, head, pool


def step_flops(c, tokens, text_len, k, step, lora=False):
    block, embed, head, pool = flops_parts(c, tokens, text_len)
    reward = embed + k * block + pool
    if step == "score":
        return reward
    if step == "pavrm":
        return embed + 3 * (k * block + pool)
    gen = embed + c["layers"] * block + head
    return (2 if lora else 3) * gen + 2 * reward


# ------------------------------------------------------------------------------------ steps

def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_steps(dev, a, step):
    last = 0.0
    for _ in range(a.warmup):
        t0 = time.perf_counter()
        step()
        sync(dev)
        last = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    start = time.perf_counter()
    while len(times) < max(a.max_reps, 1):
        if times and time.perf_counter() - start + sum(times) / len(times) > a.budget:
            break
        t0 = time.perf_counter()
        step()
        sync(dev)
        times.append(time.perf_counter() - t0)
    mem = {}
    if dev.type == "cuda":
        mem = dict(peak_bytes=torch.cuda.max_memory_allocated(dev),
                   reserved_bytes=torch.cuda.max_memory_reserved(dev))
    return times, mem, last


def lora_wrap(model, rank=128, alpha=128.0):
    """Rank-r adapters on q, k, v, o of self- and cross-attention; the base frozen."""
    for p in model.parameters():
        p.requires_grad_(False)

    class LoraLinear(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.a = nn.Parameter(torch.randn(rank, base.in_features, device=base.weight.device)
                                  / base.in_features ** 0.5)
            self.b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
            self.scale = alpha / rank

        def forward(self, x):
            return self.base(x) + F.linear(F.linear(x, self.a), self.b) * self.scale

    for blk in model.blocks:
        for attn in (blk.self_attn, blk.cross_attn):
            for n in ("q", "k", "v", "o"):
                setattr(attn, n, LoraLinear(getattr(attn, n)))


def run(a):
    dev = torch.device(a.device)
    p = PRESETS[a.preset]
    c = dict(WAN_1_3B, **p.get("model", {}))
    k = min(a.reward_blocks, c["layers"])
    f, h, w, tl = p["frames"], p["height"], p["width"], p["text_len"]
    tokens = f * (h // 2) * (w // 2)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16)
    torch.manual_seed(0)
    g = torch.Generator(device=dev).manual_seed(7)
    latent = torch.randn(1, 16, f, h, w, device=dev, generator=g)
    text = torch.randn(1, tl, c["text_dim"], device=dev, generator=g)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}"
          f" | preset {p['name']}: {tokens} tokens, D={c['dim']} layers={c['layers']} K={k}"
          f" | impl {a.impl} | PRFL {'LoRA rank 128' if a.lora else 'full fine-tuning'}",
          file=sys.stderr)
    results = {}
    for step in a.steps:
        t_setup = time.perf_counter()
        note = ""
        if step == "score":
            rm = RewardModel(c, k).to(dev).eval()
            for q in rm.parameters():
                q.requires_grad_(False)
            tt = torch.full((1,), 500.0, device=dev)

            def fn():
                with torch.inference_mode(), torch.autocast(**amp):
                    return torch.sigmoid(rm(latent, tt, text)).float().cpu()
        elif step == "pavrm":
            rm = RewardModel(c, k).to(dev).train()
            rm.backbone.checkpointing = True
            bb = rm.backbone
            for mod in (bb.patch_embedding, bb.text_embedding, bb.time_embedding, bb.time_projection):
                for q in mod.parameters():
                    q.requires_grad_(False)
            head_params = list(rm.pool.parameters()) + list(rm.mlp.parameters()) + [rm.query]
            opt = torch.optim.AdamW(
                [dict(params=[q for q in bb.blocks.parameters()], lr=1e-6),
                 dict(params=head_params, lr=1e-4)],
                betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8)
            trainable = [q for q in rm.parameters() if q.requires_grad]
            label = torch.ones(1, device=dev)

            def fn():
                sigma = torch.rand(1, device=dev)
                x = (1 - sigma) * latent + sigma * torch.randn_like(latent)
                with torch.autocast(**amp):
                    logit = rm(x, sigma * 1000, text)
                loss = F.binary_cross_entropy_with_logits(logit.float(), label)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss
        else:  # prfl
            gen = (diffusers_generator(c) if a.impl == "diffusers" else Wan(c)).to(dev).train()
            if a.lora:
                lora_wrap(gen if a.impl != "diffusers" else gen.m)
            gen.checkpointing = True
            rm = RewardModel(c, k).to(dev).eval()
            rm.backbone.checkpointing = True
            for q in rm.parameters():
                q.requires_grad_(False)
            trainable = [q for q in gen.parameters() if q.requires_grad]
            opt = torch.optim.AdamW(trainable, lr=5e-6, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8)
            # m = 0 of a 40-step shift-5 grid from sigma_max 0.999 (as prfl bench's mid_range (0, 0)).
            shift = 5.0
            s_lin = torch.linspace(0.999, 0.0, 41)[:2].double()
            sig = (shift * s_lin / (1 + (shift - 1) * s_lin)).tolist()
            t0v = torch.full((1,), sig[0] * 1000, device=dev)
            t1v = torch.full((1,), sig[1] * 1000, device=dev)

            def fn():
                noise = torch.randn_like(latent)
                with torch.autocast(**amp):
                    v = gen(noise, t0v, text)
                    x1 = noise + (sig[1] - sig[0]) * v.float()
                    score = torch.sigmoid(rm(x1, t1v, text).float())
                loss = (0.1 * F.relu(2.0 - score)).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss
        times, mem, _ = time_steps(dev, a, fn)
        times_sorted = sorted(times)
        n = len(times_sorted)
        med = times_sorted[n // 2] if n % 2 else 0.5 * (times_sorted[n // 2 - 1] + times_sorted[n // 2])
        fl = step_flops(c, tokens, tl, k, step, a.lora)
        results[step] = dict(median_s=med, times_s=times, flops=fl,
                             mfu=(fl / med / (a.peak_tflops * 1e12)) if a.peak_tflops else None,
                             setup_and_run_s=time.perf_counter() - t_setup, note=note, **mem)
        print(f"  {step:<6} median {med:9.3f} s over {n} step(s), peak "
              f"{mem.get('peak_bytes', float('nan')) / 2 ** 30:7.2f} GiB", file=sys.stderr)
        fn = rm = gen = opt = None  # noqa: F841 (free the step's model before the next one)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    out = dict(engine="torch", torch=torch.__version__, impl=a.impl,
               device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               preset=p["name"], tokens=tokens, text_len=tl, dim=c["dim"], layers=c["layers"],
               reward_blocks=k, lora=a.lora, peak_tflops=a.peak_tflops,
               memory="torch.cuda.max_memory_allocated" if dev.type == "cuda" else None,
               steps=results)
    return out


def measure_peak(a):
    """Dense bf16 GEMM rate (8192^3, random data, median of 10 after 3 warm-ups) and
    device-to-device copy bandwidth (bytes read + written)."""
    dev = torch.device(a.device)
    n = 8192 if dev.type == "cuda" else 512
    xs = [torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2)]
    ys = [torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2)]
    ts = []
    for i in range(13):
        sync(dev)
        t0 = time.perf_counter()
        torch.mm(xs[i % 2], ys[i % 2])
        sync(dev)
        if i >= 3:
            ts.append(time.perf_counter() - t0)
    ts.sort()
    tflops = 2 * n ** 3 / ts[len(ts) // 2] / 1e12
    nbytes = (2 << 30) if dev.type == "cuda" else (64 << 20)
    src = torch.empty(nbytes // 4, device=dev, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    cts = []
    for i in range(8):
        sync(dev)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(dev)
        if i >= 2:
            cts.append(time.perf_counter() - t0)
    cts.sort()
    return dict(bf16_gemm_tflops=tflops, gemm_n=n, copy_tb_s=2 * nbytes / cts[len(cts) // 2] / 1e12,
                copy_bytes=nbytes,
                device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="480p", choices=sorted(PRESETS))
    ap.add_argument("--tiny", action="store_true", help="same as --preset tiny")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", default="score,pavrm,prfl")
    ap.add_argument("--reward-blocks", type=int, default=8)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--impl", default="minimal", choices=["minimal", "diffusers"],
                    help="the PRFL generator: this file's Wan, or diffusers' WanTransformer3DModel")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-reps", type=int, default=5)
    ap.add_argument("--budget", type=float, default=30.0)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--measure-peak", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.tiny:
        a.preset = "tiny"
    a.steps = [s for s in a.steps.split(",") if s]
    for s in a.steps:
        if s not in ("score", "pavrm", "prfl"):
            ap.error(f"unknown step {s}")
    if a.impl == "diffusers":
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers is not importable: using the minimal Wan", file=sys.stderr)
            a.impl = "minimal"
    out = measure_peak(a) if a.measure_peak else run(a)
    text = json.dumps(out)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(json.dumps(out, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()

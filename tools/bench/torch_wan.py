#!/usr/bin/env python3
"""PyTorch eager side of `prfl bench`: the same Wan configuration through diffusers'
WanTransformer3DModel on the CPU, f32, random weights.

Each measurement runs in its own subprocess so that its peak memory can be read from the OS:
peak = ru_maxrss at the end minus the resident size just before the measurement (model and inputs
already built). Prints one JSON line: {"forward": {"seconds", "peak_bytes"}, ...}.
"""
import argparse
import json
import resource
import subprocess
import sys
import time


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(a, phase):
    import torch
    from diffusers import WanTransformer3DModel

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=a.dim // 128, attention_head_dim=128,
        in_channels=16, out_channels=16, text_dim=a.text_dim, freq_dim=256, ffn_dim=a.ffn,
        num_layers=a.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    ).float()
    if phase == "forward_backward_ckpt":
        model.enable_gradient_checkpointing()
    x = torch.randn(a.batch, 16, a.frames, a.height, a.width)
    ctx = torch.randn(a.batch, a.text_len, a.text_dim)
    t = torch.full((a.batch,), 500.0)
    cot = torch.randn_like(x)

    def step():
        if phase == "forward":
            with torch.no_grad():
                model(x, t, ctx, return_dict=False)
        else:
            model.zero_grad(set_to_none=False)
            out = model(x, t, ctx, return_dict=False)[0]
            (out * cot).sum().backward()

    if phase != "forward":
        model.train()
    base = rss_bytes()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(a.reps):
        step()
    secs = (time.perf_counter() - start) / a.reps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"seconds": secs, "peak_bytes": max(peak, 0)}


def main():
    ap = argparse.ArgumentParser()
    for k, v in [("dim", 512), ("layers", 2), ("ffn", 1536), ("text-dim", 256), ("text-len", 64),
                 ("frames", 4), ("height", 32), ("width", 32), ("batch", 1), ("reps", 3), ("threads", 2)]:
        ap.add_argument(f"--{k}", type=int, default=v)
    ap.add_argument("--phase", default=None)
    a = ap.parse_args()
    if a.phase:
        print(json.dumps(measure(a, a.phase)))
        return
    out = {}
    for phase in ["forward", "forward_backward", "forward_backward_ckpt"]:
        r = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--phase", phase],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stderr)
            sys.exit(1)
        out[phase] = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Oracle fixtures for the Wan2.1 VAE (`prfl::vae`, tests/vae.rs).

Run from the crate root with a CPU torch + diffusers venv:

    /work/venv-torch/bin/python tools/oracle/make_vae_fixtures.py

Builds tiny random `diffusers.AutoencoderKLWan` configurations (the Wan2.1 architecture, only
narrower), and writes for each one under tests/fixtures/vae/<name>/:

- `config.json` + `diffusion_pytorch_model.safetensors`: the diffusers layout (`save_pretrained`);
- `Wan2.1_VAE.pth`: the same weights under the original release's key names (`torch.save` of a
  plain state dict). The original names are derived here from the diffusers ones, and the script
  checks that diffusers' own `convert_wan_vae_to_diffusers` maps them back exactly;
- `cases.safetensors`: per case `<case>.frames` [T, H, W, 3] in [-1, 1], `<case>.mean` the
  encoder's posterior mean [z, F, H/8, W/8] (raw, before the latent normalisation),
  `<case>.latent` a random latent [z, F, h, w] and `<case>.decoded` [3, T', H, W] its decoding
  (`vae.decode`, clamped to [-1, 1] as diffusers does).

Every parameter is random (RMS-norm gammas around 1, conv weights N(0, 1/fan_in), biases 0.1 N),
so that no layer is an identity, then rounded to float16 and stored as float16 (so that the
fixtures stay under 1 MB); both sides compute in float32 from those exact values. Every RMS norm
sees at least 6 channels: with 2 or 4 a random network is so ill-conditioned that torch's own f32
result differs from its f64 one by more than 1e-5. Seeded.
"""
import json
import os
import sys

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "vae")


def original_key(key, cfg):
    """The original Wan2.1 release's name of a diffusers `AutoencoderKLWan` parameter."""
    nrb = cfg["num_res_blocks"]
    parts = key.split(".")
    res = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight",
           "conv1.bias": "residual.2.bias", "norm2.gamma": "residual.3.gamma",
           "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
           "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}
    if key.startswith("quant_conv."):
        return "conv1." + parts[-1]
    if key.startswith("post_quant_conv."):
        return "conv2." + parts[-1]
    side = parts[0]
    rest = ".".join(parts[1:])
    if rest.startswith("conv_in."):
        return f"{side}.conv1.{parts[-1]}"
    if rest.startswith("norm_out."):
        return f"{side}.head.0.gamma"
    if rest.startswith("conv_out."):
        return f"{side}.head.2.{parts[-1]}"
    if rest.startswith("mid_block.attentions.0."):
        return f"{side}.middle.1." + rest[len("mid_block.attentions.0."):]
    if rest.startswith("mid_block.resnets."):
        i = int(parts[3])
        tail = ".".join(parts[4:])
        return f"{side}.middle.{2 * i}.{res[tail]}"
    if rest.startswith("down_blocks."):
        tail = ".".join(parts[3:])
        return f"encoder.downsamples.{parts[2]}.{res.get(tail, tail)}"
    if rest.startswith("up_blocks."):
        level = int(parts[2])
        base = level * (nrb + 2)
        if parts[3] == "resnets":
            tail = ".".join(parts[5:])
            return f"decoder.upsamples.{base + int(parts[4])}.{res[tail]}"
        if parts[3] == "upsamplers":
            tail = ".".join(parts[5:])
            return f"decoder.upsamples.{base + nrb + 1}.{tail}"
    raise KeyError(key)


def randomise(vae, gen):
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)


def check_original_names(cfg):
    """diffusers' `convert_wan_vae_to_diffusers` (which knows only the release's block
    structure) inverts `original_key` on every parameter."""
    sd = AutoencoderKLWan(**cfg).state_dict()
    orig = {original_key(k, cfg): v for k, v in sd.items()}
    assert len(orig) == len(sd)
    back = convert_wan_vae_to_diffusers(dict(orig))
    assert sorted(back) == sorted(sd), sorted(set(back) ^ set(sd))
    print(f"original names: {len(orig)} parameters map back exactly", file=sys.stderr)


def build(name, cfg, cases, seed):
    gen = torch.Generator().manual_seed(seed)
    z = cfg["z_dim"]
    cfg = dict(cfg)
    cfg["latents_mean"] = [round(0.3 * float(v), 4) for v in torch.randn(z, generator=gen)]
    cfg["latents_std"] = [round(0.5 + float(v), 4) for v in torch.rand(z, generator=gen)]
    vae = AutoencoderKLWan(**cfg).eval()
    randomise(vae, gen)
    with torch.no_grad():
        # Weights exactly representable in f16, stored so (the fixtures stay small); both sides
        # compute in f32.
        for p in vae.parameters():
            p.copy_(p.half().float())
    out = os.path.join(ROOT, name)
    os.makedirs(out, exist_ok=True)
    vae.half().save_pretrained(out, safe_serialization=True)
    vae.float()
    sd = {k: v.detach().clone().half().contiguous() for k, v in vae.state_dict().items()}
    orig = {original_key(k, cfg): v for k, v in sd.items()}
    assert len(orig) == len(sd)
    assert all(torch.equal(v.float(), vae.state_dict()[k]) for k, v in sd.items())
    torch.save(orig, os.path.join(out, "Wan2.1_VAE.pth"))
    tensors = {}
    with torch.no_grad():
        for case, (t, h, w) in cases.items():
            frames = torch.rand((t, h, w, 3), generator=gen) * 2 - 1
            x = frames.permute(3, 0, 1, 2).unsqueeze(0)
            mean = vae.encode(x).latent_dist.mean[0]
            f = 1 + (t - 1) // 4
            latent = torch.randn((z, f, h // 8, w // 8), generator=gen)
            decoded = vae.decode(latent.unsqueeze(0)).sample[0]
            tensors[f"{case}.frames"] = frames.contiguous()
            tensors[f"{case}.mean"] = mean.contiguous()
            tensors[f"{case}.latent"] = latent.contiguous()
            tensors[f"{case}.decoded"] = decoded.contiguous()
    save_file(tensors, os.path.join(out, "cases.safetensors"))
    n = sum(p.numel() for p in vae.parameters())
    print(f"{name}: {n} parameters, cases {list(cases)}", file=sys.stderr)


def main():
    torch.manual_seed(0)
    base = dict(temperal_downsample=[False, True, True], attn_scales=[], dropout=0.0)
    # z = 4; widths 6, 12 (a shortcut conv in both stacks); at least 6 channels under every RMS
    # norm, so that the random network stays well-conditioned in f32.
    build("tiny_z4", dict(base, base_dim=6, dim_mult=[1, 2, 2, 2], z_dim=4, num_res_blocks=1),
          {"t1": (1, 16, 24), "t5": (5, 16, 24), "t9": (9, 8, 16)}, seed=1)
    # z = 16 (the release's latent width), equal widths (a shortcut conv at every decoder level
    # but the first), a decoder narrower than the encoder.
    build("tiny_z16", dict(base, base_dim=8, decoder_base_dim=6, dim_mult=[1, 1, 1, 1], z_dim=16,
                           num_res_blocks=1),
          {"t5": (5, 8, 16)}, seed=2)
    # The release's block structure (not saved): the original names this script (and
    # prfl::vae::weights) derive must be exactly what diffusers' own converter maps back.
    check_original_names(dict(base, base_dim=2, dim_mult=[1, 2, 4, 4], z_dim=4, num_res_blocks=2))


if __name__ == "__main__":
    main()

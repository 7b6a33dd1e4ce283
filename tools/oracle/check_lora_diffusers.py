#!/usr/bin/env python3
"""Loads a prfl LoRA export in diffusers and checks it against prfl's merged model (issue 18).

    .venv/bin/python tools/oracle/check_lora_diffusers.py --generator G --lora L --merged M [--tol 1e-5]

G and M are original-layout Wan2.1 directories (config.json + diffusion_pytorch_model.safetensors:
the base generator and `prfl finetune`'s `merged/`); L is `lora.safetensors` in either of prfl's
key layouts. The base is built as diffusers' `WanTransformer3DModel` and the LoRA attached with no
adapter weight given (the strength must come from the file), along the two routes diffusers has:
- the pipeline's: `WanPipeline.lora_state_dict` (which also converts ComfyUI-style
  `diffusion_model.*` keys, folding their `.alpha` into the weights) and
  `WanPipeline.load_lora_into_transformer`, exactly what `WanPipeline.load_lora_weights` runs;
- the model's: `WanTransformer3DModel.load_lora_adapter(path, use_safetensors=True)`, for the
  diffusers layout only. (diffusers 0.42.1 reads a file's `lora_adapter_metadata` on this route
  only when `use_safetensors=True` or a `weight_name` ending in .safetensors is given; a bare path
  falls to its non-safetensors branch, drops the metadata and applies strength 1.)
Then v = model(x, t, context) on seeded random inputs is compared with the merged model's:
`max|a - b| / max|b|` must be <= tol on every route, and the adapter must move the output (else the
check would pass with the LoRA ignored). Prints one JSON line: the layout, the peft scaling each
route built, and the differences.
"""

import argparse
import json
import os
import sys

import torch
from diffusers import WanPipeline
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as wf  # noqa: E402


def spec(dirp):
    with open(os.path.join(dirp, "config.json")) as fh:
        cfg = json.load(fh)
    sd = wf.load_original(dirp)
    return dict(
        model_type=cfg.get("model_type", "t2v"), heads=cfg["num_heads"],
        head_dim=cfg["dim"] // cfg["num_heads"], ffn_dim=cfg["ffn_dim"], num_layers=cfg["num_layers"],
        text_dim=sd["text_embedding.0.weight"].shape[1], image_dim=None, in_dim=cfg["in_dim"],
        out_dim=cfg["out_dim"], freq_dim=cfg.get("freq_dim", 256),
    ), sd


def build(c, sd):
    model = wf.make_model(c)
    d2o = wf.build_name_map(model, c)
    model.load_state_dict({d: sd[o].float() for d, o in d2o.items()}, strict=True)
    wf.patch_official_numerics(model)
    return model.eval()


def forward(model, x, t, ctx):
    with torch.no_grad():
        return wf.diffusers_forward(model, {"x": x, "t": t, "context": ctx})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", required=True)
    ap.add_argument("--lora", required=True)
    ap.add_argument("--merged", required=True)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    c, base_sd = spec(args.generator)
    _, merged_sd = spec(args.merged)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, c["out_dim"], 2, 4, 4, generator=gen)
    t = torch.tensor([640.0])
    ctx = torch.randn(1, 6, c["text_dim"], generator=gen)

    with safe_open(args.lora, "pt") as f:
        keys = list(f.keys())
        meta = f.metadata() or {}
    layout = "comfyui" if keys[0].startswith("diffusion_model.") else "diffusers"

    v_merged = forward(build(c, merged_sd), x, t, ctx)
    v_base = forward(build(c, base_sd), x, t, ctx)
    routes = {}
    model = build(c, base_sd)
    sd, md = WanPipeline.lora_state_dict(args.lora, return_lora_metadata=True)
    WanPipeline.load_lora_into_transformer(sd, transformer=model, adapter_name="prfl", metadata=md)
    routes["pipeline"] = model
    if layout == "diffusers":
        model = build(c, base_sd)
        model.load_lora_adapter(args.lora, adapter_name="prfl", prefix="transformer", use_safetensors=True)
        routes["load_lora_adapter"] = model
    report = {"layout": layout, "has_adapter_metadata": "lora_adapter_metadata" in meta,
              "base_vs_merged": wf.rel_err(v_base, v_merged)}
    ok = report["base_vs_merged"] > 100 * args.tol
    for name, m in routes.items():
        scalings = sorted({float(s) for mod in m.modules() if isinstance(getattr(mod, "scaling", None), dict)
                           for s in mod.scaling.values()})
        err = wf.rel_err(forward(m, x, t, ctx), v_merged)
        report[name] = {"peft_scaling": scalings, "lora_vs_merged": err}
        ok = ok and err <= args.tol
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

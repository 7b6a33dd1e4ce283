#!/usr/bin/env python3
"""The LoRA key names diffusers and ComfyUI expect for Wan, as a committed fixture (issue 18).

    .venv/bin/python tools/oracle/make_lora_key_fixture.py   # -> tests/fixtures/interop/lora_keys.json

diffusers: a 2-layer `WanTransformer3DModel` gets a peft adapter on every prfl target; the names are
what `WanPipeline.save_lora_weights` writes (`get_peft_model_state_dict`, prefixed `transformer.`).
ComfyUI: its Wan LoRA loader maps `diffusion_model.<original Wan name>` to the model's weights and
reads `<layer>.lora_A.weight` / `.lora_B.weight` / `.alpha`; the original names come from this
oracle's diffusers -> original map (make_fixtures.py, cross-checked there against diffusers' own
converter). tests/interop.rs checks prfl's exports against both lists without Python.
"""

import json
import os
import sys

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as wf  # noqa: E402

C = dict(model_type="t2v", heads=2, head_dim=8, ffn_dim=32, num_layers=2, text_dim=8, image_dim=None,
         in_dim=16, out_dim=16, freq_dim=256)
TARGETS = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
           "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"]
RANK = 2


def main():
    model = wf.make_model(C)
    d2o = wf.build_name_map(model, C)
    o2d = {o: d for d, o in d2o.items()}
    modules = [o2d[f"blocks.{i}.{t}.weight"][: -len(".weight")] for i in range(C["num_layers"]) for t in TARGETS]
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=modules))
    diffusers_keys = sorted(f"transformer.{k}" for k in get_peft_model_state_dict(model))
    comfy = []
    for i in range(C["num_layers"]):
        for t in TARGETS:
            layer = f"diffusion_model.blocks.{i}.{t}"
            comfy += [f"{layer}.lora_A.weight", f"{layer}.lora_B.weight", f"{layer}.alpha"]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures",
                       "interop", "lora_keys.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"num_layers": C["num_layers"], "targets": TARGETS, "rank": RANK,
                   "diffusers": diffusers_keys, "comfyui": sorted(comfy)}, fh, indent=1)
        fh.write("\n")
    print(f"{len(diffusers_keys)} diffusers keys, {len(comfy)} ComfyUI keys -> {os.path.normpath(out)}")


if __name__ == "__main__":
    main()

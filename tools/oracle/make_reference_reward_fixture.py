#!/usr/bin/env python3
"""Oracle for importing and exporting the reference implementation's reward model (issue 18).

HY-Video-PRFL saves a PAVRM as three files: the generator cut to K blocks (head deleted) as
`checkpoint-<step>/diffusion_pytorch_model.safetensors` in the original Wan2.1 layout (with the
whole generator's config.json), and `torch.save` state dicts of its `QueryAttention`
(`queries` [1, D], `multihead_attn` = `nn.MultiheadAttention(D, heads, batch_first=True)`, output =
attention + query, the "return_type = query" residual) and its `MLP` (`fc1`, `fc2`, `fc3` with
ReLUs). The modules below are written from that description (same state-dict names and function);
the MLP widths are parameters here (the reference hard-wires 1024/512) to keep the fixture small.

    .venv/bin/python tools/oracle/make_reference_reward_fixture.py            # writes the fixture
    .venv/bin/python tools/oracle/make_reference_reward_fixture.py --check-export DIR
        # loads an export of `prfl export-reward` with the reference's own calls
        # (torch.load + load_state_dict(strict=True)) and checks its scores against the fixture's

The fixture (tests/fixtures/interop/reference_reward/, about 100 KB): `generator/` (random T2V
model, original layout), `checkpoint-100/` (the reward transformer: the generator's embeddings and
2 separately randomised blocks), `query_attention_step_100.ckpt`, `mlp_step_100.ckpt`,
`inputs.safetensors` (`latent` [B,16,F,H,W], `text` [B,L,text_dim]) and `expected.safetensors`
(`scores` [B] at `case.json`'s timestep). Each sample is scored on its own (batch 1), as the
reference trains: with a batch of several its residual add broadcasts [B, D] + [B, 1, D].
"""

import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as wf  # noqa: E402

GEN = dict(
    name="ref_reward_gen", model_type="t2v", heads=2, head_dim=16, ffn_dim=64, num_layers=3,
    text_dim=16, image_dim=None, in_dim=16, out_dim=16, freq_dim=256, dtype="f32", shards=1,
)
K = 2
POOL_HEADS = 4
HIDDEN = (24, 16)
B, FR, H, W, LC = 2, 2, 2, 4, 5
T = 400.0
STEP = 100
SEED = 1818
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures",
                   "interop", "reference_reward")


class QueryAttention(torch.nn.Module):
    """The reference's pooling: learned queries, torch's MultiheadAttention, the query added back."""

    def __init__(self, dim, heads, queries=1):
        super().__init__()
        self.multihead_attn = torch.nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.queries = torch.nn.Parameter(torch.empty(queries, dim))

    def forward(self, x):
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        attended, _ = self.multihead_attn(query=q, key=x, value=x, need_weights=False)
        return attended.squeeze(1) + q  # the reference's order: squeeze, then the residual add


class MLP(torch.nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden[0])
        self.fc2 = torch.nn.Linear(hidden[0], hidden[1])
        self.fc3 = torch.nn.Linear(hidden[1], 1)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def randomise_head(mod, gen):
    with torch.no_grad():
        for name, p in mod.named_parameters():
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if name == "queries":
                scale = 0.5
            elif p.dim() == 2:
                scale = p.shape[1] ** -0.5
            else:
                scale = 0.1
            p.copy_((z * scale).float())


def features(backbone, x, t, ctx):
    """Hidden tokens after the last kept block, [B, L, D] (the head is never used)."""
    grabbed = {}
    h = backbone.blocks[-1].register_forward_hook(lambda m, a, o: grabbed.setdefault("f", o))
    try:
        with sdpa_kernel(SDPBackend.MATH):
            backbone(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)
    finally:
        h.remove()
    return grabbed["f"]


def scores(backbone, qa, mlp, latent, text):
    out = []
    with torch.no_grad():
        for b in range(latent.shape[0]):
            f = features(backbone, latent[b:b + 1], torch.tensor([T]), text[b:b + 1])
            out.append(torch.sigmoid(mlp(qa(f))).reshape(()))
    return torch.stack(out)


def backbone_from_files(generator_dir, transformer_dir):
    """A K-block diffusers model with the generator's embeddings and the transformer's blocks,
    loaded strictly from the original-layout files."""
    rcfg = dict(GEN, num_layers=K)
    model = wf.make_model(rcfg)
    d2o = wf.build_name_map(model, rcfg)
    o2d = {o: d for d, o in d2o.items()}
    gen_sd = wf.load_original(generator_dir)
    tr_sd = wf.load_original(transformer_dir)
    expected = {o for o in wf.original_names(rcfg) if not o.startswith("head.")}
    assert set(tr_sd) == expected, sorted(set(tr_sd) ^ expected)
    sd = {o2d[o]: gen_sd[o] for o in o2d if o.startswith("head.")}  # unused by the features
    sd.update({o2d[o]: t for o, t in tr_sd.items()})
    model.load_state_dict(sd, strict=True)
    wf.patch_official_numerics(model)
    return model


def write_fixture(out):
    gen = torch.Generator().manual_seed(SEED)
    dim = GEN["heads"] * GEN["head_dim"]
    generator = wf.make_model(GEN)
    wf.randomise(generator, gen)
    g_d2o = wf.build_name_map(generator, GEN)
    g_o2d = {o: d for d, o in g_d2o.items()}
    gparams = dict(generator.named_parameters())
    gen_store = {o: gparams[g_o2d[o]].detach().contiguous() for o in wf.original_names(GEN)}

    # The "trained" reward transformer: the generator's embeddings (frozen in the reference) and
    # K blocks that differ from the generator's (trained).
    rcfg = dict(GEN, num_layers=K)
    tr = {o: t.clone() for o, t in gen_store.items()
          if not o.startswith("head.") and not o.startswith("blocks.")}
    probe = wf.make_model(rcfg)
    wf.randomise(probe, gen)
    r_d2o = wf.build_name_map(probe, rcfg)
    for d, p in probe.named_parameters():
        o = r_d2o[d]
        if o.startswith("blocks."):
            tr[o] = p.detach().contiguous().clone()

    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    wf.write_original(os.path.join(out, "generator"), GEN, gen_store)
    tdir = os.path.join(out, f"checkpoint-{STEP}")
    os.makedirs(tdir)
    save_file(tr, os.path.join(tdir, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tdir, "config.json"), "w") as fh:
        json.dump(wf.official_config(GEN), fh, indent=2)  # the reference keeps the whole config

    qa = QueryAttention(dim, POOL_HEADS)
    mlp = MLP(dim, HIDDEN)
    randomise_head(qa, gen)
    randomise_head(mlp, gen)
    torch.save(qa.state_dict(), os.path.join(out, f"query_attention_step_{STEP}.ckpt"))
    torch.save(mlp.state_dict(), os.path.join(out, f"mlp_step_{STEP}.ckpt"))

    latent = torch.randn(B, 16, FR, H, W, generator=gen)
    text = torch.randn(B, LC, GEN["text_dim"], generator=gen)
    save_file({"latent": latent, "text": text}, os.path.join(out, "inputs.safetensors"))

    # Score through the files as the reference reloads them.
    backbone = backbone_from_files(os.path.join(out, "generator"), tdir)
    qa2, mlp2 = QueryAttention(dim, POOL_HEADS), MLP(dim, HIDDEN)
    qa2.load_state_dict(torch.load(os.path.join(out, f"query_attention_step_{STEP}.ckpt")), strict=True)
    mlp2.load_state_dict(torch.load(os.path.join(out, f"mlp_step_{STEP}.ckpt")), strict=True)
    s = scores(backbone, qa2, mlp2, latent, text)
    assert torch.equal(s, scores(backbone, qa, mlp, latent, text))
    assert ((s > 0.02) & (s < 0.98)).all(), s  # not saturated: the comparison means something
    save_file({"scores": s.float().contiguous()}, os.path.join(out, "expected.safetensors"))
    case = {"timestep": T, "blocks": K, "pool_heads": POOL_HEADS, "hidden": list(HIDDEN), "step": STEP,
            "batch": B, "latent": [16, FR, H, W], "text": [LC, GEN["text_dim"]], "seed": SEED,
            "scores": s.tolist(), "torch": torch.__version__}
    with open(os.path.join(out, "case.json"), "w") as fh:
        json.dump(case, fh, indent=2)
        fh.write("\n")
    print(f"wrote {out}: scores {s.tolist()}")


def check_export(out, export_dir):
    """An export of `prfl export-reward` (of the import of this fixture) loads with the
    reference's calls and scores as the fixture does."""
    with open(os.path.join(out, "case.json")) as fh:
        case = json.load(fh)
    dim = GEN["heads"] * GEN["head_dim"]
    tdirs = [d for d in os.listdir(export_dir) if d.startswith("checkpoint-")]
    assert len(tdirs) == 1, tdirs
    step = tdirs[0].split("-")[-1]
    backbone = backbone_from_files(os.path.join(out, "generator"), os.path.join(export_dir, tdirs[0]))
    qa, mlp = QueryAttention(dim, case["pool_heads"]), MLP(dim, case["hidden"])
    # torch.load's default is weights_only=True: only tensors and plain containers are allowed.
    qa.load_state_dict(torch.load(os.path.join(export_dir, f"query_attention_step_{step}.ckpt")), strict=True)
    mlp.load_state_dict(torch.load(os.path.join(export_dir, f"mlp_step_{step}.ckpt")), strict=True)
    inp = load_file(os.path.join(out, "inputs.safetensors"))
    s = scores(backbone, qa, mlp, inp["latent"], inp["text"])
    want = load_file(os.path.join(out, "expected.safetensors"))["scores"]
    err = (s - want).abs().max().item()
    print(json.dumps({"max_abs_diff": err, "scores": s.tolist()}))
    assert err <= 1e-6, err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.normpath(OUT))
    ap.add_argument("--check-export", metavar="DIR")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.check_export:
        check_export(args.out, args.check_export)
    else:
        write_fixture(args.out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Oracle fixtures for `prfl::schedule` (tests/schedule.rs).

Run from the crate root with the project venv (torch CPU + diffusers):

    .venv/bin/python tools/oracle/make_scheduler_fixtures.py

Writes tests/fixtures/schedulers/*.safetensors:

- `{euler,unipc}_n{N}_s{S}.safetensors` for (N, S) in (10, 5), (40, 5), (8, 3): the grid diffusers
  builds in `set_timesteps(N)` (`sigmas` [N+1] f32, `timesteps` [N] f64 holding diffusers' values
  exactly), an initial sample `x` [64] f32, one random "model output" per step `model_outputs`
  [N, 64] f32, and every `prev_sample` of the diffusers step loop `samples` [N, 64] f32. UniPC files
  also carry `samples_f64` [N, 64] f64: the same loop run by diffusers in float64 on the same
  (f32-valued) sigmas, which isolates the solver algebra from torch's float32 rounding.
- `unipc_wan_n40_s5.safetensors`: the Wan2.1 reference grid (sigma_max = 0.999, timesteps
  truncated) computed here as the reference `FlowUniPCMultistepScheduler.set_timesteps` does, and a
  UniPC rollout on that grid with diffusers' solver (the Wan solver is the same algorithm; the grids
  differ only in their first point).
- `training_levels_s5.safetensors`: the 1000 training levels (sigma = linspace(1, 0, 1001)[:1000]
  shifted with s = 5) as `sigmas` f64 and truncated `timesteps` f64.

Everything is seeded, so rerunning reproduces the files bit for bit.
"""

import os

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "schedulers")
# One latent [batch, channels, frames, height, width] of 64 elements: small files, enough to catch
# any per-element mistake (diffusers' UniPC einsum needs at least [batch, channels, ...]).
SHAPE = (1, 4, 1, 4, 4)
LATENT = 64
CASES = [(10, 5.0), (40, 5.0), (8, 3.0)]
NUM_TRAIN_TIMESTEPS = 1000


def make_unipc(shift):
    return UniPCMultistepScheduler(
        use_flow_sigmas=True,
        flow_shift=shift,
        prediction_type="flow_prediction",
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
    )


def inputs(seed, n):
    """Initial sample and per-step model outputs, standard normal, from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    outs = torch.randn((n, *SHAPE), generator=g, dtype=torch.float32)
    return x, outs


def rollout(scheduler, x, outs):
    """The diffusers sampling loop with canned model outputs; returns every prev_sample."""
    samples = []
    sample = x.clone()
    for i, t in enumerate(scheduler.timesteps):
        sample = scheduler.step(outs[i].to(sample.dtype), t, sample).prev_sample
        samples.append(sample.reshape(LATENT).clone())
    return torch.stack(samples)


def wan_grid(n, shift):
    """The Wan2.1 reference grid, as its FlowUniPCMultistepScheduler builds it.

    The reference constructs the scheduler with shift=1, so its training sigmas are
    1 - linspace(1, 1/1000, 1000)[::-1] stored in float32: sigma_max = float32(0.999) (read back
    with .item()) and sigma_min = 0. set_timesteps(n, shift=s) then shifts linspace(sigma_max,
    sigma_min, n+1)[:-1] in float64, truncates 1000*sigma to int64 for the timesteps, appends a
    final 0 and stores the sigmas as float32.
    """
    train_sigmas = torch.from_numpy(
        1.0 - np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS)[::-1].copy()
    ).to(torch.float32)
    sigma_max = train_sigmas[0].item()
    sigma_min = train_sigmas[-1].item()
    sigmas = np.linspace(sigma_max, sigma_min, n + 1).copy()[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    sigmas = np.concatenate([sigmas, [0]]).astype(np.float32)
    return sigmas, timesteps.numpy()


def f64(t):
    return np.ascontiguousarray(np.asarray(t, dtype=np.float64))


def f32(t):
    if isinstance(t, torch.Tensor):
        t = t.detach().numpy()
    return np.ascontiguousarray(np.asarray(t, dtype=np.float32))


def flat(t):
    """Latents are stored flat ([64] or [steps, 64]): the Rust side sees flat buffers."""
    return f32(t.reshape(-1, LATENT).squeeze(0))


def save(name, tensors):
    path = os.path.join(OUT, name)
    save_file(tensors, path)
    print(f"{name}: {os.path.getsize(path)} bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    seed = 0
    for n, shift in CASES:
        tag = f"n{n}_s{int(shift)}"
        seed += 1
        x, outs = inputs(seed, n)

        # Euler (FlowMatchEulerDiscreteScheduler): float timesteps, no truncation.
        euler = FlowMatchEulerDiscreteScheduler(shift=shift)
        euler.set_timesteps(n)
        save(
            f"euler_{tag}.safetensors",
            {
                "sigmas": f32(euler.sigmas),
                "timesteps": f64(euler.timesteps.numpy()),
                "x": flat(x),
                "model_outputs": flat(outs),
                "samples": f32(rollout(euler, x, outs)),
            },
        )

        # UniPC in float32 (what a pipeline runs) and in float64 on the same sigmas.
        unipc = make_unipc(shift)
        unipc.set_timesteps(n)
        sigmas = unipc.sigmas.clone()
        samples = rollout(unipc, x, outs)
        unipc64 = make_unipc(shift)
        unipc64.set_timesteps(n)
        unipc64.sigmas = unipc64.sigmas.to(torch.float64)
        samples64 = rollout(unipc64, x.double(), outs.double())
        save(
            f"unipc_{tag}.safetensors",
            {
                "sigmas": f32(sigmas),
                "timesteps": f64(unipc.timesteps.numpy()),
                "x": flat(x),
                "model_outputs": flat(outs),
                "samples": f32(samples),
                "samples_f64": f64(samples64.numpy()),
            },
        )

    # The Wan reference grid and a UniPC rollout on it. diffusers' set_timesteps(sigmas=...) applies
    # the same float64 shift to the unshifted linspace the reference uses, so the grids coincide.
    n, shift = 40, 5.0
    sigmas, timesteps = wan_grid(n, shift)
    expected = [
        999, 994, 989, 983, 978, 972, 965, 959, 952, 944, 937, 929, 920, 911, 902, 892, 882, 870,
        859, 846, 833, 818, 803, 786, 768, 749, 728, 706, 681, 654, 624, 591, 555, 514, 468, 416,
        356, 288, 208, 113,
    ]
    assert timesteps.tolist() == expected, timesteps.tolist()
    sigma_max = torch.tensor(0.999, dtype=torch.float32).item()
    unshifted = np.linspace(sigma_max, 0.0, n + 1)[:-1]
    unipc = make_unipc(shift)
    unipc.set_timesteps(sigmas=unshifted)
    assert np.array_equal(unipc.sigmas.numpy(), sigmas), (unipc.sigmas, sigmas)
    assert unipc.timesteps.tolist() == expected
    x, outs = inputs(100, n)
    save(
        f"unipc_wan_n{n}_s{int(shift)}.safetensors",
        {
            "sigmas": f32(sigmas),
            "timesteps": f64(timesteps),
            "x": flat(x),
            "model_outputs": flat(outs),
            "samples": f32(rollout(unipc, x, outs)),
        },
    )

    # Training levels: sigma = linspace(1, 0, 1001), shifted, level k uses sigma[k], k < 1000.
    s = 5.0
    base = np.linspace(1, 0, NUM_TRAIN_TIMESTEPS + 1)[:NUM_TRAIN_TIMESTEPS]
    shifted = s * base / (1 + (s - 1) * base)
    save(
        "training_levels_s5.safetensors",
        {
            "sigmas": f64(shifted),
            "timesteps": f64(np.trunc(NUM_TRAIN_TIMESTEPS * shifted)),
        },
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The comparison table of tools/gpu/run_all.sh: `prfl bench --preset P --json` files against
`tools/bench/torch_gpu.py --preset P --json` files (matched by preset), with the ratios
prfl / PyTorch for the median step time and the peak memory (issue 7's goal: <= 0.6 for both).

  compare.py [--peak peak.json] [--results merged.json] FILE.json...

Missing files or steps show as '-'. Prints a plain-text table (also valid Markdown).
"""
import argparse
import json
import os

STEPS = ("score", "pavrm", "prfl")
GOAL = 0.6


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak", default=None)
    ap.add_argument("--results", default=None)
    ap.add_argument("files", nargs="*")
    a = ap.parse_args()
    peak = load(a.peak) if a.peak else None
    runs = {}
    for path in a.files:
        if not os.path.exists(path):
            continue
        j = load(path)
        if not j:
            continue
        runs.setdefault(j.get("preset", "?"), {})[j.get("engine", "?")] = j
    if peak:
        print(f"measured: bf16 GEMM {peak['bf16_gemm_tflops']:.0f} TFLOP/s ({peak['gemm_n']}^3), "
              f"device-to-device copy {peak['copy_tb_s']:.2f} TB/s (read + write) on {peak['device']}")
    print()
    head = ["preset", "step", "prfl s", "torch s", "time x", "prfl GiB", "torch GiB", "mem x",
            "prfl MFU", "torch MFU"]
    rows = []
    for preset in sorted(runs):
        eng = runs[preset]
        p, t = eng.get("prfl"), eng.get("torch")
        for step in STEPS:
            ps = (p or {}).get("steps", {}).get(step)
            ts = (t or {}).get("steps", {}).get(step)
            if not ps and not ts:
                continue
            pt, tt = (ps or {}).get("median_s"), (ts or {}).get("median_s")
            pm, tm = (ps or {}).get("peak_bytes"), (ts or {}).get("peak_bytes")
            pm = pm / 2 ** 30 if pm else None
            tm = tm / 2 ** 30 if tm else None
            rt = pt / tt if pt and tt else None
            rm = pm / tm if pm and tm else None
            mark = lambda r: "" if r is None else ("" if r <= GOAL else " *")
            pf = (ps or {}).get("mfu")
            tf = (ts or {}).get("mfu")
            rows.append([preset, step, fmt(pt, ".3f"), fmt(tt, ".3f"), fmt(rt, ".2f") + mark(rt),
                         fmt(pm, ".2f"), fmt(tm, ".2f"), fmt(rm, ".2f") + mark(rm),
                         fmt(None if pf is None else 100 * pf, ".1f") + ("%" if pf is not None else ""),
                         fmt(None if tf is None else 100 * tf, ".1f") + ("%" if tf is not None else "")])
    if rows:
        widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        line = lambda r: "| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths)) + " |"
        print(line(head))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in rows:
            print(line(r))
        print(f"\n(time x, mem x: prfl / PyTorch, goal <= {GOAL}; * marks a miss. Peak memory: prfl's "
              "CUDA pool high-water mark, torch.cuda.max_memory_allocated; both include the resident "
              "model and optimiser state. MFU: model FLOPs (src/bin/prfl/bench.rs) / median time / "
              "measured bf16 peak.)")
    else:
        print("no benchmark results")
    if a.results:
        with open(a.results, "w") as f:
            json.dump(dict(peak=peak, runs=runs), f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()

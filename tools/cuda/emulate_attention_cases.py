# The cases of tests/cuda_backend.rs through the lane-level emulation (emulate_attention.py);
# prints the relative L2 error of every output against a float64 reference. About 15 s on a CPU.
#   python3 tools/cuda/emulate_attention_cases.py   (needs numpy)
# Single-key cases have dq = dk = 0 exactly: their relative error is meaningless (huge).
import numpy as np, emulate_attention as E
def run(B, lq, lk, H, D, seed):
    rng = np.random.default_rng(seed)
    u = lambda n, s: (rng.uniform(-1, 1, n) * s).astype(np.float32)
    q, k, v, dout = u(B*lq*H*D, 2), u(B*lk*H*D, 2), u(B*lk*H*D, 1), u(B*lq*H*D, 1)
    nan = lambda n: np.full(n, np.nan, np.float32)
    scale = np.float32(1/np.sqrt(D)); sl2 = np.float32(scale*E.LOG2E)
    out, lse = nan(q.size), nan(B*H*lq)
    E.flash_fwd(D, q, k, v, out, lse, B, lq, lk, H, sl2)
    ref = E.reference(q, k, v, dout, B, lq, lk, H, D)
    # like the test: the backward reads the reference forward
    o_ref = ref[0].astype(np.float32); l_ref = ref[1].astype(np.float32)
    delta = nan(B*H*lq); E.bwd_delta(o_ref, dout, delta, B, lq, H, D)
    dq, dk, dv = nan(q.size), nan(k.size), nan(v.size)
    E.flash_bwd_dkdv(D, 32 if D == 128 else 64, q, k, v, dout, l_ref, delta, dk, dv, B, lq, lk, H, scale, sl2)
    E.flash_bwd_dq(D, q, k, v, dout, l_ref, delta, dq, B, lq, lk, H, scale, sl2)
    def rel_l2(a, b):
        if np.isnan(a).any(): return float('nan')
        den = np.sum(b.astype(np.float64)**2); num = np.sum((a.astype(np.float64)-b)**2)
        return np.sqrt(num) if den == 0 else np.sqrt(num/den)
    errs = [rel_l2(x, r) for x, r in zip((out, lse, dq, dk, dv), ref)]
    print(f"({B},{lq},{lk},{H},{D}) " + " ".join(f"{n} {e:.2e}" for n, e in zip(["out","lse","dq","dk","dv"], errs)), flush=True)
for c in [(1,1,1,1,16),(2,77,77,2,16),(1,100,37,3,32),(2,130,200,2,64),(1,257,129,2,128),(1,70,512,2,128),(1,1,300,2,64),(1,300,1,1,32)]:
    run(*c, 1)

"""KVPool.copy (one Triton kernel) against the gather + index_put it replaced, OPT-13B pools.
(The committed copybench.log ran a weaker check - both ways applied in turn, K only; this
version restores the pool between them and compares K and V. Correctness of the kernel in the
engine is the GPU tests': gpu_tests_copy_kernel.log, ../gpu_tests_copies.log.)"""
import time, numpy as np, torch
from engine.backends.kv_pool import KVPool, run_pairs

def old_copy(pool, runs):
    src = np.concatenate([np.arange(s, s + n) for s, _, n in runs])
    dst = np.concatenate([np.arange(d, d + n) for _, d, n in runs])
    src, dst = (torch.as_tensor(x, dtype=torch.int64, device="cuda") for x in (src, dst))
    pool.k[:, dst] = pool.k[:, src]
    pool.v[:, dst] = pool.v[:, src]

def bench(fn, reps=20):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps): fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3

for name, pool, mk in (
    ("paged 16", KVPool(40, 3000, 16, 40, 128, False, torch.bfloat16, torch.device("cuda")),
     lambda n: [(1 + i, 1500 + i, 1) for i in range(n)]),
    ("static slots, runs of 100", KVPool(40, 30000, 1, 40, 128, True, torch.bfloat16, torch.device("cuda")),
     lambda n: [(1 + 100 * i, 15000 + 100 * i, 100) for i in range(n // 100 or 1)]),
):
    pool.k.normal_(); pool.v.normal_()
    unit = pool.k[0, 0].numel() * 2 * 2 * 40  # bytes of K+V of one unit, every layer
    for n in (8, 64, 256, 1000):
        runs = mk(n)
        units = int(run_pairs(runs).shape[0])
        a, b = bench(lambda: old_copy(pool, runs)), bench(lambda: pool.copy(runs))
        pool.k.normal_(); pool.v.normal_()  # fresh contents: each way must copy them
        k0, v0 = pool.k.clone(), pool.v.clone()
        old_copy(pool, runs); k1, v1 = pool.k.clone(), pool.v.clone()
        pool.k.copy_(k0); pool.v.copy_(v0); pool.copy(runs)
        assert torch.equal(k1, pool.k) and torch.equal(v1, pool.v) and not torch.equal(k0, k1)
        del k0, v0, k1, v1
        gbs = 2 * units * unit / 1e9
        print(f"{name}: {units} units ({gbs:.2f} GB read+write): gather/index_put {a:.3f} ms, "
              f"copy_blocks {b:.3f} ms ({a / b:.1f}x), copy_blocks at {gbs / b:.2f} TB/s", flush=True)
    del pool; torch.cuda.empty_cache()

"""KVPool.copy (one Triton kernel) against the gather + index_put it replaced, OPT-13B pools."""
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
        k0 = pool.k.clone(); old_copy(pool, runs); k1 = pool.k.clone(); pool.copy(runs)
        assert torch.equal(k1, pool.k)
        del k0, k1
        gbs = 2 * units * unit / 1e9
        print(f"{name}: {units} units ({gbs:.2f} GB read+write): gather/index_put {a:.3f} ms, "
              f"copy_blocks {b:.3f} ms ({a / b:.1f}x), copy_blocks at {gbs / b:.2f} TB/s", flush=True)
    del pool; torch.cuda.empty_cache()

"""Swap out + in of 64 OPT-13B blocks (16 tokens, 40 layers): the pool's swap path against the
previous one (index gather -> pageable .cpu() -> CPU scatter), same pool, same runs."""
import time
import torch
from engine.backends.kv_pool import KVPool, run_pairs


def run_index(runs, device):  # (kv_pool.run_index then; run_pairs since the copy kernel)
    src, dst = torch.from_numpy(run_pairs(runs)).to(device).T
    return src, dst

pool = KVPool(40, 2000, 16, 40, 128, False, torch.bfloat16, torch.device("cuda"))
pool.k.normal_(); pool.v.normal_()
runs_out = [(100 + 40 * i, 16 * i, 16) for i in range(4)]  # 4 runs of 16 blocks
runs_in = [(16 * i, 1000 + 40 * i, 16) for i in range(4)]

def old_out(p, runs):
    src, dst = run_index(runs, p.device)
    dst = dst.cpu()
    hk = p._old_k; hv = p._old_v
    hk[:, dst] = p.k[:, src].cpu()
    hv[:, dst] = p.v[:, src].cpu()

def old_in(p, runs):
    src, dst = run_index(runs, torch.device("cpu"))
    dst = dst.to(p.device)
    p.k[:, dst] = p._old_k[:, src].to(p.device, non_blocking=True)
    p.v[:, dst] = p._old_v[:, src].to(p.device, non_blocking=True)

pool._old_k = torch.empty((40, 64, 16, 40, 128), dtype=torch.bfloat16, pin_memory=True)
pool._old_v = torch.empty_like(pool._old_k).pin_memory()
mb = 2 * 64 * 16 * 40 * 40 * 128 * 2 / 1e6
for name, out, inn in (("new", pool.swap_out, pool.swap_in),
                       ("old", lambda r: old_out(pool, r), lambda r: old_in(pool, r))) * 2:
    ts = []
    for _ in range(5):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        out(runs_out); torch.cuda.synchronize(); t1 = time.perf_counter()
        inn(runs_in); torch.cuda.synchronize(); t2 = time.perf_counter()
        ts.append((t1 - t0, t2 - t1))
    o = sorted(t[0] for t in ts)[2]; i = sorted(t[1] for t in ts)[2]
    print(f"{name}: swap out {1e3*o:.1f} ms ({mb/1e3/o:.1f} GB/s), in {1e3*i:.1f} ms ({mb/1e3/i:.1f} GB/s), {mb:.0f} MB each way, {1e3*o/64:.2f} / {1e3*i/64:.2f} ms per block")
ok = torch.equal(pool.k[:, 1000:1016], pool.k[:, 100:116]) and torch.equal(pool.v[:, 1040:1056], pool.v[:, 140:156])
print("round trip equal:", ok)

"""Contiguous decode over a cudaMalloc pool vs a pool of separately created 2 MiB VMM pages."""
import random, torch, triton.testing
from kernels import vmm
from kernels.contiguous import contiguous_decode
HQ, HKV, D = 32, 8, 128
dev = 0
torch.empty(1, device="cuda")
page = vmm.granularity(dev)
desc = vmm.access(dev)
def vmm_tensor(nbytes, shuffle):
    n = nbytes // page
    base = vmm.reserve(n * page, page)
    handles = [vmm.create(page, dev) for _ in range(n)]
    order = list(range(n))
    if shuffle: random.Random(0).shuffle(order)
    for i, h in enumerate(order):
        vmm.map_page(base + i * page, page, handles[h])
    vmm.set_access(base, n * page, desc)
    return vmm.as_tensor(base, n * page, dev)
print(torch.cuda.get_device_name(), flush=True)
for b, L in ((128, 1024), (256, 1024), (256, 1536), (256, 2048), (256, 3072)):
    tokens = b * L + 1
    nbytes = -(-tokens * HKV * D * 2 // page) * page
    q = torch.randn(b, HQ, D, device="cuda", dtype=torch.bfloat16)
    starts = torch.arange(b, dtype=torch.int32, device="cuda") * L + 1
    lens = torch.full((b,), L, dtype=torch.int32, device="cuda")
    res = {}
    for kind in ("cudaMalloc", "vmm", "vmm_shuffled"):
        if kind == "cudaMalloc":
            k = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda"); v = torch.randn_like(k)
        else:
            k = vmm_tensor(nbytes, kind.endswith("shuffled")).view(torch.bfloat16); k.normal_()
            v = vmm_tensor(nbytes, kind.endswith("shuffled")).view(torch.bfloat16); v.normal_()
        ks, vs = k[: tokens * HKV * D].view(tokens, HKV, D), v[: tokens * HKV * D].view(tokens, HKV, D)
        res[kind] = triton.testing.do_bench(lambda: contiguous_decode(q, ks, vs, starts, lens, D**-0.5, max_seq_len=L), return_mode="median")
    gb = 2 * b * L * HKV * D * 2 / 1e9
    print(f"B={b} L={L} K+V {gb:.2f} GB: " + " ".join(f"{kk} {vv*1e3:.1f} us ({gb/vv:.2f} TB/s)" for kk, vv in res.items()), flush=True)

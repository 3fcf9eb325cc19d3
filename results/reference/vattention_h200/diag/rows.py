"""Batch-256 vattention gap: row alignment vs VA sparsity vs maps during kernels."""
import torch, triton.testing
from kernels import vmm
from kernels.contiguous import contiguous_decode
HQ, HKV, D = 32, 8, 128
TOK = HKV * D  # elements per token
dev = 0
torch.empty(1, device="cuda")
page = vmm.granularity(dev)
desc = vmm.access(dev)
PT = page // (TOK * 2)  # tokens per page
print(torch.cuda.get_device_name(), "tokens/page", PT, flush=True)
g = torch.Generator().manual_seed(0)
B, ROW = 256, 4096
lens_cpu = torch.randint(256, 3072, (B,), generator=g, dtype=torch.int32)
lens = lens_cpu.cuda()
q = torch.randn(B, HQ, D, device="cuda", dtype=torch.bfloat16)
total = int(lens_cpu.sum())
gb = 2 * total * TOK * 2 / 1e9

def bench(k, v, starts, tag, between=None):
    f = lambda: contiguous_decode(q, k, v, starts, lens, D**-0.5, max_seq_len=ROW)
    t = triton.testing.do_bench(f, return_mode="median", warmup=50, rep=400)
    line = f"{tag:34s} {t*1e3:7.1f} us {gb/t*1e-3*1e3:5.2f} TB/s"
    if between is not None:  # 20 launches, a map+unmap of a spare page after every 2
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        for mode in (False, True):
            ts = []
            for rep in range(20):
                torch.cuda.synchronize(); ev[0].record()
                for i in range(20):
                    f()
                    if mode and i % 2 == 0: between()
                ev[1].record(); torch.cuda.synchronize(); ts.append(ev[0].elapsed_time(ev[1]) / 20)
            ts.sort(); line += f" | loop {'maps' if mode else 'plain'} {ts[10]*1e3:.1f} us"
    print(line, flush=True)

def dense(tokens):
    k = torch.randn(tokens * TOK, dtype=torch.bfloat16, device="cuda").view(tokens, HKV, D)
    return k, torch.randn_like(k)

# packed rows (static oracle first fit)
k, v = dense(total + 1)
starts = (torch.cumsum(lens_cpu, 0) - lens_cpu + 1).int().cuda()
bench(k, v, starts, "cudaMalloc packed"); del k, v
for stride in (ROW, ROW + 16, ROW + 48, ROW + 512):
    k, v = dense((B + 1) * stride)
    starts = (torch.arange(1, B + 1, dtype=torch.int32) * stride).cuda()
    bench(k, v, starts, f"cudaMalloc rows stride {stride}"); del k, v
torch.cuda.empty_cache()

def sparse_vmm(stride):
    nb = (B + 2) * stride * TOK * 2
    base = vmm.reserve(nb, page)
    spare = vmm.create(page, dev)
    vmm.map_page(base, page, vmm.create(page, dev)); vmm.set_access(base, page, desc)  # row 0: the tensor's base
    for i in range(B):
        s = (i + 1) * stride
        first, last = s // PT, (s + int(lens_cpu[i]) - 1) // PT
        for p in range(first, last + 1):
            vmm.map_page(base + p * page, page, vmm.create(page, dev))
            vmm.set_access(base + p * page, page, desc)
    t = vmm.as_tensor(base, nb, dev).view(torch.bfloat16)
    return t.view(-1, HKV, D), base, spare

kv = [sparse_vmm(ROW) for _ in range(2)]
starts = (torch.arange(1, B + 1, dtype=torch.int32) * ROW).cuda()
spare_addr = kv[0][1] + (B + 1) * ROW * TOK * 2
def between():
    vmm.map_page(spare_addr, page, kv[0][2]); vmm.set_access(spare_addr, page, desc); vmm.unmap(spare_addr, page)
bench(kv[0][0], kv[1][0], starts, "vmm sparse rows stride 4096", between)
k, v = dense(total + 1)
starts = (torch.cumsum(lens_cpu, 0) - lens_cpu + 1).int().cuda()
bench(k, v, starts, "cudaMalloc packed (again)", between)

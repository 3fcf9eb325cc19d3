"""B=256 over 32 layers: packed cudaMalloc pool vs vattention-like sparse VMM rows (stride S)."""
import sys, torch
from kernels import vmm
from kernels.contiguous import contiguous_decode
HQ, HKV, D, NL = 32, 8, 128, 32
TOK = HKV * D
dev = 0
torch.empty(1, device="cuda")
page = vmm.granularity(dev); desc = vmm.access(dev); PT = page // (TOK * 2)
g = torch.Generator().manual_seed(0)
B = 256
lens_cpu = torch.randint(256, 3072, (B,), generator=g, dtype=torch.int32)
lens = lens_cpu.cuda(); total = int(lens_cpu.sum())
q = torch.randn(B, HQ, D, device="cuda", dtype=torch.bfloat16)
gb = NL * 2 * total * TOK * 2 / 1e9
def time_layers(bufs, starts, tag, n=30):
    f = lambda: [contiguous_decode(q, k, v, starts, lens, D**-0.5, max_seq_len=4096, num_splits=5) for k, v in bufs]
    for _ in range(3): f()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ts = []
    for _ in range(n):
        torch.cuda.synchronize(); ev[0].record(); f(); ev[1].record(); torch.cuda.synchronize()
        ts.append(ev[0].elapsed_time(ev[1]))
    ts.sort(); t = ts[n // 2]
    print(f"{tag:40s} {t:7.3f} ms for {NL} layers  {gb/t:5.2f} TB/s", flush=True)
    return t
def packed():
    pool = torch.empty((NL, 2, total + 1, HKV, D), dtype=torch.bfloat16, device="cuda"); pool.normal_()
    starts = (torch.cumsum(lens_cpu, 0) - lens_cpu + 1).int().cuda()
    return [(pool[l, 0], pool[l, 1]) for l in range(NL)], starts, pool
def dense_vmm():
    """Packed layout as the cudaMalloc pool, each 2 MiB page a separately created handle."""
    need = (total + 1) * TOK * 2
    n = -(-need // page)
    bufs, keep = [], []
    for l in range(2 * NL):
        base = vmm.reserve(n * page, page)
        for p in range(n):
            h = vmm.create(page, dev); keep.append(h); vmm.map_page(base + p * page, page, h)
        vmm.set_access(base, n * page, desc)
        bufs.append(vmm.as_tensor(base, n * page, dev).view(torch.bfloat16).view(-1, HKV, D))
    starts = (torch.cumsum(lens_cpu, 0) - lens_cpu + 1).int().cuda()
    return [(bufs[l], bufs[NL + l]) for l in range(NL)], starts
def sparse(stride):
    nb = (B + 1) * stride * TOK * 2
    bufs, keep = [], []
    for l in range(2 * NL):
        base = vmm.reserve(nb, page)
        h = vmm.create(page, dev); vmm.map_page(base, page, h); keep.append(h)
        for i in range(B):
            s = (i + 1) * stride
            for p in range(s // PT, (s + int(lens_cpu[i]) - 1) // PT + 1):
                h = vmm.create(page, dev); keep.append(h)
                vmm.map_page(base + p * page, page, h)
        # access per mapped page
        for i in range(-1, B):
            s = (i + 1) * stride
            last = s if i < 0 else s + int(lens_cpu[i]) - 1
            for p in range(s // PT, last // PT + 1):
                vmm.set_access(base + p * page, page, desc)
        bufs.append(vmm.as_tensor(base, nb, dev).view(torch.bfloat16).view(-1, HKV, D))
    starts = (torch.arange(1, B + 1, dtype=torch.int32) * stride).cuda()
    return [(bufs[l], bufs[NL + l]) for l in range(NL)], starts
print(torch.cuda.get_device_name(), flush=True)
bufs, starts, pool = packed()
a = time_layers(bufs, starts, "cudaMalloc packed 32 layers")
del bufs, pool; torch.cuda.empty_cache()
for stride in [int(x) for x in sys.argv[1:]] or [16384]:
    bufs, starts = dense_vmm() if stride == 0 else sparse(stride)
    b = time_layers(bufs, starts, f"vmm sparse rows stride {stride}")
    print(f"  speed vs packed {a/b:.3f}x", flush=True)
    bufs2, starts2, pool = packed()
    a2 = time_layers(bufs2, starts2, "cudaMalloc packed (after)")
    print(f"  speed vs packed(after) {a2/b:.3f}x", flush=True)
    del bufs2, pool; torch.cuda.empty_cache()

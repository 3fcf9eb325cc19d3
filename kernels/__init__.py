"""Attention over paged and contiguous KV (Triton and torch SDPA), KV writes, block copies,
and pure-torch references."""

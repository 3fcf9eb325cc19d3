"""Token sequences as runs of sources: the keys of the radix tree.

A run (source, offset, length) stands for tokens offset..offset+length-1 of one source; two
tokens are equal exactly when their (source, position) are (workloads/tokens.py). A key is a
tuple of runs, normalized so that two adjacent runs never continue one another: then equal
token sequences have equal keys, and keys compare run by run, never token by token.
Explicit token ids are runs of length 1 of a source named by the id (`token_key`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

TokenRun = tuple[Hashable, int, int]
"""(source, offset, length): tokens offset..offset+length-1 of one source."""
Key = tuple[TokenRun, ...]


def normalize(runs: Iterable[TokenRun]) -> Key:
    """Merge adjacent runs that continue one another; drop empty runs."""
    out: list[TokenRun] = []
    for src, off, n in runs:
        if n <= 0:
            continue
        if out and out[-1][0] == src and out[-1][1] + out[-1][2] == off:
            out[-1] = (src, out[-1][1], out[-1][2] + n)
        else:
            out.append((src, off, n))
    return tuple(out)


def token_key(token_ids: Sequence[Hashable]) -> Key:
    """The key of explicit token ids: token t is position 0 of source t."""
    return normalize((t, 0, 1) for t in token_ids)


def key_len(key: Key) -> int:
    return sum(r[2] for r in key)


def split_key(key: Key, n: int) -> tuple[Key, Key]:
    """(the first n tokens of key, the rest)."""
    for i, run in enumerate(key):
        if n <= 0:
            return key[:i], key[i:]
        src, off, length = run
        if n < length:
            return (*key[:i], (src, off, n)), ((src, off + n, length - n), *key[i + 1 :])
        n -= length
    return key, ()


def common_len(a: Key, b: Key) -> int:
    """Number of leading tokens a and b share."""
    n = i = j = da = db = 0  # da, db: tokens of a[i], b[j] already consumed
    while i < len(a) and j < len(b):
        sa, oa, la = a[i]
        sb, ob, lb = b[j]
        if sa != sb or oa + da != ob + db:
            break
        m = min(la - da, lb - db)
        n += m
        da += m
        db += m
        if da == la:
            i, da = i + 1, 0
        if db == lb:
            j, db = j + 1, 0
    return n

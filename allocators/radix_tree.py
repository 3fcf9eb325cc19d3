"""A radix tree over token runs with block-granular values: SGLang's RadixAttention cache.

    root ─┬─ [S0..S511 | U7_0..U7_15]  blocks (3,9,..)  lock 1 ── [G4_0..G4_31] (12,13) lock 1
          └─ [S0..S511 | U8_0..U8_47]  blocks (..)      lock 0   <- evictable leaf

Keys are tuples of token runs (allocators/token_runs.py), compared run by run, never token
by token: a Mooncake prompt of 12k tokens is a few dozen runs.

Nodes. Each node holds an edge key of `length` tokens, a multiple of `block_size`, and one
block id per `block_size` tokens. A child is found by its first block of tokens; the match of
a key along an edge is floored to whole blocks, and a match that ends inside an edge splits it
(as SGLang's `_split_node`). `lock_ref` counts the users below a node: locking a node locks
its whole path to the root, and a locked node is never evicted.

Eviction (SGLang `evict`): least recently used unlocked leaves first, ties to the older node,
and a parent whose last child went becomes a candidate itself. Access times are a counter
that ticks once per `match`/`insert` (deterministic, unlike SGLang's clock). The candidates
live in a heap with lazy deletion: every evictable leaf has at least one entry whose key is at
most its true (last_access, node_id); a popped entry that is stale is pushed again.

Invariants (`check_invariants`): parents and child keys agree with the edges; every value has
length / block_size blocks and no block is held twice; lock_ref = locks taken on the node +
the lock_refs of its children; evictable_size / protected_size are the token counts of the
unlocked / locked nodes; every evictable leaf has a heap entry.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from allocators.token_runs import Key, common_len, key_len, normalize, split_key


class Node:
    __slots__ = (
        "block_ids",
        "children",
        "deleted",
        "key",
        "last_access",
        "length",
        "lock_ref",
        "node_id",
        "parent",
    )

    def __init__(self, key: Key, block_ids: list[int], parent: Node | None, node_id: int) -> None:
        self.key = key
        self.length = key_len(key)
        self.block_ids = block_ids
        self.parent = parent
        self.children: dict[Hashable, Node] = {}
        self.lock_ref = 0
        self.last_access = 0
        self.node_id = node_id
        self.deleted = False

    def __repr__(self) -> str:
        return f"Node({self.node_id}, len={self.length}, lock={self.lock_ref})"


class RadixTree:
    """The tree; freed blocks go to `release` (the block pool's free queue)."""

    def __init__(self, block_size: int, release: Callable[[list[int]], Any]) -> None:
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self._release = release
        self.root = Node((), [], None, 0)
        self.root.lock_ref = 1  # never evicted, never counted
        self._num_nodes = 1
        self._next_id = 1
        self._tick = 0
        self._heap: list[tuple[int, int, Node]] = []
        self.evictable_size = 0  # tokens in unlocked nodes
        self.protected_size = 0  # tokens in locked nodes

    # --- keys -------------------------------------------------------------------------------
    def child_key(self, key: Key) -> Hashable:
        """Children are told apart by their first block of tokens."""
        if self.block_size == 1:
            return key[0][:2]
        return split_key(key, self.block_size)[0]

    def aligned(self, key: Key) -> Key:
        n = key_len(key)
        return split_key(key, n - n % self.block_size)[0] if n % self.block_size else key

    def _match_len(self, edge: Key, key: Key) -> int:
        n = common_len(edge, key)
        return n - n % self.block_size

    # --- the SGLang operations ----------------------------------------------------------------
    def match(self, key: Key, node: Node | None = None) -> tuple[Node, int, list[int]]:
        """Longest cached prefix of key (floored to whole blocks): (its last node, its length in
        tokens, its block ids). A match that ends inside an edge splits that edge.

        With `node`, key continues the tokens of node's path (a match resumed there): the
        path counts as matched again (touched) and the result counts from node on."""
        self._tick += 1
        key = self.aligned(key)
        if node is None:
            node = self.root
        else:
            up = node
            while up is not self.root:
                up.last_access = self._tick
                up = up.parent  # type: ignore[assignment]
        block_ids: list[int] = []
        node, matched, _ = self._descend(node, key, block_ids)
        return node, matched, block_ids

    def _descend(
        self, node: Node, key: Key, block_ids: list[int] | None = None
    ) -> tuple[Node, int, Key]:
        """Walk down from node along key while cached, touching each child and splitting an
        edge the key leaves in the middle: (the last node reached, tokens matched, the rest of
        key). The matched children's block ids are appended to `block_ids` when given."""
        matched = 0
        while key:
            child = node.children.get(self.child_key(key))
            if child is None:
                break
            child.last_access = self._tick
            n = self._match_len(child.key, key)
            if n < child.length:
                child = self._split(child, n)
            if block_ids is not None:
                block_ids += child.block_ids
            matched += n
            node = child
            key = split_key(key, n)[1]
        return node, matched, key

    def insert(
        self, key: Key, block_ids: Sequence[int], node: Node | None = None
    ) -> tuple[int, Node]:
        """Insert key (below `node`, the root by default) with one block id per block_size
        tokens; a partial last block is left out. Returns (tokens that were already cached,
        the node the key ends at). The caller frees its own blocks of the cached part."""
        self._tick += 1
        key = self.aligned(key)
        node, cached, key = self._descend(node or self.root, key)
        if key:
            first = cached // self.block_size
            leaf = self._node(key, list(block_ids[first : first + key_len(key) // self.block_size]),
                              node)  # fmt: skip
            leaf.last_access = self._tick
            node.children[self.child_key(key)] = leaf
            self.evictable_size += leaf.length
            self._push(leaf)
            node = leaf
        return cached, node

    def lock(self, node: Node) -> None:
        """inc_lock_ref: the path from node to the root is in use."""
        while node is not self.root:
            if node.lock_ref == 0:
                self.evictable_size -= node.length
                self.protected_size += node.length
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: Node) -> None:
        """dec_lock_ref."""
        leaf = node
        while node is not self.root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.evictable_size += node.length
                self.protected_size -= node.length
            node = node.parent  # type: ignore[assignment]
        if leaf is not self.root and not leaf.lock_ref and not leaf.children:
            self._push(leaf)  # it became an evictable leaf

    def evict(self, num_tokens: int) -> int:
        """Free least recently used unlocked leaves until num_tokens went; returns tokens freed."""
        freed = 0
        heap = self._heap
        while freed < num_tokens and heap:
            access, _, node = heapq.heappop(heap)
            if node.deleted or node.lock_ref or node.children:
                continue  # no longer an evictable leaf
            if access != node.last_access:
                self._push(node)  # touched since it was pushed
                continue
            self._release(node.block_ids)
            freed += node.length
            self._delete_leaf(node)
        return freed

    @property
    def next_node_id(self) -> int:
        """The id the next node made (inserted or split off) gets; ids only grow."""
        return self._next_id

    def drop_new_leaves(self, node: Node, mark: int) -> None:
        """Delete node and its ancestors while each is an unlocked leaf numbered from `mark`
        on: what an admission inserted, undone (a split-off node keeps a child: it stays)."""
        while (
            node is not self.root
            and not node.deleted
            and node.node_id >= mark
            and not node.lock_ref
            and not node.children
        ):
            parent = node.parent
            assert parent is not None
            self._release(node.block_ids)
            self._delete_leaf(node)
            node = parent

    # --- internals ---------------------------------------------------------------------------
    def _node(self, key: Key, block_ids: list[int], parent: Node) -> Node:
        self._num_nodes += 1
        self._next_id += 1
        return Node(key, block_ids, parent, self._next_id - 1)

    def _push(self, node: Node) -> None:
        heapq.heappush(self._heap, (node.last_access, node.node_id, node))
        if len(self._heap) > 2 * self._num_nodes + 64:
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = [(n.last_access, n.node_id, n) for n in self._evictable_leaves()]
        heapq.heapify(self._heap)

    def _evictable_leaves(self) -> list[Node]:
        return [n for n in self.nodes() if not n.children and not n.lock_ref]

    def _split(self, child: Node, n: int) -> Node:
        """Cut child's edge after n tokens: parent -> new (n tokens) -> child (the rest)."""
        head, tail = split_key(child.key, n)
        parent = child.parent
        assert parent is not None
        new = self._node(head, child.block_ids[: n // self.block_size], parent)
        new.lock_ref, new.last_access = child.lock_ref, child.last_access
        child.key, child.length = tail, child.length - n
        child.block_ids = child.block_ids[n // self.block_size :]
        child.parent = new
        new.children[self.child_key(tail)] = child
        parent.children[self.child_key(head)] = new
        return new

    def _delete_leaf(self, node: Node) -> None:
        parent = node.parent
        assert parent is not None
        del parent.children[self.child_key(node.key)]
        node.deleted = True
        self._num_nodes -= 1
        self.evictable_size -= node.length
        if parent is not self.root and not parent.children and not parent.lock_ref:
            self._push(parent)

    def nodes(self) -> list[Node]:
        """Every node but the root, parents before children."""
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    @property
    def total_size(self) -> int:
        return self.evictable_size + self.protected_size

    def check_invariants(self, locks: dict[int, int] | None = None) -> list[int]:
        """Recompute the structure and the sizes; with `locks` (node_id -> locks taken on that
        node), lock_refs too. Returns every block id the tree holds."""
        nodes = self.nodes()
        block_ids: list[int] = []
        sizes = [0, 0]
        for node in nodes:
            parent = node.parent
            assert parent is not None and not node.deleted
            assert parent.children[self.child_key(node.key)] is node, "child key != first block"
            assert node.key == normalize(node.key) and node.length == key_len(node.key) > 0
            assert node.length % self.block_size == 0, "an edge ends inside a block"
            assert len(node.block_ids) == node.length // self.block_size
            block_ids += node.block_ids
            sizes[node.lock_ref > 0] += node.length
            below = sum(c.lock_ref for c in node.children.values())
            taken = node.lock_ref - below
            assert taken >= 0, f"{node} holds fewer locks than its children"
            if locks is not None:
                assert taken == locks.get(node.node_id, 0), f"{node} lock_ref"
        assert len(nodes) + 1 == self._num_nodes, "node count"
        assert sizes == [self.evictable_size, self.protected_size], "evictable/protected size"
        assert len(block_ids) == len(set(block_ids)), "a block is in the tree twice"
        queued = {id(entry[2]) for entry in self._heap}
        assert all(id(n) in queued for n in self._evictable_leaves()), "leaf not in the heap"
        return block_ids

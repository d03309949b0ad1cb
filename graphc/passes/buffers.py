"""The buffer plan: liveness analysis, buffer reuse and in-place parameter updates.

An analysis, not a rewrite: :func:`plan_buffers` reads a graph and returns a :class:`BufferPlan`
that a backend follows when it allocates memory. The schedule is the graph's node order.

Storage kinds (``plan.storage(node)``):

* ``("input", node)`` / ``("param", node)`` / ``("constant", node)``: sources keep their own arrays;
* ``("slot", k)``: intermediate results live in numbered slots of ``plan.slot_bytes[k]`` bytes;
  several values whose lifetimes do not overlap share one slot (a backend allocates each slot
  once, e.g. ``np.empty(plan.slot_bytes[k], np.uint8)``, and views it with the value's dtype and shape);
* a ``reshape`` is a view: it has the storage of the node it reshapes (``plan.base(node)``);
* ``("param", p)`` for an update value: a parameter update ``p <- v`` computed directly into
  p's array (``plan.inplace_updates``), when that is safe: v is an elementwise kernel (or reads
  p not at all), no node after v reads p, and p is not a graph output.

Lifetimes: a value is live from the step that computes it to the last step that reads it
(through views); graph outputs and update values that are not in place live to the end. An
elementwise kernel may take over the slot of an operand of its own shape whose life ends at that
kernel (``plan.in_place[id(node)]`` names the operand): it reads x[i] before writing out[i].

``naive_bytes`` is the memory when every intermediate gets its own buffer; ``arena_bytes`` is the
sum of the slot sizes under this plan; ``peak_live_bytes`` the largest total of values alive at
one step (a lower bound for any plan with this schedule).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Graph, Node
from ..ops import is_elementwise
from ..ops.registry import is_source, is_view

#: Slot sizes are rounded up to this many bytes (cache-line / SIMD alignment). The one definition: backends
#: that align their own buffers import it.
ALIGN = 64


def _nbytes(node: Node) -> int:
    return node.size * node.dtype.np.itemsize


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class BufferPlan:
    """Where every value of a graph lives (see the module docstring)."""

    graph: Graph
    #: slot index -> size in bytes (the largest value it ever holds, rounded up to ALIGN).
    slot_bytes: list[int] = field(default_factory=list)
    #: id(node) -> slot index, for every intermediate that has storage of its own.
    slot_of: dict[int, int] = field(default_factory=dict)
    #: id(update value) -> the parameter whose array it is computed into.
    inplace_updates: dict[int, Node] = field(default_factory=dict)
    #: id(elementwise node) -> the operand whose slot it overwrites.
    in_place: dict[int, Node] = field(default_factory=dict)
    #: id(node) -> (first step, last step) it is alive; steps index graph.nodes.
    lifetime: dict[int, tuple[int, int]] = field(default_factory=dict)
    naive_bytes: int = 0
    peak_live_bytes: int = 0

    @property
    def arena_bytes(self) -> int:
        """Total bytes of all slots: the intermediate memory a backend allocates under this plan."""
        return sum(self.slot_bytes)

    def base(self, node: Node) -> Node:
        """The node whose storage ``node`` uses (itself, or the node a chain of reshapes views)."""
        while is_view(node):
            node = node.inputs[0]
        return node

    def storage(self, node: Node) -> tuple[str, object]:
        """("input"|"param"|"constant", node), ("slot", k), or ("param", p) for an in-place update."""
        b = self.base(node)
        if is_source(b):
            return (b.op, b)
        if id(b) in self.inplace_updates:
            return ("param", self.inplace_updates[id(b)])
        return ("slot", self.slot_of[id(b)])

    def text(self) -> str:
        """A readable listing: one line per node with its storage, then the totals."""
        number = {id(n): k for k, n in enumerate(self.graph.nodes)}
        lines = [f"buffer plan for graph {self.graph.name}: {len(self.slot_bytes)} slots, "
                 f"{self.arena_bytes} bytes (every intermediate in its own buffer: {self.naive_bytes} bytes; "
                 f"peak live: {self.peak_live_bytes} bytes)"]
        for n in self.graph.nodes:
            if is_source(n):
                continue
            kind, where = self.storage(n)
            if kind == "slot":
                place = f"slot {where} ({self.slot_bytes[where]} B)"
            else:
                place = f"in place into {kind} %{number[id(where)]}" + (f" {where.name}" if where.name else "")
            if is_view(n):
                place = f"view of %{number[id(self.base(n))]} ({place})"
            elif id(n) in self.in_place:
                place += f", overwriting %{number[id(self.in_place[id(n)])]}"
            first, last = self.lifetime.get(id(self.base(n)), (number[id(n)], number[id(n)]))
            lines.append(f"%{number[id(n)]}:{n.type_str} {n.op}: {place}, live {first}..{last}")
        for k, size in enumerate(self.slot_bytes):
            tenants = [f"%{number[id(n)]}" for n in self.graph.nodes if self.slot_of.get(id(n)) == k]
            lines.append(f"slot {k}: {size} B <- {', '.join(tenants)}")
        return "\n".join(lines) + "\n"


def _reads_elementwise(node: Node) -> bool:
    """Kernels that read operand element i only to write output element i."""
    return is_elementwise(node)


def plan_buffers(graph: Graph) -> BufferPlan:
    """Liveness, slot assignment with reuse, and in-place updates for ``graph`` (see module docstring).

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (256,))
    ...     y = g.output(graphc.exp(graphc.exp(graphc.exp(x))))
    >>> plan = plan_buffers(g)
    >>> plan.naive_bytes, plan.arena_bytes
    (3072, 1024)
    """
    nodes = graph.nodes
    step = {id(n): k for k, n in enumerate(nodes)}
    end = len(nodes)
    plan = BufferPlan(graph)

    def base(n: Node) -> Node:
        return plan.base(n)

    # -- liveness (views extend the life of what they view) ------------------------------------------
    last: dict[int, int] = {}
    for n in nodes:
        for i in n.inputs:
            b = base(i)
            last[id(b)] = max(last.get(id(b), -1), step[id(n)])
    pinned = {id(base(o)) for o in graph.outputs}
    update_values = [base(v) for _, v in graph.updates]

    # -- in-place parameter updates ------------------------------------------------------------------
    readers_of: dict[int, list[Node]] = {}
    for n in nodes:
        for i in n.inputs:
            readers_of.setdefault(id(base(i)), []).append(n)
    claimed: set[int] = set()
    for p, v in graph.updates:
        vb = base(v)
        if vb is not v or is_source(vb) or id(vb) in claimed or id(vb) in pinned or id(p) in pinned:
            continue
        if _nbytes(vb) != _nbytes(p) or vb.dtype != p.dtype:
            continue
        s = step[id(vb)]
        readers = readers_of.get(id(p), [])
        if any(step[id(r)] > s for r in readers):
            continue  # someone reads the old value after v would overwrite it
        if any(r is vb for r in readers):
            direct = all(i is p or base(i) is not p for i in vb.inputs)
            if not (_reads_elementwise(vb) and vb.shape == p.shape and direct):
                continue
        claimed.add(id(vb))
        plan.inplace_updates[id(vb)] = p

    # -- slots -------------------------------------------------------------------------------------------
    owned = [n for n in nodes if _owns_storage(n)]
    plan.naive_bytes = naive_bytes(graph)
    lasting_ids = pinned | {id(v) for v in update_values if id(v) not in plan.inplace_updates}
    for n in owned:
        plan.lifetime[id(n)] = (step[id(n)], end if id(n) in lasting_ids else last.get(id(n), step[id(n)]))

    free: list[int] = []                          # slots nobody holds now
    holder: dict[int, int] = {}                   # slot -> id(node) holding it
    expiring: list[tuple[int, int, int]] = []     # (last step, slot, id(node)) of held slots
    for n in owned:
        if id(n) in plan.inplace_updates:
            continue
        s = step[id(n)]
        still = []
        for last_step, slot, holder_id in expiring:
            if last_step < s:
                if holder.get(slot) == holder_id:  # not taken over in place by a later value
                    free.append(slot)
                    del holder[slot]
            else:
                still.append((last_step, slot, holder_id))
        expiring = still
        size = _aligned(_nbytes(n))
        slot = _take_over(n, plan, holder, step, pinned)
        if slot is None:
            slot = _best_fit(free, plan.slot_bytes, size)
            if slot is None:
                slot = len(plan.slot_bytes)
                plan.slot_bytes.append(size)
            else:
                free.remove(slot)
        plan.slot_bytes[slot] = max(plan.slot_bytes[slot], size)
        plan.slot_of[id(n)] = slot
        holder[slot] = id(n)
        expiring.append((plan.lifetime[id(n)][1], slot, id(n)))

    # -- peak of live bytes --------------------------------------------------------------------------------
    delta = [0] * (end + 2)
    for n in owned:
        if id(n) in plan.inplace_updates:
            continue
        first, last_step = plan.lifetime[id(n)]
        delta[first] += _nbytes(n)
        delta[last_step + 1] -= _nbytes(n)
    running = 0
    for d in delta:
        running += d
        plan.peak_live_bytes = max(plan.peak_live_bytes, running)
    return plan


def _take_over(node: Node, plan: BufferPlan, holder: dict, step: dict, pinned: set) -> int | None:
    """The slot of an operand ``node`` may overwrite in place (elementwise, same shape, life ends here)."""
    if not _reads_elementwise(node):
        return None
    s = step[id(node)]
    for i in node.inputs:
        b = plan.base(i)
        if is_source(b) or id(b) in pinned or id(b) not in plan.slot_of:
            continue
        if id(b) in plan.inplace_updates or i.shape != node.shape or i.dtype.np.itemsize != node.dtype.np.itemsize:
            continue
        slot = plan.slot_of[id(b)]
        if plan.lifetime[id(b)][1] == s and holder.get(slot) == id(b):
            plan.in_place[id(node)] = i
            return slot
    return None


def _best_fit(free: list[int], sizes: list[int], size: int) -> int | None:
    """The smallest free slot that holds ``size`` bytes, else the largest free slot (it grows)."""
    if not free:
        return None
    fitting = [k for k in free if sizes[k] >= size]
    if fitting:
        return min(fitting, key=lambda k: (sizes[k], k))
    return max(free, key=lambda k: (sizes[k], -k))


def _owns_storage(node: Node) -> bool:
    """Whether ``node`` needs memory of its own: a computed value (not a source, not a view of another)."""
    return not (is_source(node) or is_view(node))


def naive_bytes(graph: Graph) -> int:
    """The intermediate memory when every value that needs storage gets a buffer of its own."""
    return sum(_aligned(_nbytes(n)) for n in graph.nodes if _owns_storage(n))

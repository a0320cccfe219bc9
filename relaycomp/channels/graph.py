"""The channel dependency graph of a model: which channels must be pruned together.

The lower level of structured pruning (the Torch-Pruning split: ``ChannelGraph.build(model)``
underneath, :class:`relaycomp.prune.pruner.Pruner` on top). It reads a front-end-neutral
:class:`relaycomp.channels.view.GraphView` (ONNX or Relax), so both front ends share it.
Every op that *creates* channels (a Conv's filters, a Gemm/MatMul's output features) opens a
channel *space*. Each tensor's channel axis is
described as a layout: a sequence of segments, each a space (or an opaque run of channels that may
not change) repeated ``repeat`` times per channel (``Flatten`` of ``[N, C, H, W]`` makes blocks of
``H*W``). Ops propagate layouts (``relaycomp.channels.ops.HANDLERS``):

- BatchNormalization, activations, pooling, Transpose, reductions over other axes pass through;
  depthwise Conv (group == channels) passes its input's channels through;
- residual Add/Sum/Mul… join all operands' spaces into one group (union-find); per-channel
  constants (``[C,1,1]``) are sliced along;
- Concat on the channel axis concatenates layouts (offsets); Split/Slice on it take segments -
  when a bound falls inside one producer's channels, the analysis is rerun with that producer's
  output cut into pieces there (YOLO's C2f, ShuffleNet's channel split);
- Flatten/Reshape to ``[N, C*H*W]`` scales the repeat, so a following Gemm loses whole blocks.

Spaces joined this way form a :class:`Group`, pruned as a unit. A group is *blocked* (left exactly
as it is, with a reason) when any member is something the graph cannot rewrite consistently:
an unknown consumer, a graph output (output shapes never change), a grouped conv, a weight that is
not a constant, a shape-changing reshape, a shared weight sliced two ways.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from relaycomp.channels.layout import Layout, Segment
from relaycomp.channels.view import GraphView, OnnxView


@dataclass(frozen=True)
class TensorCut:
    """A constant whose ``axis`` runs over ``segments``: sliced when their spaces shrink.

    ``role``: ``out`` (a filter / output feature, e.g. Conv weight axis 0), ``in`` (a consumer's
    input channels, e.g. the next Conv's weight axis 1), ``param`` (bias, BN statistics,
    per-channel constants), ``bn_scale`` (BN gamma). ``activation`` names the tensor an ``in``
    cut's node reads, for activation-based importance.
    """

    tensor: str
    axis: int
    segments: tuple[Segment, ...]
    role: str
    node: str
    activation: str | None = None

    def positions(self, segment_index: int) -> np.ndarray:
        """Indices along ``axis`` of segment ``segment_index``: shape ``[size, repeat]``."""
        offset = sum(s.width for s in self.segments[:segment_index])
        seg = self.segments[segment_index]
        return offset + np.arange(seg.size)[:, None] * seg.repeat + np.arange(seg.repeat)

    def kept_indices(self, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Indices along ``axis`` that survive when space ``s`` keeps channels ``keep[s]``."""
        parts = []
        for i, seg in enumerate(self.segments):
            positions = self.positions(i)
            if seg.space is not None and seg.space in keep:
                positions = positions[keep[seg.space]]
            parts.append(positions.reshape(-1))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@dataclass(frozen=True)
class Space:
    """Channels ``[start, start + size)`` of the ``whole`` that node ``producer`` creates.

    A producer's channels are one space unless a Split/Slice or a join with differently laid
    out channels cuts them (e.g. YOLO's C2f splits a conv's output in halves): then each piece is
    a space of its own, and the pieces may be pruned separately.
    """

    id: int
    size: int
    producer: str
    start: int = 0
    whole: int = 0

    @property
    def label(self) -> str:
        """The producer, with the channel range when the space is a piece of its output."""
        if self.size == self.whole:
            return self.producer
        return f"{self.producer}[{self.start}:{self.start + self.size}]"


@dataclass
class Group:
    """Spaces that must keep the same channels; ``blocked`` says why it cannot be pruned."""

    id: int
    size: int
    spaces: list[int]
    producers: list[str]
    labels: list[str] = field(default_factory=list)
    cuts: list[TensorCut] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        """True when every member can be rewritten consistently."""
        return not self.blocked

    @property
    def name(self) -> str:
        """Readable name: the producing nodes (with channel ranges for pieces)."""
        return "+".join(self.labels or self.producers)


class ChannelGraph:
    """The dependency groups of a model. Build with :meth:`build`, read :attr:`groups`."""

    # Each round of analysis may find a producer whose channels must be cut into pieces;
    # the next round starts from those pieces. Real graphs settle in two or three rounds.
    MAX_ROUNDS = 8

    def __init__(self, view: GraphView, pieces: dict[str, set[int]] | None = None):
        self.view = view
        self.model = view.source
        self.pieces = pieces or {}  # producer -> channel offsets where its output is cut
        self.requests: dict[str, set[int]] = defaultdict(set)
        self.shapes = view.shapes
        self.constants = view.constants
        self.layouts: dict[str, Layout | None] = {}
        self.spaces: list[Space] = []
        self.cuts: list[TensorCut] = []
        self.edits: list[tuple] = []  # ("group"|"split"|"reshape", node, payload)
        self._parent: list[int] = []
        self._blocked: dict[int, list[str]] = defaultdict(list)
        self.groups: list[Group] = []

    @classmethod
    def build(cls, model, input_shapes: dict | None = None) -> ChannelGraph:
        """Analyze ``model``: a :class:`GraphView`, or an ONNX model (inputs pinned to
        ``input_shapes``, other dynamic dims 1)."""
        from relaycomp.channels import ops_shape  # noqa: F401 - registers the shape-op handlers
        from relaycomp.channels.ops import handle_node

        view = model if isinstance(model, GraphView) else OnnxView(model, input_shapes)
        pieces: dict[str, set[int]] = {}
        for _ in range(cls.MAX_ROUNDS):
            graph = cls(view, pieces)
            for name in view.inputs:
                graph.layouts.setdefault(name, None)
            for node in view.nodes:
                handle_node(graph, node)
            if all(offsets <= pieces.get(p, set()) for p, offsets in graph.requests.items()):
                break
            pieces = {p: pieces.get(p, set()) | graph.requests.get(p, set())
                      for p in set(pieces) | set(graph.requests)}
        for output in view.outputs:
            graph.block(graph.layouts.get(output), f"reaches graph output '{output}'")
        graph._check_cut_conflicts()
        graph._make_groups()
        return graph

    # -- used by the op handlers ---------------------------------------------------------------
    def new_space(self, size: int, producer: str, start: int = 0, whole: int | None = None) -> int:
        """Open a space of ``size`` channels created by node ``producer``."""
        space = Space(len(self.spaces), size, producer, start, whole or size)
        self.spaces.append(space)
        self._parent.append(space.id)
        return space.id

    def fresh(self, size: int, producer: str, axis: int) -> Layout:
        """The layout of a new output of ``size`` channels, in the pieces earlier rounds found."""
        bounds = sorted({0, size} | {b for b in self.pieces.get(producer, ()) if 0 < b < size})
        segments = tuple(Segment(self.new_space(end - start, producer, start, size), end - start)
                         for start, end in itertools.pairwise(bounds))
        return Layout(axis, segments)

    def request_cuts(self, layout: Layout, boundaries) -> bool:
        """Ask the next round to cut ``layout``'s spaces at these offsets along the axis.

        Returns False when a boundary falls inside an opaque or repeated segment (no cut helps).
        """
        possible, start = True, 0
        for seg in layout.segments:
            inside = [b - start for b in boundaries if start < b < start + seg.width]
            if inside and (seg.space is None or seg.repeat != 1):
                possible = False
            elif inside:
                space = self.spaces[seg.space]
                self.requests[space.producer].update(space.start + b for b in inside)
            start += seg.width
        return possible

    def find(self, space: int) -> int:
        """Union-find root of ``space``."""
        while self._parent[space] != space:
            self._parent[space] = self._parent[self._parent[space]]
            space = self._parent[space]
        return space

    def join(self, a: Layout, b: Layout, why: str) -> bool:
        """Make two layouts of one axis share channels; mismatched structure blocks both."""
        if len(a.segments) != len(b.segments) or any(
                (x.size, x.repeat, x.space is None) != (y.size, y.repeat, y.space is None)
                for x, y in zip(a.segments, b.segments)):
            if a.width == b.width:  # cut both at each other's boundaries, and retry
                edges_a = np.cumsum([s.width for s in a.segments]).tolist()
                edges_b = np.cumsum([s.width for s in b.segments]).tolist()
                self.request_cuts(a, edges_b)
                self.request_cuts(b, edges_a)
            self.block(a, f"{why}: operands' channels are laid out differently")
            self.block(b, f"{why}: operands' channels are laid out differently")
            return False
        for x, y in zip(a.segments, b.segments):
            if x.space is not None:
                ra, rb = self.find(x.space), self.find(y.space)
                if ra != rb:
                    self._parent[rb] = ra
        return True

    def block(self, layout: Layout | None, reason: str) -> None:
        """Leave every space of ``layout`` untouched, for ``reason``."""
        if layout is None:
            return
        for space in layout.spaces():
            if reason not in self._blocked[space]:
                self._blocked[space].append(reason)

    def cut(self, tensor: str, axis: int, segments, role: str, node, activation=None) -> None:
        """Record that constant ``tensor`` is sliced along ``axis`` with these segments."""
        node_name = node.name
        self.cuts.append(TensorCut(tensor, axis, tuple(segments), role, node_name, activation))

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output, else None."""
        return self.constants.get(name)

    def rank(self, name: str) -> int | None:
        """Static rank of a tensor, when known."""
        if name in self.constants:
            return self.constants[name].ndim
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    # -- finishing -----------------------------------------------------------------------------
    def _check_cut_conflicts(self) -> None:
        by_key: dict[tuple[str, int], set] = defaultdict(set)
        for cut in self.cuts:
            by_key[(cut.tensor, cut.axis)].add(cut.segments)
        for (tensor, _axis), variants in by_key.items():
            if len(variants) > 1:
                for segments in variants:
                    self.block(Layout(0, segments), f"weight '{tensor}' is shared and sliced "
                                                    "two ways")
        used_by: dict[str, int] = defaultdict(int)
        for node in self.view.nodes:
            for name in node.input:
                used_by[name] += 1
        for cut in self.cuts:
            if used_by[cut.tensor] > 1 and len(by_key[(cut.tensor, cut.axis)]) == 1:
                consumers = {c.node for c in self.cuts if c.tensor == cut.tensor}
                if used_by[cut.tensor] > len(consumers):
                    self.block(Layout(0, cut.segments),
                               f"constant '{cut.tensor}' is also read by another node")

    def _make_groups(self) -> None:
        members: dict[int, list[int]] = defaultdict(list)
        for space in self.spaces:
            members[self.find(space.id)].append(space.id)
        index = {}
        for root, spaces in members.items():
            group = Group(len(self.groups), self.spaces[root].size, spaces,
                          [self.spaces[s].producer for s in spaces],
                          [self.spaces[s].label for s in spaces])
            for space in spaces:
                for reason in self._blocked.get(space, []):
                    if reason not in group.blocked:
                        group.blocked.append(reason)
            if group.size <= 1:
                group.blocked.append("a single channel")
            self.groups.append(group)
            index[root] = group
        for cut in self.cuts:
            touched = {self.find(s.space) for s in cut.segments if s.space is not None}
            for root in touched:
                index[root].cuts.append(cut)

    def group_of(self, node_name: str) -> Group | None:
        """The group whose channels node ``node_name`` produces."""
        return next((g for g in self.groups if node_name in g.producers), None)

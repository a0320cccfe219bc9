"""How channels run along a tensor's channel axis: segments of channel spaces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """``size`` channels of ``space`` (None: channels no pruning may touch), each ``repeat``
    wide."""

    space: int | None
    size: int
    repeat: int = 1

    @property
    def width(self) -> int:
        """Extent along the axis."""
        return self.size * self.repeat


@dataclass(frozen=True)
class Layout:
    """The channel axis of a tensor (``axis``, non-negative) and what runs along it."""

    axis: int
    segments: tuple[Segment, ...]

    @property
    def width(self) -> int:
        """Extent of the channel axis."""
        return sum(s.width for s in self.segments)

    def spaces(self) -> list[int]:
        """The prunable spaces along the axis."""
        return [s.space for s in self.segments if s.space is not None]

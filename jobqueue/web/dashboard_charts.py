"""Chart geometry for the dashboard's inline SVG: plain numbers that the templates turn into
`<rect>` and `<polyline>` elements. No JavaScript and no chart library, so the charts render on any
phone, under a CSP that forbids inline script and style, and in a screenshot.

Coordinates are in a fixed viewBox (`WIDTH` x `HEIGHT`) that CSS stretches to the card's width;
axis labels live in HTML beside the SVG, so text never stretches with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH = 600
HEIGHT = 160
GAP = 0.2  # the fraction of each slot left empty between bars
STEPS = (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)


def nice_max(value: float) -> int:
    """The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten, rounded
    up to an integer) at or above `value`, at least 1: a top for the axis that reads well and
    leaves the tallest bar most of the height."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))  # value > 1, so a whole power
    for step in STEPS:
        if value <= step * power:
            return math.ceil(step * power)
    return 10 * power  # unreachable: 10 * power always covers value


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str


@dataclass(frozen=True)
class Slot:
    """One x position: its bars (stacked bottom-up), a hit area spanning the full height and the
    tooltip text, so an empty slot still explains itself on hover or tap."""

    x: float
    width: float
    title: str
    bars: list[Bar] = field(default_factory=list)


@dataclass(frozen=True)
class BarChart:
    slots: list[Slot]
    top: int  # the value at the top edge
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def gridlines(self) -> list[float]:
        return [0.0, self.height / 2]


def stacked_bars(
    values: Sequence[dict[str, int]], series: Sequence[str], titles: Sequence[str], *, height: int = HEIGHT
) -> BarChart:
    """One slot per item of `values` (a count per series), bars stacked in `series` order."""
    n = max(1, len(values))
    top = nice_max(max((sum(v.get(s, 0) for s in series) for v in values), default=0))
    slot_w = WIDTH / n
    bar_w = slot_w * (1 - GAP)
    slots = []
    for i, (counts, title) in enumerate(zip(values, titles, strict=True)):
        x = i * slot_w
        base = float(height)
        bars = []
        for s in series:
            h = counts.get(s, 0) / top * height
            if h > 0:
                # A non-zero count is always at least one unit tall: a single failure must show.
                h = max(h, 1.0)
                base -= h
                bar_x = round(x + slot_w * GAP / 2, 2)
                bars.append(Bar(x=bar_x, y=round(base, 2), width=round(bar_w, 2), height=round(h, 2), series=s))
        slots.append(Slot(x=round(x, 2), width=round(slot_w, 2), title=title, bars=bars))
    return BarChart(slots=slots, top=top, height=height)


@dataclass(frozen=True)
class LineChart:
    points: str  # the polyline's "x,y x,y ..."
    area: str  # the same line closed along the bottom edge, for the shaded fill
    top: int
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def gridlines(self) -> list[float]:
        return [0.0, self.height / 2]


def line(values: Sequence[float], *, height: int = HEIGHT) -> LineChart:
    """A line through `values`, evenly spaced across the width, oldest first."""
    top = nice_max(max(values, default=0))
    step = WIDTH / max(1, len(values) - 1)
    coords = [(f"{i * step:.6g}", f"{height - v / top * height:.6g}") for i, v in enumerate(values)]
    points = " ".join(f"{x},{y}" for x, y in coords)
    area = f"0,{height} {points} {coords[-1][0] if coords else 0},{height}"
    return LineChart(points=points, area=area, top=top, height=height)

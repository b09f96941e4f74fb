"""An anytime plot as a self-contained SVG: median normalized regret against compute, one band per method."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from html import escape

COLOURS = ("#1b6ac9", "#d1495b", "#2e933c", "#edae49", "#6c4f9e", "#00798c", "#8c564b", "#555555")
WIDTH, HEIGHT = 780, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 230, 40, 50


def _log_ticks(low: float, high: float) -> list[float]:
    ticks: list[float] = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for m in (1, 2, 5):
            value = m * 10.0**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def anytime_svg(
    title: str,
    x: Sequence[float],
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    x_label: str,
    y_label: str,
    dashed: Collection[str] = (),
) -> str:
    """Each method's (median, low, high) over x, on log axes; non-positive values are clipped to the lowest shown.
    Methods in dashed (another package's optimizers beside tunefleet's) are drawn with dashed lines."""
    values = [v for median, low, high in curves.values() for v in (*median, *low, *high) if 0 < v < math.inf]
    y_low = max(min(values), 1e-4) if values else 1e-3
    y_high = max(values) if values else 1.0
    x_low, x_high = min(x), max(x)

    def px(value: float) -> float:
        span = math.log10(x_high) - math.log10(x_low)
        return LEFT + (math.log10(value) - math.log10(x_low)) / span * (WIDTH - LEFT - RIGHT)

    def py(value: float) -> float:
        value = min(max(value, y_low), y_high)
        span = math.log10(y_high) - math.log10(y_low) or 1.0
        return TOP + (1 - (math.log10(value) - math.log10(y_low)) / span) * (HEIGHT - TOP - BOTTOM)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for tick in _log_ticks(x_low, x_high):
        parts.append(
            f'<line x1="{px(tick):.1f}" y1="{TOP}" x2="{px(tick):.1f}" y2="{HEIGHT - BOTTOM}" stroke="#eee"/>'
            f'<text x="{px(tick):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{tick:g}</text>'
        )
    for tick in _log_ticks(y_low, y_high):
        parts.append(
            f'<line x1="{LEFT}" y1="{py(tick):.1f}" x2="{WIDTH - RIGHT}" y2="{py(tick):.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{py(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
        'fill="none" stroke="#888"/>'
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 12}" text-anchor="middle">{escape(x_label)}</text>'
        f'<text transform="translate(16 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for i, (name, (median, low, high)) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        band = [f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, high, strict=True)]
        band += [f"{px(a):.1f},{py(b):.1f}" for a, b in reversed(list(zip(x, low, strict=True)))]
        line = [f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, median, strict=True)]
        parts.append(
            f'<polygon points="{" ".join(band)}" fill="{colour}" fill-opacity="0.12" stroke="none"/>'
        )
        dash = ' stroke-dasharray="6 3"' if name in dashed else ""
        parts.append(
            f'<polyline points="{" ".join(line)}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        y = TOP + 14 + 18 * i
        parts.append(
            f'<line x1="{WIDTH - RIGHT + 12}" y1="{y - 4}" x2="{WIDTH - RIGHT + 32}" y2="{y - 4}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
            f'<text x="{WIDTH - RIGHT + 38}" y="{y}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"

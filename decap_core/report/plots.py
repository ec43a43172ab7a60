"""The report's figures, as PNG bytes: strategies told apart by colour, marker and dash, and the
embedding maps of the modality gap. Drawn on ``matplotlib.figure.Figure`` (no pyplot, no GUI)."""
from __future__ import annotations

import io
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

STRATEGY_STYLES: dict[str, dict[str, Any]] = {
    "pd": {"color": "#1f77b4", "marker": "o", "linestyle": "-"},
    "nnd": {"color": "#ff7f0e", "marker": "s", "linestyle": "--"},
    "clipre": {"color": "#2ca02c", "marker": "^", "linestyle": "-."},
    "vd": {"color": "#d62728", "marker": "D", "linestyle": ":"},
}
STRATEGY_LABELS = {"pd": "pd (projection)", "nnd": "nnd (nearest memory embedding, decoded)",
                   "clipre": "clipre (nearest memory text)", "vd": "vd (image embedding, decoded)"}
KIND_STYLES = {"image": {"color": "#d62728", "marker": "o"}, "text": {"color": "#1f77b4", "marker": "s"},
               "projected (pd)": {"color": "#2ca02c", "marker": "^"}}
FLAT_MARKER_SPACING = 3  # a flat line's markers sit at every third point of a finer grid, each line offset


def percent(value: float) -> str:
    return f"{value:.1%}"


def draw_strategy_lines(ax: Axes, rows: Sequence[Mapping[str, Any]], x: str, y: str,
                        value_format: Callable[[float], str] = percent) -> None:
    """``y`` against ``x`` per strategy; a row whose ``x`` is None is a flat line across the x range.

    Flat lines (baselines that do not depend on ``x``) keep their strategy's colour, dash and marker,
    and their markers are staggered, so two baselines with the same value still show both.
    """
    xs = sorted({row[x] for row in rows if row[x] is not None})
    if not xs:
        raise ValueError(f"no row has a value for {x!r}")
    grid = np.geomspace(xs[0], xs[-1], FLAT_MARKER_SPACING * max(1, len(xs) - 1) + 1) if xs[0] > 0 else xs
    strategies = list(dict.fromkeys(row["strategy"] for row in rows))
    flat_number = 0
    for strategy in strategies:
        style = {"color": "#7f7f7f", "marker": "x", "linestyle": "-", **STRATEGY_STYLES.get(strategy, {})}
        label = STRATEGY_LABELS.get(strategy, strategy)
        chosen = [row for row in rows if row["strategy"] == strategy]
        curve = sorted((row[x], row[y]) for row in chosen if row[x] is not None)
        if curve:
            ax.plot([p for p, _ in curve], [v for _, v in curve], label=label, linewidth=2, markersize=7, **style)
        for row in chosen:
            if row[x] is None:
                ax.plot(grid, np.full(len(grid), row[y]), label=f"{label}: {value_format(row[y])}, flat",
                        markevery=(flat_number % FLAT_MARKER_SPACING, FLAT_MARKER_SPACING), linewidth=1.8,
                        markersize=6, **style)
                flat_number += 1
    if xs[0] > 0:
        ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def ablation_figure(rows: Sequence[Mapping[str, Any]], x_label: str, x_format: Callable[[float], str],
                    panels: Sequence[tuple[str, str, Callable[[float], str]]], title: str) -> bytes:
    """One panel per ``(metric, axis label, value format)``, ``metric`` against ``x`` per strategy."""
    figure = Figure(figsize=(6.2 * len(panels), 4.6))
    for number, (metric, label, value_format) in enumerate(panels, start=1):
        ax = figure.add_subplot(1, len(panels), number)
        draw_strategy_lines(ax, rows, "x", metric, value_format)
        ax.set_xticklabels([x_format(value) for value in ax.get_xticks()])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _, shown=value_format: shown(value)))
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.legend(fontsize=8, loc="best")
    figure.suptitle(title)
    figure.tight_layout()
    return png_bytes(figure)


def gap_figure(maps: Mapping[str, np.ndarray], count: int, links: int = 12,
               centroids: Collection[str] = ()) -> bytes:
    """Each map's points (rows: ``count`` images, then their texts, then their projections), and for
    the first ``links`` pairs a grey line image -> projection and a dotted line projection -> its text.
    On the maps named in ``centroids`` (linear ones, where a mean means something) each set's mean
    is a large outlined marker."""
    figure = Figure(figsize=(5.4 * len(maps), 5.4))
    for number, (name, points) in enumerate(maps.items(), start=1):
        if len(points) != 3 * count:
            raise ValueError(f"map {name} has {len(points)} points, not 3 x {count}")
        ax = figure.add_subplot(1, len(maps), number)
        image, text, projected = points[:count], points[count : 2 * count], points[2 * count :]
        for i in range(min(links, count)):
            ax.plot(*zip(image[i], projected[i]), color="#555555", linewidth=0.7, alpha=0.7, zorder=1)
            ax.plot(*zip(projected[i], text[i]), color="black", linewidth=0.9, linestyle=":", zorder=1)
        for kind, kind_points in zip(KIND_STYLES, (image, text, projected)):
            ax.scatter(kind_points[:, 0], kind_points[:, 1], s=14, alpha=0.6, label=f"{kind} ({count})",
                       edgecolors="none", zorder=2, **KIND_STYLES[kind])
            if name in centroids:
                centre = kind_points.mean(axis=0)
                ax.scatter([centre[0]], [centre[1]], s=260, edgecolors="black", linewidths=1.8, zorder=3,
                           **KIND_STYLES[kind])
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, loc="best", markerscale=1.5)
    figure.suptitle(f"CLIP embeddings of {count} image/text pairs; lines: image -> projection -> its text "
                    f"({min(links, count)} pairs); outlined markers: each set's mean (linear maps)", fontsize=10)
    figure.tight_layout()
    return png_bytes(figure)

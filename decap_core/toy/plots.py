"""Plots of the toy world's evaluation: pd against tau, beside the baselines (each its own colour,
marker and dash, as in ``decap report``'s ablations)."""
from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from decap_core.report.plots import draw_strategy_lines


def plot_tau_sweep(rows: Sequence[dict], path: str) -> None:
    """Object recall of ``pd`` against tau; each baseline (its ``tau`` None) a flat line of its own style."""
    figure = Figure(figsize=(7, 4.6))
    ax = figure.add_subplot()
    draw_strategy_lines(ax, rows, "tau", "object_recall")
    ax.set_xticklabels([f"{tau:g}" for tau in ax.get_xticks()])
    ax.set_xlabel("tau")
    ax.set_ylabel("objects named (held-out images)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("DeCap on the toy world")
    figure.tight_layout()
    figure.savefig(path, dpi=120)

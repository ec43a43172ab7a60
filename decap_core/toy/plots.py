"""Plots of the toy world's evaluation: pd against tau, beside the baselines."""
from __future__ import annotations

from typing import Sequence

BASELINE_STYLES = {"nnd": ("tab:orange", "--"), "clipre": ("tab:green", "-."), "vd": ("tab:red", ":")}


def plot_tau_sweep(rows: Sequence[dict], path: str) -> None:
    """Object recall of ``pd`` against tau, each baseline a horizontal line of its own colour and dash."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = sorted((r["tau"], r["object_recall"]) for r in rows if r["strategy"] == "pd")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([t for t, _ in sweep], [v for _, v in sweep], marker="o", color="tab:blue", label="pd (projection)")
    for row in rows:
        if row["strategy"] != "pd":
            colour, dash = BASELINE_STYLES.get(row["strategy"], ("tab:gray", "--"))
            ax.axhline(row["object_recall"], linestyle=dash, color=colour,
                       label=f"{row['strategy']} ({row['object_recall']:.1%})")
    ax.set_xscale("log")
    ax.set_xlabel("tau")
    ax.set_ylabel("objects named (held-out images)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.set_title("DeCap on the toy world")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

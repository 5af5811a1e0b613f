"""PNG plots for reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..._optional import need


def pyplot() -> Any:
    """matplotlib's pyplot, drawing off-screen."""
    need("matplotlib", extra="sdk", purpose="to draw report plots").use("Agg")
    return need("matplotlib.pyplot", extra="sdk", purpose="to draw report plots")


def sensitivity_png(layers: list[dict[str, Any]], path: Path, title: str, top: int = 30) -> Path:
    """A horizontal bar chart of per-layer error (log scale), most sensitive at the top."""
    plt = pyplot()
    shown = layers[:top][::-1]
    height = max(3.0, 0.28 * len(shown) + 1.2)
    fig, ax = plt.subplots(figsize=(9, height))
    errors = [max(layer["error"], 1e-12) for layer in shown]
    ax.barh([f"{layer['display']} ({layer['op']})" for layer in shown], errors, color="#c0504d")
    ax.set_xscale("log")
    ax.set_xlabel("output error when quantized alone (1 − mean cosine)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

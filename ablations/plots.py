"""Matplotlib figures of the sweep: the Fig-12-style ablation bars and image grids."""

from __future__ import annotations

from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only; no display on workers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def ablation_bars(table: pd.DataFrame, title: str) -> plt.Figure:
    """Grouped bars like paper Fig 12: one group per attack, one bar per variant, std as error bars.

    ``table``: columns variant, attack, mean, std (accuracies in [0, 1]).
    """
    variants = list(dict.fromkeys(table["variant"]))
    attacks = list(dict.fromkeys(table["attack"]))
    width = 0.8 / max(1, len(variants))
    figure, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(attacks) + 2), 4))
    positions = np.arange(len(attacks))
    for i, variant in enumerate(variants):
        rows = table[table["variant"] == variant].set_index("attack").reindex(attacks)
        ax.bar(positions + i * width - 0.4 + width / 2, rows["mean"], width, yerr=rows["std"], capsize=3, label=variant)
    ax.set_xticks(positions)
    ax.set_xticklabels(attacks, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy (defended)")
    ax.set_title(title)
    ax.legend(title="variant")
    figure.tight_layout()
    return figure


def image_grid(rows: Mapping[str, "torch.Tensor"]) -> plt.Figure:  # noqa: F821
    """One row per entry (label -> images (N, C, H, W) in [0, 1]), N columns."""
    labels = list(rows)
    n = len(next(iter(rows.values())))
    figure, axes = plt.subplots(len(labels), n, figsize=(1.2 * n + 1.5, 1.3 * len(labels)), squeeze=False)
    for r, label in enumerate(labels):
        images = rows[label].detach().cpu().clamp(0, 1)
        for c in range(n):
            ax = axes[r][c]
            image = images[c].permute(1, 2, 0).numpy()
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.tight_layout()
    return figure

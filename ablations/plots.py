"""Matplotlib figures of the sweep: the Fig-12-style ablation bars and image grids."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on workers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from addd import figures as F  # noqa: E402


def ablation_bars(table: pd.DataFrame, summary: Mapping, known: Sequence[str], title: str) -> plt.Figure:
    """Paper Fig 12 layout: grouped bars of oblivious test accuracy per attack, one bar per defense,
    ± std over seeds as error bars. Rows: tuned ablations, fixed ablations, baselines (each with
    full for reference); columns: the known attacks (of full's best config), the unknown ones. The
    y axis is zoomed to the bars (differences visible, not 0-1); the legend sits right of the bars.

    ``table``: ablations.report.accuracy_table (columns variant, kind, figure, attack, mean, std)."""
    obl = table[table["threat_model"] == F.THREAT_WORDS[F.OBLIVIOUS]]
    per_attack = obl["figure"].map(lambda name: F.figure(name).attack is not None).astype(bool)
    obl = obl[per_attack]  # a boolean mask (an empty object one would select columns)
    attacks = [a for a in (summary.get("eval_attacks") or list(dict.fromkeys(obl["attack"]))) if a in set(obl["attack"])]
    groups = [(kind, label) for kind, label in (("tuned", "tuned ablations"), ("fixed", "fixed ablations (full's config)"),
                                                ("baseline", "baselines")) if (obl["kind"] == kind).any()]
    if not groups or not attacks:
        figure, ax = plt.subplots(figsize=(6, 3))
        ax.text(0.5, 0.5, "no per-attack test figures", ha="center", va="center")
        ax.set_axis_off()
        return figure
    sides = [("known attacks (trained on)", [a for a in attacks if a in known]),
             ("unknown attacks", [a for a in attacks if a not in known])]
    sides = [(label, chosen) for label, chosen in sides if chosen]
    def zoom(names: list[str]) -> tuple[float, float]:  # per row: the differences of that row visible
        rows = obl[obl["variant"].isin(names)]
        low = float(np.nanmin(rows["mean"] - rows["std"].fillna(0)))
        high = float(np.nanmax(rows["mean"] + rows["std"].fillna(0)))
        pad = max(0.02, 0.08 * (high - low))
        return max(0.0, low - pad), min(1.0, high + pad)

    figure, axes = plt.subplots(len(groups), len(sides), squeeze=False, sharey="row",
                                figsize=(2.0 + 0.9 * len(attacks) + 2.5, 2.8 * len(groups) + 0.8),
                                gridspec_kw={"width_ratios": [len(c) for _, c in sides]})
    colours = plt.get_cmap("tab10")
    for r, (kind, label) in enumerate(groups):
        names = ["full", *[n for n in dict.fromkeys(obl[obl["kind"] == kind]["variant"]) if n != "full"]]
        width = 0.8 / len(names)
        ylim = zoom(names)
        for c, (side, chosen) in enumerate(sides):
            ax = axes[r][c]
            positions = np.arange(len(chosen))
            for i, name in enumerate(names):
                rows = obl[obl["variant"] == name].set_index("attack").reindex(chosen)
                ax.bar(positions + i * width - 0.4 + width / 2, rows["mean"], width, yerr=rows["std"], capsize=2,
                       label=name, color=colours(i % 10), error_kw={"elinewidth": 0.8})
            ax.set_xticks(positions)
            ax.set_xticklabels(chosen, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(*ylim)
            ax.grid(axis="y", alpha=0.3)
            ax.set_title(f"{label}: {side}", fontsize=9)
        axes[r][0].set_ylabel(f"oblivious test accuracy\n(zoomed: {ylim[0]:.2f}-{ylim[1]:.2f})", fontsize=8)
        axes[r][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="defense",
                           title_fontsize=8, frameon=False)
    figure.suptitle(f"{title}\nbars: mean over seeds, error bars: ± std over seeds; each row's y axis zoomed to its bars",
                    fontsize=10)
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


def restored_grid(tensors: Mapping[str, "torch.Tensor"], attacks: list[str] | None = None,  # noqa: F821
                  title: str | None = None) -> plt.Figure:
    """Original / adversarial / restored images per attack with the target model's predicted labels.

    ``tensors`` as saved by ``sweeps.trial.restored_examples``: ``x``, ``y``, ``pred.x`` and per
    attack ``x_adv.<a>``, ``restored.<a>``, ``pred.x_adv.<a>``, ``pred.restored.<a>``. One row of
    originals, then two rows per attack (adversarial, restored); a wrong prediction is in red.
    ``title`` (e.g. which defense) goes on a line above the legend line.

    Drawn as one montage on one axes: the sweep's driver renders one per trial between trials,
    and a grid of one axes per image took 2.5-6 s there (the next trial waited for it).
    """
    names = attacks or [k[len("x_adv."):] for k in tensors if k.startswith("x_adv.")]
    y = tensors["y"]
    rows = [("original", tensors["x"], tensors["pred.x"])]
    for a in names:
        rows.append((f"{a}: adversarial", tensors[f"x_adv.{a}"], tensors[f"pred.x_adv.{a}"]))
        rows.append((f"{a}: restored", tensors[f"restored.{a}"], tensors[f"pred.restored.{a}"]))
    n = len(y)
    first = rows[0][1]
    channels, height, width = int(first.shape[1]), int(first.shape[2]), int(first.shape[3])
    pad_x, pad_y = max(1, width // 8), max(4, height // 3)  # room above each tile for its label
    cell_w, cell_h = width + pad_x, height + pad_y
    canvas = np.ones((len(rows) * cell_h, n * cell_w, 3), dtype=np.float32)
    for r, (_, images, _) in enumerate(rows):
        images = images.detach().cpu().clamp(0, 1).float().numpy()  # (n, C, H, W)
        for c in range(n):
            tile = np.transpose(images[c], (1, 2, 0))
            top, left = r * cell_h + pad_y, c * cell_w
            canvas[top:top + height, left:left + width] = tile if channels == 3 else tile[..., :1]
    figure, ax = plt.subplots(figsize=(0.9 * n + 2.4, 0.95 * len(rows) + 0.5))
    ax.imshow(canvas, interpolation="nearest", extent=(0, canvas.shape[1], canvas.shape[0], 0))
    for r, (label, _, preds) in enumerate(rows):
        ax.text(-pad_x, r * cell_h + pad_y + height / 2, label, ha="right", va="center", fontsize=7)
        for c in range(n):
            pred = int(preds[c])
            ax.text(c * cell_w + width / 2, r * cell_h + pad_y - 0.5, str(pred), ha="center", va="bottom", fontsize=7,
                    color="black" if pred == int(y[c]) else "red")
    ax.set_xlim(-pad_x, canvas.shape[1])
    ax.set_ylim(canvas.shape[0], 0)
    ax.axis("off")
    legend = "predicted label above each image (red: wrong); true labels: " + " ".join(str(int(v)) for v in y)
    ax.set_title(legend if title is None else f"{title}\n{legend}", fontsize=8)
    figure.subplots_adjust(left=0.2, right=0.99, top=0.97, bottom=0.01)
    return figure


def robustness_curves(curves: Mapping[str, pd.DataFrame], title: str) -> plt.Figure:
    """Accuracy against L-inf eps, one panel per defense: the undefended model under white-box PGD,
    the defended pipeline under oblivious PGD and under adaptive PGD (mean over seeds, band = min..max).

    ``curves``: label -> long frame with columns eps, undefended_whitebox, defended_oblivious,
    defended_adaptive (several seeds may repeat each eps)."""
    styles = {"undefended_whitebox": ("undefended, white-box PGD", "tab:gray", "--"),
              "defended_oblivious": ("defended, oblivious PGD (on M_t)", "tab:blue", "-"),
              "defended_adaptive": ("defended, adaptive PGD (on M_t∘G∘E)", "tab:red", "-")}
    labels = list(curves)
    cols = min(4, max(1, len(labels)))
    rows = (len(labels) + cols - 1) // cols
    figure, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows + 0.6), squeeze=False, sharey=True)
    for i, label in enumerate(labels):
        ax = axes[i // cols][i % cols]
        frame = curves[label].groupby("eps")
        for column, (text, colour, line) in styles.items():
            if column not in curves[label]:
                continue
            mean, low, high = frame[column].mean(), frame[column].min(), frame[column].max()
            ax.plot(mean.index, mean.values, line, color=colour, marker="o", markersize=3, label=text)
            ax.fill_between(mean.index, low.values, high.values, color=colour, alpha=0.15)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("L-inf ε")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for j in range(len(labels), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].set_ylabel("accuracy")
    handles, texts = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, texts, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    return figure


def pareto_plot(points: pd.DataFrame, references: pd.DataFrame, y_label: str, title: str) -> plt.Figure:
    """The front against the references: y (an adaptive figure) against reconstruction accuracy,
    mean over seeds with ± std bars. ``points``: one row per front member, columns label, x, x_std,
    y, y_std, colour (oblivious worst unknown: the colour scale); ``references``: the same columns
    but colour, drawn as labelled black markers (no_defense, ape_gan, adv_training, the paper's setting)."""
    figure, ax = plt.subplots(figsize=(6.4, 4.6))
    if not points.empty:
        ax.errorbar(points["x"], points["y"], xerr=points["x_std"], yerr=points["y_std"], fmt="none",
                    ecolor="0.6", elinewidth=0.8, zorder=1)
        dots = ax.scatter(points["x"], points["y"], c=points["colour"], cmap="viridis", vmin=0, vmax=1, s=60,
                          edgecolors="black", linewidths=0.5, zorder=2)
        for row in points.itertuples():
            ax.annotate(row.label, (row.x, row.y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        figure.colorbar(dots, ax=ax, label="oblivious worst unknown (test)")
    for row, marker in zip(references.itertuples(), "sD^vP"):
        ax.errorbar([row.x], [row.y], xerr=[row.x_std], yerr=[row.y_std], fmt=marker, color="black", markersize=7,
                    elinewidth=0.8, capsize=2, zorder=3, label=row.label)
    ax.set_xlabel("reconstruction accuracy M_t(G(E(x))), no attack (test)")
    ax.set_ylabel(y_label)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if not references.empty:
        ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure

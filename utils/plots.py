"""Figures for the evaluation report: ROC, macro-F1 curve, score histograms, t-SNE.

Every function takes plain data and an output path, writes a PNG (dpi 150) and returns
the path. The figures are drawn on their own Agg canvas, without pyplot: nothing here
chooses a backend or keeps a figure open, so importing or calling it changes no global
state, and it works headless.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.run_folder import atomic_path

DPI = 150
UNKNOWN_COLOUR = "black"
# Above this many classes a per-class legend is unreadable; only "unknown" is listed.
MAX_LEGEND_CLASSES = 20
EXACT_TSNE_MAX_POINTS = 300


def _to_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _axes(figsize: tuple[float, float]):
    """A new figure on its own Agg canvas, and its one axes."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.tight_layout()
    # Through a temporary file: a failed or interrupted write leaves the previous figure whole.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=os.path.splitext(path)[1].lstrip(".") or "png")
    return path


def plot_roc(fpr, tpr, auroc: float, path, fpr_at_95: Optional[float] = None,
             tpr_target: float = 0.95) -> str:
    """ROC curve (known = positive) with the chance diagonal; AUROC in the legend.

    When ``fpr_at_95`` is given, the operating point (FPR at ``tpr_target`` TPR) is marked.
    """
    fpr, tpr = _to_numpy(fpr), _to_numpy(tpr)
    fig, ax = _axes((5, 5))
    ax.plot(fpr, tpr, color="tab:blue", lw=2, label=f"ROC (AUROC = {auroc:.4f})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
    if fpr_at_95 is not None:
        ax.scatter([fpr_at_95], [tpr_target], color="tab:red", zorder=3,
                   label=f"FPR at {tpr_target:.0%} TPR = {fpr_at_95:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate (unknown accepted)")
    ax.set_ylabel("True positive rate (known accepted)")
    ax.set_title("ROC: known vs unknown")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_roc_sets(curves: dict, path, title: str = "ROC: known vs each unknown set") -> str:
    """One ROC curve per unknown set on one figure: ``curves`` maps a set's name to
    ``(fpr, tpr, auroc)``; the legend gives each set's AUROC."""
    fig, ax = _axes((5.5, 5))
    colours = colormaps["tab10"]
    for i, (name, (fpr, tpr, auroc)) in enumerate(curves.items()):
        ax.plot(_to_numpy(fpr), _to_numpy(tpr), color=colours(i % 10), lw=2, label=f"{name} (AUROC = {auroc:.4f})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate (unknown accepted)")
    ax.set_ylabel("True positive rate (known accepted)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_grouped_bars(values: dict, path, ylabel: str = "AUROC", title: str = "",
                      errors: Optional[dict] = None, ylim: Optional[tuple] = None) -> str:
    """Grouped bars: ``values[group][bar]`` (e.g. AUROC by method within each unknown set),
    with optional error bars ``errors[group][bar]`` (e.g. the std over seeds)."""
    groups = list(values)
    bars = list(dict.fromkeys(bar for group in groups for bar in values[group]))
    width = 0.8 / max(len(bars), 1)
    positions = np.arange(len(groups))
    fig, ax = _axes((max(6.0, 1.2 * len(groups) * max(len(bars), 1) * 0.35 + 2), 4.5))
    colours = colormaps["tab20" if len(bars) > 10 else "tab10"]
    for i, bar in enumerate(bars):
        heights = [values[g].get(bar, np.nan) for g in groups]
        yerr = [errors[g].get(bar, 0.0) for g in groups] if errors else None
        ax.bar(positions + (i - (len(bars) - 1) / 2) * width, heights, width, yerr=yerr, capsize=2,
               label=bar, color=colours(i % colours.N))
    ax.set_xticks(positions)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", ncol=2, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_f1_curve(thresholds, f1, path, threshold_95: Optional[float] = None) -> str:
    """Macro-F1 over K+1 labels against the acceptance threshold.

    Marks the best F1 and, when given, the 95%-TPR threshold (the paper's operating point).
    """
    thresholds, f1 = _to_numpy(thresholds), _to_numpy(f1)
    order = np.argsort(thresholds)
    thresholds, f1 = thresholds[order], f1[order]
    fig, ax = _axes((6, 4))
    ax.plot(thresholds, f1, color="tab:blue", lw=1.5, label="macro-F1")
    best = int(np.argmax(f1))
    ax.scatter([thresholds[best]], [f1[best]], color="tab:green", zorder=3,
               label=f"best: F1 = {f1[best]:.4f} at t = {thresholds[best]:.4g}")
    if threshold_95 is not None:
        f1_95 = float(np.interp(threshold_95, thresholds, f1))
        ax.axvline(threshold_95, color="tab:red", ls="--", lw=1)
        ax.scatter([threshold_95], [f1_95], color="tab:red", zorder=3,
                   label=f"95% TPR: F1 = {f1_95:.4f} at t = {threshold_95:.4g}")
    ax.set_xlabel("Threshold t (accept if score >= t)")
    ax.set_ylabel("Macro-F1 (K known + unknown)")
    ax.set_title("Open-set macro-F1 vs threshold")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_histograms(known_scores, unknown_scores, path,
                          threshold: Optional[float] = None, bins: int = 100) -> str:
    """Overlaid density histograms of the known and unknown scores on shared bins."""
    known, unknown = _to_numpy(known_scores).ravel(), _to_numpy(unknown_scores).ravel()
    edges = np.histogram_bin_edges(np.concatenate([known, unknown]), bins=bins)
    fig, ax = _axes((6, 4))
    ax.hist(known, bins=edges, density=True, alpha=0.55, color="tab:blue",
            label=f"known (n = {known.size})")
    ax.hist(unknown, bins=edges, density=True, alpha=0.55, color="tab:orange",
            label=f"unknown (n = {unknown.size})")
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", ls="--", lw=1.2,
                   label=f"threshold = {threshold:.4g}")
    ax.set_xlabel("OOD score (higher = more in-distribution)")
    ax.set_ylabel("Density")
    ax.set_title("Score distributions")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _class_colours(num_classes: int) -> Sequence:
    if num_classes <= 10:
        return colormaps["tab10"].colors[:num_classes]
    if num_classes <= 20:
        return colormaps["tab20"].colors[:num_classes]
    return [colormaps["nipy_spectral"](i / num_classes) for i in range(num_classes)]


def _deterministic_subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``features`` (perplexity clipped below the number of samples)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = features.shape[0]
    if n < 2:
        raise ValueError("t-SNE needs at least two points")
    # PCA to 50 dims first: the usual preprocessing, and much faster on wide features.
    if features.shape[1] > 50 and n > 50:
        features = PCA(n_components=50, random_state=seed).fit_transform(features)
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
    # Barnes-Hut only pays off on large sets; on a few hundred points exact is faster.
    method = "exact" if n <= EXACT_TSNE_MAX_POINTS else "barnes_hut"
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                method=method, random_state=seed).fit_transform(features)


def plot_tsne(features, labels, num_classes: int, path, seed: int = 0,
              max_points: int = 5000, title: str = "t-SNE of the latent space") -> str:
    """t-SNE of the features coloured by class; label ``num_classes`` is "unknown".

    Above ``max_points`` samples a seeded random subset is embedded, so the figure is
    reproducible.
    """
    features = _to_numpy(features).astype(np.float64).reshape(len(_to_numpy(labels)), -1)
    labels = _to_numpy(labels).astype(np.int64).ravel()
    keep = _deterministic_subsample(labels.size, max_points, seed)
    features, labels = features[keep], labels[keep]
    embedding = tsne_embedding(features, seed=seed)

    fig, ax = _axes((7, 6))
    colours = _class_colours(num_classes)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            ax.scatter(embedding[mask, 0], embedding[mask, 1], s=6, color=colours[c],
                       alpha=0.8, label=f"class {c}" if num_classes <= MAX_LEGEND_CLASSES else None)
    unknown = labels >= num_classes
    if unknown.any():
        ax.scatter(embedding[unknown, 0], embedding[unknown, 1], s=12, marker="x",
                   color=UNKNOWN_COLOUR, alpha=0.7, linewidths=0.8, label="unknown")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"{title} ({labels.size} points)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2,
                  fontsize="small", frameon=False)
    return _save(fig, path)

"""Toy metrics and plots: how well generated points match a mixture whose density is known.

- modes_captured: components with at least ``MODE_SHARE`` of the generated samples within
  ``HQ_STDS`` standard deviations (Euclidean distance) of their centre.
- hq_fraction: the share of generated samples within ``HQ_STDS`` std of some centre. Exact
  mixture samples score 0.9973 in 1-D and 1 - exp(-4.5) = 0.9889 in 2-D.
- reverse_kl: KL(q || weights), q the histogram of the high-quality samples over the modes
  (NaN when there are none): 0 when modes are hit in the data's proportions, log K for a
  single mode of K equal ones.
- jsd (1-D only): JSD(P_data || KDE of the samples), integrated numerically.

``pacgan_metrics`` are the same three as PacGAN (Lin et al. 2018, Table 1) and VEEGAN define
them, on ``PACGAN_SAMPLES`` samples: a mode is captured when at least one high-quality sample
is nearest to it (no share threshold), so ``modes_captured`` above is the stricter count. High
quality and the reverse KL are defined as above (the paper's code measures the distance to a
centre in std units, ||x - mu|| / std, as here); the paper's reverse KL is against uniform
weights, which all of ganflow's 2-D datasets have. Distances in std units make all three
invariant to scaling the data: a ring of radius 2 and std 0.02 scores as one of radius 1 and
std 0.01.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ganflow.mixture import Mixture, kde_jsd

MODE_SHARE = 0.01
HQ_STDS = 3.0
PACGAN_SAMPLES = 2_500


def _mode_counts(x: np.ndarray, mixture: Mixture) -> tuple[np.ndarray, np.ndarray]:
    """Each point's high-quality flag (within ``HQ_STDS`` std of its nearest centre) and the
    number of high-quality points nearest to each component."""
    scaled = np.sqrt(((x[:, None, :] - mixture.means[None]) ** 2).sum(-1)) / mixture.stds
    nearest = scaled.argmin(axis=1)
    within = scaled[np.arange(len(x)), nearest] <= HQ_STDS
    return within, np.bincount(nearest[within], minlength=mixture.n_components)


def _reverse_kl(counts: np.ndarray, weights: np.ndarray) -> float:
    if not counts.sum():
        return math.nan
    q = counts / counts.sum()
    hit = q > 0
    return float(np.sum(q[hit] * np.log(q[hit] / weights[hit])))


def toy_metrics(samples, mixture: Mixture, share: float = MODE_SHARE) -> dict[str, float]:
    """The toy metrics of ``samples`` (n, d) against ``mixture``; ``jsd`` only in 1-D."""
    x = np.asarray(samples, dtype=np.float64).reshape(len(samples), mixture.dim)
    n = len(x)
    within, counts = _mode_counts(x, mixture)
    metrics = {
        "modes_captured": int((counts >= share * n).sum()),
        "hq_fraction": float(within.mean()),
        "reverse_kl": _reverse_kl(counts, mixture.weights),
    }
    if mixture.dim == 1:
        metrics["jsd"] = kde_jsd(mixture, x[:, 0])
    return metrics


def pacgan_metrics(samples, mixture: Mixture, n: int = PACGAN_SAMPLES) -> dict[str, float]:
    """PacGAN's metrics of the first ``n`` of ``samples``: ``pacgan_modes`` (modes with at
    least one high-quality sample), ``pacgan_hq`` (the share of high-quality samples) and
    ``pacgan_reverse_kl`` (NaN when no sample is of high quality)."""
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < n:
        raise ValueError(f"PacGAN's metrics are of {n:,} samples, got {len(x):,}")
    within, counts = _mode_counts(x[:n].reshape(n, mixture.dim), mixture)
    return {"pacgan_modes": int((counts > 0).sum()), "pacgan_hq": float(within.mean()),
            "pacgan_reverse_kl": _reverse_kl(counts, mixture.weights)}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_points(samples, path, title: str = "", real=None, density: Mixture | None = None) -> Path:
    """A PNG of generated points: over real ones (2-D scatter of the first two coordinates), or
    as a histogram over the data's density (1-D; over the real points' histogram without one)."""
    plt = _figure()
    x = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    fig, ax = plt.subplots(figsize=(5, 5) if x.shape[1] > 1 else (6, 3.5), dpi=100)
    if real is None and density is not None:
        real = density.sample(len(x), seed=1)
    real = None if real is None else np.asarray(real, dtype=np.float64).reshape(len(real), -1)
    if x.shape[1] == 1:
        ax.hist(x[:, 0], bins=120, density=True, color="tab:orange", alpha=0.6, label="generated")
        if density is not None:
            lo, hi = density.grid().min(), density.grid().max()
            grid = np.linspace(min(lo, x.min()), max(hi, x.max()), 800)
            ax.plot(grid, density.prob(grid), color="tab:blue", label="P_data")
        elif real is not None:
            ax.hist(real[:, 0], bins=120, density=True, histtype="step", color="tab:blue",
                    label="real")
        ax.set_xlabel("x")
        ax.set_ylabel("density")
    else:
        if real is not None:
            ax.scatter(real[:, 0], real[:, 1], s=2, color="tab:blue", alpha=0.5, label="real")
        ax.scatter(x[:, 0], x[:, 1], s=2, color="tab:orange", alpha=0.5, label="generated")
        ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8, markerscale=4)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def format_metrics(metrics: dict[str, float]) -> str:
    """``modes 8, hq 0.93, reverse KL 0.004``: a title line for plots."""
    parts = []
    if "modes_captured" in metrics:
        parts.append(f"modes {metrics['modes_captured']:.0f}")
    if "hq_fraction" in metrics:
        parts.append(f"hq {metrics['hq_fraction']:.3f}")
    if "reverse_kl" in metrics:
        parts.append(f"reverse KL {metrics['reverse_kl']:.3f}")
    if "jsd" in metrics:
        parts.append(f"JSD {metrics['jsd']:.4f}")
    return ", ".join(parts)

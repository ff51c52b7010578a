"""Evaluation figures as PNG files (matplotlib's Agg backend, no display needed).

- :func:`plot_rmse_vs_lead`: a metric per lead for the model and every baseline, named in
  words in the legend;
- :func:`plot_sample_maps`: for one sample, rows of leads and columns last input, truth,
  forecast and error (forecast − truth), with lat/lon axes on geographic grids; the title
  names the variable, the init time and the patch (its row and column ranges), the colour
  bars the quantity and its units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from stpipe.learn.evaluate import SampleMaps
from stpipe.learn.scores import (
    MODEL,
    forecaster_label,
    lead_hours,
    metric_attrs,
    metric_label,
    model_label,
    per_lead,
)

DPI = 100
MAX_MAP_ROWS = 4
STYLES = {
    MODEL: {"color": "black", "marker": "o", "linewidth": 2.0},
    "persistence": {"color": "tab:blue", "marker": "s", "linestyle": "--"},
    "climatology": {"color": "tab:green", "marker": "^", "linestyle": ":"},
    "persistence_clim_change": {"color": "tab:orange", "marker": "D", "linestyle": "-."},
    "advection": {"color": "tab:purple", "marker": "v", "linestyle": (0, (5, 1))},
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_rmse_vs_lead(
    evaluation: xr.Dataset,
    path: str | Path,
    *,
    metric: str = "rmse",
    title: str = "",
    role: str = MODEL,
    model_version: str | None = None,
    size: tuple[float, float] = (6.4, 4.0),
) -> Path:
    """Line plot of ``metric`` (pooled over variables) of each forecaster of ``evaluation``
    (:mod:`stpipe.learn.scores`) against lead time (h). The model is named ``role`` and
    version in the legend (e.g. "champion v3"; the version defaults to the evaluation's).

    The image is ``size`` inches at 100 dpi (640 × 400 pixels by default).
    """
    plt = _pyplot()
    table = per_lead(evaluation, metric)
    attrs = metric_attrs(evaluation, metric)
    hours = lead_hours(evaluation)
    model = model_label(evaluation, role=role, version=model_version)
    fig, ax = plt.subplots(figsize=size, dpi=DPI)
    try:
        for name, values in table.items():
            label = forecaster_label(name, model=model)
            ax.plot(hours, values, label=label, **STYLES.get(name, {}))
        ax.set_xlabel("lead time (h)")
        ax.set_ylabel(metric_label(evaluation, metric))
        ax.set_xticks(hours)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        variables = ", ".join(str(v) for v in evaluation["variable"].values)
        split = evaluation.attrs["split"]
        ax.set_title(title or f"{attrs['long_name']} on the {split} split, {variables}")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_sample_maps(
    sample: SampleMaps,
    path: str | Path,
    *,
    cell_inches: float = 2.5,
) -> Path:
    """Map panel of one sample: rows = leads (at most 4, spread over the leads), columns =
    last input (at the init time), truth, forecast, error; the first three share the colour
    bar beside the forecast, labelled with the variable and its units, the error has its
    own. The image is 4·``cell_inches`` wide and ``cell_inches`` per row high, at 100 dpi."""
    plt = _pyplot()
    n_leads = len(sample.lead_hours)
    picks = np.unique(np.linspace(0, n_leads - 1, min(n_leads, MAX_MAP_ROWS)).round().astype(int))
    fig, axes = plt.subplots(
        len(picks), 4, figsize=(4 * cell_inches, len(picks) * cell_inches), dpi=DPI, squeeze=False
    )
    try:
        finite = np.concatenate(
            [sample.last_input.ravel(), sample.truth[picks].ravel(), sample.forecast[picks].ravel()]
        )
        finite = finite[np.isfinite(finite)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        error = sample.forecast - sample.truth
        emax = float(np.nanmax(np.abs(error[picks]))) if np.isfinite(error[picks]).any() else 1.0
        extent = _extent(sample)
        units = f" ({sample.units})" if sample.units else ""
        bar_labels = {2: f"{sample.variable}{units}", 3: f"forecast − truth{units}"}
        for row, lead in enumerate(picks):
            panels = [
                (sample.last_input, "last input (init time)", "viridis", vmin, vmax),
                (sample.truth[lead], "truth", "viridis", vmin, vmax),
                (sample.forecast[lead], "forecast", "viridis", vmin, vmax),
                (error[lead], "forecast − truth", "RdBu_r", -emax, emax),
            ]
            for col, (field, label, cmap, lo, hi) in enumerate(panels):
                ax = axes[row, col]
                image = ax.imshow(
                    field,
                    origin="lower",
                    cmap=cmap,
                    vmin=lo,
                    vmax=hi,
                    extent=extent,
                    aspect="auto",
                    interpolation="nearest",
                )
                ax.set_title(
                    label if col == 0 else f"{label}, +{sample.lead_hours[lead]:g} h", fontsize=8
                )
                ax.tick_params(labelsize=6)
                if col in bar_labels:
                    bar = fig.colorbar(image, ax=ax, shrink=0.8)
                    bar.set_label(bar_labels[col], fontsize=7)
                    bar.ax.tick_params(labelsize=6)
                if row == len(picks) - 1:
                    ax.set_xlabel(sample.col_dim, fontsize=7)
                if col == 0:
                    ax.set_ylabel(sample.row_dim, fontsize=7)
        fig.suptitle(sample_title(sample), fontsize=9)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def sample_title(sample: SampleMaps) -> str:
    """What a map panel shows: variable, units, init time and the patch's coordinate ranges
    (cells inside the grid), e.g. ``t2m (K), init 2024-01-04T11:00, patch lat 50 to 51.75,
    lon -2 to -0.5``."""
    units = f" ({sample.units})" if sample.units else ""
    ranges = ", ".join(
        f"{name} {np.nanmin(values):.6g} to {np.nanmax(values):.6g}"
        for name, values in ((sample.row_dim, sample.rows), (sample.col_dim, sample.cols))
        if np.isfinite(values).any()
    )
    patch = f", patch {ranges}" if ranges else ""
    return f"{sample.variable}{units}, init {sample.init_time}{patch}"


def _extent(sample: SampleMaps) -> tuple[float, float, float, float] | None:
    """imshow extent from the coordinates of the patch's cells (extrapolated past the grid)."""
    edges = []
    for coords in (sample.cols, sample.rows):
        idx = np.flatnonzero(np.isfinite(coords))
        if len(idx) < 2:
            return None
        slope, offset = np.polyfit(idx, coords[idx], 1)
        n = len(coords)
        edges += [offset - 0.5 * slope, offset + (n - 0.5) * slope]
    return tuple(edges)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path

"""What the references a calibration can fall back to score on the test days, untrained.

    python benchmarks/bench_references.py [--seeds N]

The ``regional`` and ``regime`` cases of ``bench_quality.py`` (a month of hourly t2m on
24×32, seeds 1..N, its 5 validation and 7 test days at the end or a week earlier; ``regime``
cools the air and turns the flow from the test days on) without any network: the hour-of-day
climatology and the fitted blend are stpipe's own
(:class:`stpipe.models.climatology.Climatology`, fitted on the train days), and each
reference of :data:`stpipe.learn.train.REFERENCES`, and the blend residual models start from
(``auto``: damped about the recent level m, the mean anomaly over the input steps and the
patch, as :mod:`stpipe.models.scnn` does where the patch is the whole grid, as in these
cases; for comparison, the same with the level of 8×8 patches, a twelfth of the grid, and
``auto about C``: damped about the climatology, m = 0, as the model does otherwise), is
scored on the test days' sample windows as the loaders cut them (``auto``'s weight of p
stays on p: the fitted blend has no A); so is advection damped by a factor φ per lead,
fitted by least squares on the train days, toward the climatology (C + φ·(adv − C)) or
toward the climatology plus the recent level (C + m + φ·(adv − C − m)): what a reference
that leans on a few weeks' climatology, fitted where that climatology is in-sample, can do.
It answers what no choice of reference, however made, can do: per reference, the per-lead
margin 1 − RMSE / RMSE of the best baseline (persistence, climatology, persistence +
climatological change, advection), its worst, and how many (case, seed, split, lead) fall
below −2 %. The row ``calibration's reference`` is the reference the calibration leans on
(:func:`stpipe.learn.train.calibration.choose_reference`, rule 1: of those a climatology of
a few weeks allows, the least wrong on the train days): what a trained model's calibration
falls back to at s = 0, so its cases are the floor of what calibration alone can reach. Last
line::

    fewest_cases=N reference=… worst_margin=… calibration_floor_cases=M

(the reference with the fewest cases below −2 %; M those of the calibration's reference).
Seconds on 2 cores.
"""

from __future__ import annotations

import argparse
from datetime import datetime

import numpy as np
import pandas as pd
import torch
import xarray as xr
from bench_quality import (
    FOLD,
    REGIME,
    REGIONAL_DAYS,
    REGIONAL_START,
    SPLIT_POSITIONS,
    WORSE,
    split_dates,
)

from stpipe.io.sources.synthetic import Regime, weather_fields, weather_grid
from stpipe.learn.train import REFERENCES
from stpipe.learn.train.calibration import choose_reference, reference_names
from stpipe.models.advection import advected_persistence
from stpipe.models.climatology import Climatology, time_slots
from stpipe.models.settings import BASELINES

INPUT_STEPS, LEADS, GRID = 12, (1, 3, 6, 12), (24, 32)
SMALL_PATCH = (8, 8)  # a patch of a twelfth of the grid: its mean anomaly is local weather
CHOICE = "calibration's reference"
# advection damped toward the climatology plus this share of the recent level m
DAMPED = {"advection damped toward C": 0.0, "advection damped toward C + m": 1.0}


def case_fields(seed: int, split: dict[str, str], regime: bool) -> xr.DataArray:
    """Hourly t2m (K) of the regional feed, dims (time, lat, lon)."""
    test_start = datetime.fromisoformat(split["test_start"])
    times = pd.date_range(REGIONAL_START, periods=REGIONAL_DAYS * 24, freq="h").as_unit("ns")
    hours = ((times - pd.Timestamp("1900-01-01")) // pd.Timedelta(hours=1)).to_numpy()
    shift = Regime(start=test_start, **REGIME) if regime else None
    t2m = weather_fields(hours, seed=seed, grid=GRID, regime=shift)["t2m"]
    lat, lon = weather_grid(GRID)
    return xr.DataArray(
        t2m, dims=("time", "lat", "lon"), coords={"time": times, "lat": lat, "lon": lon}
    )


def recent_level(anomaly: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """The mean of ``anomaly`` [T, H, W] over the last ``INPUT_STEPS`` steps (to each step,
    included) and over each ``tile`` of the grid, broadcast back to its cells: [T, H, W]."""
    (n, height, width), (th, tw) = anomaly.shape, tile
    means = anomaly.reshape(n, height // th, th, width // tw, tw).mean((2, 4))
    cumulative = np.concatenate([np.zeros_like(means[:1]), np.cumsum(means, axis=0)])
    first = np.maximum(np.arange(1, n + 1) - INPUT_STEPS, 0)
    steps = np.arange(1, n + 1) - first
    recent = (cumulative[1:] - cumulative[first]) / steps[:, None, None]
    return recent.repeat(th, axis=1).repeat(tw, axis=2)


def advected(values: np.ndarray, c: np.ndarray, inits: np.ndarray) -> np.ndarray:
    """A, the advected persistence of each init time (its input steps' motion), as the
    models compute it: [N, L, H, W]."""
    window = np.arange(-INPUT_STEPS + 1, 1)
    x = torch.from_numpy(values[inits[:, None] + window][:, :, None]).float()
    clim = torch.from_numpy(c[inits[:, None] + window][:, :, None]).float()
    return advected_persistence(x, x[:, -1:], clim, LEADS)[:, :, 0].double().numpy()


def margins(x: xr.DataArray, split: dict[str, str]) -> dict[str, list[float]]:
    """Per reference (and for the calibration's choice among them), the margin over the best
    baseline at each lead on the test days."""
    times = x["time"].values
    val_start, test_start = (np.datetime64(split[k]) for k in ("val_start", "test_start"))
    test_end = np.datetime64(split.get("test_end", str(times[-1] + np.timedelta64(1, "h"))))
    train = x.sel(time=slice(None, val_start - np.timedelta64(1, "h")))
    clim = Climatology.fit(
        train.to_dataset(name="t2m"), variables=["t2m"], period="day", step_s=3600
    )
    # the blend's weights are fitted about the train mean (the references' sum to 1)
    mean = float(train.mean())
    c = clim.table[time_slots(times.astype("int64"), period="day", step_s=3600), 0] - mean
    values = x.values - mean
    levels = {tile: recent_level(values - c, tile) for tile in (GRID, SMALL_PATCH)}
    val, test, end = (int(np.searchsorted(times, t)) for t in (val_start, test_start, test_end))
    inits = {  # the sample windows of each split, as the loaders cut them
        "train": np.arange(INPUT_STEPS - 1, val - max(LEADS)),
        "test": np.arange(test + INPUT_STEPS - 1, end - max(LEADS)),
    }
    moved = {split: advected(values, c, i) for split, i in inits.items()}
    blends = {  # damped about the level m of patches of a size, or about C (m = 0)
        "auto": (GRID, 1.0),
        f"auto, level of {SMALL_PATCH[0]}×{SMALL_PATCH[1]} patches": (SMALL_PATCH, 1.0),
        "auto about C": (GRID, 0.0),
    }
    damped_levels = {  # the level each damped advection keeps, per split's windows
        name: {s: kept * levels[GRID][i] for s, i in inits.items()} for name, kept in DAMPED.items()
    }
    out: dict[str, list[float]] = {name: [] for name in [*REFERENCES, *blends, *DAMPED, CHOICE]}
    test = inits["test"]
    for k, lead in enumerate(LEADS):
        # p, C(t), C(t0), A and the truth of each split's windows
        terms = {
            s: (np.stack([values[i], c[i + lead], c[i], moved[s][:, k]]), values[i + lead])
            for s, i in inits.items()
        }
        mse = {s: reference_mse(*split_terms) for s, split_terms in terms.items()}
        rmse = {name: float(np.sqrt(v)) for name, v in mse["test"].items()}
        w_p, w_c, w_0 = clim.blend("t2m", lead)
        test_terms, truth = terms["test"]
        for name, (tile, kept) in blends.items():
            forecast = np.tensordot((w_p, w_c, w_0, 0.0), test_terms, axes=1)
            forecast += kept * (1 - w_p) * levels[tile][test]
            rmse[name] = float(np.sqrt(np.mean((forecast - truth) ** 2)))
        for name, level in damped_levels.items():
            rmse[name] = damped_rmse(terms, level)
        rmse[CHOICE] = rmse[calibration_choice(mse["train"])]
        best = min(rmse[name] for name in BASELINES)
        for name in out:
            out[name].append(1 - rmse[name] / best)
    return out


def damped_rmse(
    terms: dict[str, tuple[np.ndarray, np.ndarray]], level: dict[str, np.ndarray]
) -> float:
    """RMSE on the test days of advection damped toward C(t) + ``level`` per split (each
    split's ``terms``: [4, N, H, W] and the truth), by the factor that fits the train days."""
    about = {s: t[1] + level[s] for s, (t, _) in terms.items()}
    anomaly = {
        s: np.tensordot(REFERENCES["advection"], t, axes=1) - about[s]
        for s, (t, _) in terms.items()
    }
    phi = damping(anomaly["train"], terms["train"][1] - about["train"])
    forecast = about["test"] + phi * anomaly["test"]
    return float(np.sqrt(np.mean((forecast - terms["test"][1]) ** 2)))


def damping(anomaly: np.ndarray, truth: np.ndarray) -> float:
    """The least-squares φ of ``truth`` ≈ φ·``anomaly`` (both anomalies about the same
    level)."""
    return float((anomaly * truth).sum() / (anomaly * anomaly).sum())


def reference_mse(terms: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Each reference's mean squared error, from the ``terms`` [4, N, H, W] of N windows."""
    return {
        name: float(np.mean((np.tensordot(w, terms, axes=1) - truth) ** 2))
        for name, w in REFERENCES.items()
    }


def calibration_choice(train: dict[str, float]) -> str:
    """The reference the calibration leans on, from the references' mean squared errors on
    the train days (its rule 1, with a climatology of a few weeks)."""
    names = reference_names("day")
    errors = torch.tensor([[[train[n]]] for n in names], dtype=torch.float64)
    return names[int(choose_reference(errors))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N (default 5)")
    seeds = range(1, parser.parse_args().seeds + 1)
    table: dict[str, list[float]] = {}
    print("margin = 1 − RMSE / RMSE of the best baseline, at leads", LEADS, "h")
    for case in ("regional", "regime"):
        for seed in seeds:
            for position, before_end in SPLIT_POSITIONS.items():
                split = split_dates(
                    REGIONAL_START, days=REGIONAL_DAYS, days_before_end=before_end, **FOLD
                )
                scores = margins(case_fields(seed, split, case == "regime"), split)
                cells = "  ".join(
                    f"{name} " + "/".join(f"{100 * m:+.0f}" for m in ms)
                    for name, ms in scores.items()
                )
                print(f"{case:<8} seed={seed} split={position:<7} {cells}", flush=True)
                for name, ms in scores.items():
                    table.setdefault(name, []).extend(ms)
    cases = {name: sum(m < WORSE for m in ms) for name, ms in table.items()}
    for name, ms in table.items():
        print(f"{name:<45} worst {100 * min(ms):+7.1f} %  cases below −2 %: {cases[name]}")
    candidates = [name for name in cases if name != CHOICE]
    best = min(candidates, key=lambda name: (cases[name], -min(table[name])))
    print(
        f"fewest_cases={cases[best]} reference={best} worst_margin={min(table[best]):.4f} "
        f"calibration_floor_cases={cases[CHOICE]}"
    )


if __name__ == "__main__":
    main()

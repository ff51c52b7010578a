"""GRIB reader: GRIB2 files written with ecCodes, read back through cfgrib.

Tolerance. Simple packing stores ``value = R + X * 2**E / 10**D`` with integer ``X`` of
``bitsPerValue`` bits, rounded to the nearest step, so a value comes back within half a step,
``0.5 * 2**E / 10**D`` (E, D read from each message); cfgrib then hands out float32, which
adds at most ``|value| * 2**-24``. With 16 bits and the fields below (ranges of ~80 K and
~8000 Pa) that is ~6e-4 K and ~0.06 Pa.
"""

from __future__ import annotations

import re
from pathlib import Path

import eccodes
import numpy as np
import pandas as pd
import pytest

from stpipe.core.errors import SourceError
from stpipe.io.sources import read_source_file
from stpipe.testing import assert_canonical

TIMES = pd.date_range("2024-01-01", periods=4, freq="6h")
LAT = np.array([60.0, 57.5, 55.0, 52.5, 50.0])  # north to south, as ERA5 scans
LON = np.array([350.0, 355.0, 0.0, 5.0, 10.0])  # a UK box across Greenwich, 0..360
OFFSETS = {"2t": 280.0, "10u": 0.0, "10v": 0.0, "msl": 101325.0}
SPREADS = {"2t": 10.0, "10u": 5.0, "10v": 5.0, "msl": 1000.0}


def grib_fields(short_names, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        s: OFFSETS[s] + SPREADS[s] * rng.standard_normal((n, LAT.size, LON.size))
        for s in short_names
    }


def packing_tolerance(path: Path, short_name: str) -> float:
    """Largest half packing step over the messages of ``short_name``, plus float32 rounding."""
    steps = []
    with path.open("rb") as f:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            try:
                if eccodes.codes_get(h, "shortName") == short_name:
                    e = eccodes.codes_get(h, "binaryScaleFactor")
                    d = eccodes.codes_get(h, "decimalScaleFactor")
                    steps.append(2.0**e / 10.0**d)
            finally:
                eccodes.codes_release(h)
    return 0.5 * max(steps) + (abs(OFFSETS[short_name]) + 6 * SPREADS[short_name]) * 2.0**-24


def in_canonical_order(values: np.ndarray) -> np.ndarray:
    """File order (lat 60→50, lon 350..10) → canonical (lat 50→60, lon −10..10)."""
    return values[:, ::-1, :]


def error(path: Path, problem: str) -> str:
    return re.escape(str(path)) + ": " + problem


def test_era5_grib_round_trips_values_coords_and_times(tmp_path, grib_writer, source):
    values = grib_fields(["2t", "10u", "10v", "msl"], TIMES.size)
    path = grib_writer(tmp_path / "era5.grib", times=TIMES, lat=LAT, lon=LON, values=values)

    ds = read_source_file(path, source("grib", ["t2m", "u10", "v10", "msl"])).to_dataset()

    assert list(ds.data_vars) == ["t2m", "u10", "v10", "msl"]
    for short_name, name in [("2t", "t2m"), ("10u", "u10"), ("10v", "v10"), ("msl", "msl")]:
        np.testing.assert_allclose(
            ds[name].values,
            in_canonical_order(values[short_name]),
            rtol=0,
            atol=packing_tolerance(path, short_name),
            err_msg=name,
        )
    np.testing.assert_array_equal(ds["lat"].values, [50.0, 52.5, 55.0, 57.5, 60.0])
    np.testing.assert_array_equal(ds["lon"].values, [-10.0, -5.0, 0.0, 5.0, 10.0])
    np.testing.assert_array_equal(ds["time"].values, TIMES.values)
    assert ds.attrs["time_step_s"] == 6 * 3600
    assert ds["t2m"].attrs["units"] == "K" and ds["t2m"].attrs["GRIB_shortName"] == "2t"
    assert ds["msl"].attrs["units"] == "Pa"
    assert_canonical(ds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["era5.grib"], "no .idx files"


def test_rename_applies_after_era5_names_and_0_360_convention(tmp_path, grib_writer, source):
    values = grib_fields(["2t"], 2)
    path = grib_writer(tmp_path / "t.grib", times=TIMES[:2], lat=LAT, lon=LON, values=values)

    ds = read_source_file(
        path, source("grib", ["temperature"], rename={"t2m": "temperature"}, longitude="0..360")
    ).to_dataset()

    np.testing.assert_array_equal(ds["lon"].values, [0.0, 5.0, 10.0, 350.0, 355.0])
    expected = in_canonical_order(values["2t"])[:, :, [2, 3, 4, 0, 1]]
    np.testing.assert_allclose(
        ds["temperature"].values, expected, rtol=0, atol=packing_tolerance(path, "2t")
    )


def test_bitmap_masked_points_are_nan(tmp_path, grib_writer, source):
    values = grib_fields(["2t"], 2)
    values["2t"][0, 1, 3] = values["2t"][1, 4, 0] = np.nan
    path = grib_writer(tmp_path / "m.grib", times=TIMES[:2], lat=LAT, lon=LON, values=values)

    ds = read_source_file(path, source("grib", ["t2m"])).to_dataset()

    expected = in_canonical_order(values["2t"])
    np.testing.assert_array_equal(np.isnan(ds["t2m"].values), np.isnan(expected))
    np.testing.assert_allclose(
        ds["t2m"].values, expected, rtol=0, atol=packing_tolerance(path, "2t")
    )


def test_forecast_steps_are_laid_out_by_valid_time(tmp_path, grib_writer, source):
    times = pd.DatetimeIndex(["2024-01-01T06", "2024-01-01T18"])
    values = grib_fields(["2t"], times.size * 4)
    path = grib_writer(
        tmp_path / "fc.grib", times=times, lat=LAT, lon=LON, values=values, steps=[3, 6, 9, 12]
    )

    ds = read_source_file(path, source("grib", ["t2m"])).to_dataset()

    expected_times = pd.date_range("2024-01-01T09", periods=8, freq="3h")
    np.testing.assert_array_equal(ds["time"].values, expected_times.values)
    np.testing.assert_allclose(
        ds["t2m"].values,
        in_canonical_order(values["2t"]),
        rtol=0,
        atol=packing_tolerance(path, "2t"),
    )


def test_several_levels_of_one_variable_are_an_error(tmp_path, grib_writer, source):
    path = grib_writer(
        tmp_path / "pl.grib",
        times=TIMES[:2],
        lat=LAT,
        lon=LON,
        values={"t": grib_fields(["2t"], 4)["2t"]},
        levels=[500, 850],
    )

    with pytest.raises(
        SourceError,
        match=error(
            path,
            r"variable 't' has dims .*isobaricInhPa.*"
            r"one level and one ensemble member",
        ),
    ):
        read_source_file(path, source("grib", ["t"])).to_dataset()


def test_missing_variable_lists_what_the_file_has(tmp_path, grib_writer, source):
    path = grib_writer(
        tmp_path / "t.grib", times=TIMES[:2], lat=LAT, lon=LON, values=grib_fields(["2t", "10u"], 2)
    )

    with pytest.raises(
        SourceError,
        match=error(
            path,
            r"variable\(s\) \['msl'\] not found; "
            r"the file has \['t2m', 'u10'\]",
        ),
    ):
        read_source_file(path, source("grib", ["t2m", "msl"])).to_dataset()


def test_truncated_and_non_grib_files_are_errors(tmp_path, grib_writer, source):
    path = grib_writer(
        tmp_path / "cut.grib", times=TIMES, lat=LAT, lon=LON, values=grib_fields(["2t"], TIMES.size)
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 10])
    junk = tmp_path / "junk.grib"
    junk.write_bytes(b"CDF\x01 this is not GRIB" * 10)

    for bad in (path, junk):
        with pytest.raises(SourceError, match=error(bad, "not a readable GRIB file")):
            read_source_file(bad, source("grib", ["t2m"])).to_dataset()

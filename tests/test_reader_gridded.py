"""Gridded product reader: small satellite-like and model-like grids built in tmp_path."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from twin import flags
from twin.errors import InputError
from twin.geodesy import haversine_km
from twin.readers import gridded
from twin.units import DEFAULT_ERROR_SD

SITE = (43.50, 7.30)


def _l3(n_time=3, uncertainty=True, seed=0):
    """CMEMS-like L3 chlorophyll on a 0.01 degree grid around SITE."""
    rng = np.random.default_rng(seed)
    lat = np.round(np.arange(43.40, 43.601, 0.01), 4)
    lon = np.round(np.arange(7.20, 7.401, 0.01), 4)
    time = np.datetime64("2022-05-01", "ns") + np.arange(n_time) * np.timedelta64(1, "D")
    chl = 10 ** rng.normal(np.log10(0.4), 0.1, (n_time, lat.size, lon.size))
    ds = xr.Dataset(
        {"CHL": (("time", "lat", "lon"), chl, {"standard_name": "mass_concentration_of_chlorophyll_a_in_sea_water",
                                               "units": "milligram m-3"})},
        coords={"time": ("time", time, {"standard_name": "time"}),
                "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"})})
    if uncertainty:
        ds["CHL_uncertainty"] = (("time", "lat", "lon"), np.full(chl.shape, 35.0), {"units": "%"})
    return ds


def _write(tmp_path, ds, name="l3.nc"):
    path = tmp_path / name
    ds.to_netcdf(path, encoding={v: {"_FillValue": -999.0} for v in ds.data_vars})
    return path


def _pixels_in_radius(ds, lat, lon, radius):
    la, lo = np.meshgrid(ds["lat"].values, ds["lon"].values, indexing="ij")
    return haversine_km(lat, lon, la, lo) <= radius


def test_haversine_reference():
    # one degree of latitude = pi R / 180 = 111.195 km; Paris-London 343.5 km (published great-circle)
    assert haversine_km(0, 0, 1, 0) == pytest.approx(111.19508, rel=1e-6)
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=0.5)


def test_median_in_log_space_and_product_uncertainty(tmp_path):
    ds = _l3()
    path = _write(tmp_path, ds)
    out = gridded.read(path, sites={"pointB": SITE}, radius_km=3.0)
    mask = _pixels_in_radius(ds, *SITE, 3.0)
    pix = ds["CHL"].values[:, mask]
    expected = 10 ** np.median(np.log10(pix), axis=1)
    np.testing.assert_allclose(out["value"].values, expected, rtol=1e-12)
    np.testing.assert_allclose(out["error_sd"].values, expected * 0.35, rtol=1e-12)  # 35 % relative
    assert out["native_qc"].values.tolist() == [f"n={mask.sum()}/{mask.sum()}"] * 3
    assert (out["qc"].values == flags.NOT_EVALUATED).all()
    assert set(out["variable"].values) == {"chlorophyll"} and set(out["layer"].values) == {"surface"}
    assert out["latitude"].values[0] == SITE[0] and (out["line"].values == -1).all()
    assert gridded.sniff(path)


def test_clouds_and_no_valid_pixel(tmp_path):
    ds = _l3()
    mask = _pixels_in_radius(ds, *SITE, 3.0)
    chl = ds["CHL"].values
    chl[1][mask] = np.nan  # fully cloudy over the site on day 2
    idx = np.argwhere(mask)
    chl[2][tuple(idx[:3].T)] = np.nan  # three cloudy pixels on day 3
    out = gridded.read(_write(tmp_path, ds), sites={"pointB": SITE}, radius_km=3.0)
    n = int(mask.sum())
    assert out["native_qc"].values.tolist() == [f"n={n}/{n}", f"n=0/{n}", f"n={n - 3}/{n}"]
    assert out["qc"].values.tolist() == [flags.NOT_EVALUATED, flags.MISSING, flags.NOT_EVALUATED]
    assert np.isnan(out["value"].values[1]) and np.isfinite(out["value"].values[2])


def test_spread_with_floor_when_no_uncertainty(tmp_path):
    ds = _l3(uncertainty=False)
    ds["CHL"].values[0] = 0.5  # uniform field: zero spread -> 10 % floor
    out = gridded.read(_write(tmp_path, ds), sites={"s": SITE}, radius_km=3.0)
    assert out["value"].values[0] == pytest.approx(0.5)
    assert out["error_sd"].values[0] == pytest.approx(0.05)
    mask = _pixels_in_radius(ds, *SITE, 3.0)
    logs = np.log10(ds["CHL"].values[1][mask])
    expected = 10 ** np.median(logs) * np.log(10) * np.std(logs, ddof=1)
    assert out["error_sd"].values[1] == pytest.approx(max(expected, 0.1 * 10 ** np.median(logs)))
    const = gridded.read(_write(tmp_path, ds, "b.nc"), sites={"s": SITE}, radius_km=3.0,
                         error_sd={"chlorophyll": 0.2})
    assert (const["error_sd"].values == 0.2).all()


def test_model_output_curvilinear_with_depth_and_absolute_error(tmp_path):
    y, x = np.mgrid[0:12, 0:10]
    lat = 43.4 + 0.02 * y + 0.001 * x
    lon = 7.2 + 0.02 * x
    time = np.datetime64("2022-01-01", "ns") + np.arange(2) * np.timedelta64(6, "h")
    temp_k = np.full((2, 3, 12, 10), 288.15)
    temp_k[:, 0] += np.arange(120).reshape(12, 10) * 0.001
    ds = xr.Dataset(
        {"thetao": (("time", "depth", "y", "x"), temp_k, {"units": "K"}),
         "thetao_stddev": (("time", "depth", "y", "x"), np.full(temp_k.shape, 0.4), {"units": "K"})},
        coords={"time": ("time", time), "depth": ("depth", [0.5, 5.0, 10.0]),
                "nav_lat": (("y", "x"), lat, {"standard_name": "latitude"}),
                "nav_lon": (("y", "x"), lon, {"standard_name": "longitude"})})
    path = _write(tmp_path, ds, "model.nc")
    with pytest.raises(InputError, match=r"field 'thetao': variable has extra dimension 'depth'"):
        gridded.read(path, sites={"s": (43.5, 7.3)}, radius_km=4.0)
    out = gridded.read(path, sites={"s": (43.5, 7.3), "t": (43.45, 7.25)}, radius_km=4.0, select={"depth": 0})
    mask = haversine_km(43.5, 7.3, lat, lon) <= 4.0
    expected = np.median(temp_k[0, 0][mask]) - 273.15
    s_rows = out.isel(obs=np.flatnonzero(out["site"].values == "s"))
    np.testing.assert_allclose(s_rows["value"].values, expected)
    # absolute error in K is a temperature difference: 0.4 degC, floored at the default 0.2
    np.testing.assert_allclose(s_rows["error_sd"].values, max(0.4, DEFAULT_ERROR_SD["temperature"]))
    assert set(out["site"].values) == {"s", "t"}


def test_site_outside_grid(tmp_path):
    with pytest.raises(InputError, match=r"l3.nc, field 'sites': site 'far'.*no grid cell within 5.0 km"):
        gridded.read(_write(tmp_path, _l3()), sites={"far": (10.0, 7.3)})


def test_unknown_unit_and_unrecognised_variable(tmp_path):
    ds = _l3()
    ds["CHL"].attrs["units"] = "parts per zillion"
    with pytest.raises(InputError, match=r"field 'CHL': unknown unit 'parts per zillion'"):
        gridded.read(_write(tmp_path, ds), sites={"s": SITE})
    other = _l3().rename({"CHL": "mystery"})
    del other["mystery"].attrs["standard_name"]
    other = other.drop_vars("CHL_uncertainty")
    path = _write(tmp_path, other, "m.nc")
    with pytest.raises(InputError, match="no recognised gridded variable"):
        gridded.read(path, sites={"s": SITE})
    out = gridded.read(path, sites={"s": SITE}, variables={"mystery": "chlorophyll"})
    assert out.sizes["obs"] == 3


def test_corrupted_and_empty(tmp_path):
    path = _write(tmp_path, _l3())
    broken = tmp_path / "broken.nc"
    broken.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"broken.nc: corrupted or unreadable NetCDF"):
        gridded.read(broken, sites={"s": SITE})
    empty = tmp_path / "empty.nc"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.nc: empty file"):
        gridded.read(empty, sites={"s": SITE})


def test_all_missing_and_sentinels(tmp_path):
    ds = _l3()
    ds["CHL"].values[:] = 9999.0 * 0 - 999.0  # only the fill value
    out = gridded.read(_write(tmp_path, ds), sites={"s": SITE}, radius_km=3.0)
    assert (out["qc"].values == flags.MISSING).all() and np.isnan(out["value"].values).all()
    ds2 = _l3()
    ds2["CHL"].values[:] = 99999.0  # undeclared sentinel
    out = gridded.read(_write(tmp_path, ds2, "s.nc"), sites={"s": SITE}, radius_km=3.0)
    assert (out["qc"].values == flags.MISSING).all()


def test_duplicated_and_non_monotonic_times(tmp_path):
    ds = _l3(n_time=3)
    t = ds["time"].values.copy()
    t[2] = t[0]
    ds = ds.assign_coords(time=("time", t))
    out = gridded.read(_write(tmp_path, ds), sites={"s": SITE}, radius_km=3.0)
    assert out.attrs["time_reversals"] == 1
    first = out.isel(obs=np.flatnonzero(out["time"].values == t[0]))
    assert first["qc"].values.tolist() == [flags.NOT_EVALUATED, flags.SUSPECT]


def test_option_errors(tmp_path):
    path = _write(tmp_path, _l3())
    with pytest.raises(ValueError, match="sites"):
        gridded.read(path, sites={})
    with pytest.raises(ValueError, match="radius_km"):
        gridded.read(path, sites={"s": SITE}, radius_km=0)


def test_registry_detects_gridded(tmp_path):
    from twin.readers import detect_format, read_observations
    path = _write(tmp_path, _l3())
    assert detect_format(path) == "gridded"
    out = read_observations(path, sites={"s": SITE}, radius_km=3.0)
    assert out.sizes["obs"] == 3

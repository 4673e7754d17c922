from pathlib import Path

import numpy as np
import pytest

from twin.forcing_builder import build_site_forcing
from twin.observations import make_observations


def _weekly_temperature(layers=("surface", "bottom"), years=3, gap=None):
    day0 = np.datetime64("2018-01-01", "ns")
    days = np.arange(0, 365 * years, 7)
    if gap is not None:
        days = days[(days < gap[0]) | (days >= gap[1])]
    rows = []
    for layer, offset in zip(layers, (0.0, -1.5)):
        for var, base, amp in (("temperature", 19.0 + offset, 6.0), ("salinity", 38.0, 0.2)):
            v = base + amp * np.cos(2 * np.pi * (days + 0.5 - 225) / 365.25)
            rows.append((days, layer, var, v))
    t = np.concatenate([day0 + (d * 86400 + 8 * 3600) * np.timedelta64(1, "s") for d, *_ in rows])
    return day0, make_observations(
        time=t, site="Point B", variable=np.concatenate([[v] * len(d) for d, _, v, _ in rows]),
        layer=np.concatenate([[l] * len(d) for d, l, _, _ in rows]),
        value=np.concatenate([x for *_, x in rows]), qc=np.ones(t.size, np.int8), native_qc="2", source="f")


def test_forcing_follows_observed_seasonal_cycle_and_fills_gaps():
    day0, table = _weekly_temperature(gap=(400, 520))
    forcing, report = build_site_forcing(table, "Point B", 43.68, ("surface", "bottom"), day0, 365 * 3)
    days = np.arange(365 * 3) + 0.5
    expected = 19.0 + 6.0 * np.cos(2 * np.pi * (days - 225) / 365.25)
    temp = np.asarray(forcing.temperature)
    # within 0.15 degC of the truth everywhere: weekly interpolation plus a 4-month gap from climatology
    np.testing.assert_allclose(temp[:, 0], expected, atol=0.15)
    np.testing.assert_allclose(temp[:, 1], expected - 1.5, atol=0.15)
    assert 0.08 < report.filled_fraction["temperature/surface"] < 0.2
    assert np.all(np.isfinite(np.asarray(forcing.par))) and np.asarray(forcing.par).max() > 300


def test_missing_layer_borrows_and_no_data_is_a_clear_error():
    day0, table = _weekly_temperature(layers=("surface",))
    _, report = build_site_forcing(table, "Point B", 43.68, ("surface", "bottom"), day0, 100)
    assert report.borrowed == {"temperature/bottom": "surface", "salinity/bottom": "surface"}
    with pytest.raises(ValueError, match="site 'Sola': not enough usable temperature observations"):
        build_site_forcing(table, "Sola", 42.5, ("surface",), day0, 100)


def test_site_river_gives_its_climatology_and_water_and_no_river_gives_zeros():
    from emulators.forcing import RIVER_WATER
    from twin.config import RiverConfig
    day0, table = _weekly_temperature(years=1)
    river = RiverConfig(mean_discharge_m3s=20.0, nitrate=90.0)
    forcing, _ = build_site_forcing(table, "Point B", 43.68, ("surface", "bottom"), day0, 365, river=river)
    discharge = np.asarray(forcing.river_discharge)
    # cosine of amplitude 0.6 around 20 m3 s-1, maximum on day 60 (zero-based, step mid-day)
    assert abs(discharge.mean() - 20.0) < 0.05 and abs(discharge.max() - 32.0) < 0.01
    assert abs(int(np.argmax(discharge)) - 60) <= 1
    np.testing.assert_array_equal(np.asarray(forcing.river_nitrate), 90.0)
    np.testing.assert_array_equal(np.asarray(forcing.river_silicate), RIVER_WATER["silicate"])
    # the config's defaults are the synthetic forcing's river water
    assert {k: getattr(RiverConfig(mean_discharge_m3s=1.0), k) for k in RIVER_WATER} == RIVER_WATER
    bare, _ = build_site_forcing(table, "Point B", 43.68, ("surface", "bottom"), day0, 365)
    assert not np.any(np.asarray(bare.river_discharge)) and not np.any(np.asarray(bare.river_nitrate))


def test_river_from_salinity_holds_the_observed_freshwater_fraction_on_the_mixing_line():
    """The discharge taken from the surface salinity gives the dilution d = k f / (1 - f) of the salt balance:
    at steady state against the offshore exchange k, a nutrient sits on the mixing line f C_river + (1 - f)
    C_offshore (to 1e-4: the forcing is float32 and f a small difference); water saltier than offshore gives no
    river."""
    from emulators.parameters import default_site
    from twin.config import RiverConfig
    day0, table = _weekly_temperature(years=1)   # surface salinity 38 +- 0.2 (maximum in August)
    river = RiverConfig(discharge_from_salinity=True, offshore_salinity=38.1, nitrate=40.0)
    k, volume = 0.3, 2.0e9
    site = default_site(2, 43.68)._replace(offshore_exchange_rate=np.float32(k), river_volume=np.float32(volume))
    forcing, _ = build_site_forcing(table, "Point B", 43.68, ("surface", "bottom"), day0, 365, river=river,
                                    model_site=site)
    salinity = np.asarray(forcing.salinity)[:, 0]
    dilution = np.asarray(forcing.river_discharge, np.float64) * 86400.0 / volume
    fresh = np.clip(1.0 - salinity / 38.1, 0.0, None)
    assert np.all(dilution[salinity >= 38.1] == 0.0) and np.all(dilution[salinity < 38.05] > 0.0)
    offshore = 0.3
    steady = (dilution * 40.0 + k * offshore) / (dilution + k)     # d (C_r - C) + k (C_off - C) = 0
    np.testing.assert_allclose(steady, fresh * 40.0 + (1.0 - fresh) * offshore, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(forcing.river_nitrate), 40.0)
    with pytest.raises(ValueError, match="offshore_salinity is not resolved"):
        build_site_forcing(table, "Point B", 43.68, ("surface", "bottom"), day0, 365,
                           river=RiverConfig(discharge_from_salinity=True))


def test_offshore_salinity_is_resolved_from_the_site_surface_salinity():
    from twin.config import parse_config
    from twin.hindcast import resolve_boundaries
    _, table = _weekly_temperature(years=2)
    site = {"name": "Point B", "latitude": 43.68, "longitude": 7.32,
            "river": {"discharge_from_salinity": True, "nitrate": 40.0}}
    config, report = resolve_boundaries(parse_config({"sites": [site]}), table, ("surface", "bottom"))
    surface = table["value"].values[(table["variable"].values == "salinity") & (table["layer"].values == "surface")]
    assert config.sites[0].river.offshore_salinity == round(float(np.quantile(surface, 0.9)), 3)
    assert report["Point B river offshore salinity"] == config.sites[0].river.offshore_salinity
    given = {**site, "river": {**site["river"], "offshore_salinity": 37.0}}
    config, _ = resolve_boundaries(parse_config({"sites": [given]}), table, ("surface", "bottom"))
    assert config.sites[0].river.offshore_salinity == 37.0
    bare = table.isel(obs=np.flatnonzero(table["variable"].values != "salinity"))
    with pytest.raises(ValueError, match=r"'Point B': river.discharge_from_salinity needs .* \(found 0\)"):
        resolve_boundaries(parse_config({"sites": [site]}), bare, ("surface", "bottom"))


def test_river_water_from_data_is_the_mixing_line_end_member():
    """Surface nutrients made on an exact mixing line (river 40, offshore 0.3) with samples off it at the
    withheld rows: the end member comes back to 1e-3 (it is stored rounded) and the withheld rows do not count."""
    from twin.config import parse_config
    from twin.hindcast import data_river_water, resolve_boundaries
    rng = np.random.default_rng(3)
    times = np.datetime64("2018-01-01T09", "ns") + np.arange(60) * np.timedelta64(7, "D")
    salinity = 38.0 - rng.uniform(0.0, 3.0, times.size)
    nitrate = 40.0 * (1 - salinity / 38.0) + 0.3 * (salinity / 38.0)
    nitrate[:5] += 10.0    # withheld below
    table = make_observations(time=np.concatenate([times, times]), site="Point B",
                              variable=["salinity"] * times.size + ["nitrate"] * times.size, layer="surface",
                              value=np.concatenate([salinity, nitrate]), qc=np.ones(2 * times.size, np.int8),
                              native_qc="2", source="f")
    withheld = np.zeros(2 * times.size, bool)
    withheld[times.size:times.size + 5] = True
    assert data_river_water(table, "Point B", 38.0, withheld) == {"nitrate": pytest.approx(40.0, abs=1e-3)}
    assert abs(data_river_water(table, "Point B", 38.0)["nitrate"] - 40.0) > 1.0   # with them it is off
    site = {"name": "Point B", "latitude": 43.68, "longitude": 7.32,
            "river": {"discharge_from_salinity": True, "offshore_salinity": 38.0, "nutrients_from_data": True}}
    config, report = resolve_boundaries(parse_config({"sites": [site]}), table, ("surface",), exclude=withheld)
    river = config.sites[0].river
    assert river.nitrate == pytest.approx(40.0, abs=1e-3) and not river.nutrients_from_data
    assert river.silicate == 120.0 and report["Point B river water"] == {"nitrate": river.nitrate}


def _with_meteorology(table, day0, num_days, par_daily, wind_daily, skip_hours=()):
    """``table`` plus hourly above-surface PAR following a clear day's light at 43.68 N, 7.32 E
    (``hourly_sun_height``) with day means ``par_daily``, and wind speed ``wind_daily``, without the hours in
    ``skip_hours`` (hours since day0)."""
    import xarray as xr

    from emulators.solar import hourly_sun_height
    sun = hourly_sun_height(43.68, 7.32, day0, num_days)
    shape = (sun / sun.mean(axis=1, keepdims=True)).reshape(-1)
    hours = np.setdiff1d(np.arange(num_days * 24), np.asarray(skip_hours, np.int64))
    t = np.datetime64(day0, "ns") + hours * np.timedelta64(3600, "s")
    met = make_observations(
        time=np.concatenate([t, t]), site="Point B",
        variable=np.array(["par"] * t.size + ["wind_speed"] * t.size, dtype=object), layer="air",
        value=np.concatenate([par_daily[hours // 24] * shape[hours], wind_daily[hours // 24]]),
        qc=np.ones(2 * t.size, np.int8), native_qc="1", source="met")
    return xr.concat([table, met], dim="obs")


def test_measured_par_and_wind_are_the_forcing_where_a_day_has_them():
    """A day's PAR from the hours that hold three quarters of a clear day's light, scaled by the sun's course
    (exact for light shaped like a clear day's: float32 forcing, relative 1e-5); wind from 18 hours or more."""
    from emulators.solar import SEA_SURFACE_ALBEDO
    day0, table = _weekly_temperature(years=1)
    bare, _ = build_site_forcing(table, "Point B", 43.68, ("surface", "bottom"), day0, 60, longitude=7.32)
    rng = np.random.default_rng(0)
    par_daily, wind_daily = rng.uniform(100, 600, 60), rng.uniform(1, 12, 60)
    # Day 10 loses its three brightest hours (UTC 11-13: too little of its light left, but 21 hours of wind),
    # day 11 two morning hours (kept), day 12 everything, day 13 its night hours (light kept: they hold none;
    # wind not: 10 hours).
    night = [13 * 24 + h for h in (*range(0, 7), *range(17, 24))]
    skip = [10 * 24 + 11, 10 * 24 + 12, 10 * 24 + 13, 11 * 24 + 8, 11 * 24 + 9, *range(12 * 24, 13 * 24), *night]
    table = _with_meteorology(table, day0, 60, par_daily, wind_daily, skip)
    forcing, report = build_site_forcing(table, "Point B", 43.68, ("surface", "bottom"), day0, 60,
                                         longitude=7.32, mode="causal")
    par, wind = np.asarray(forcing.par), np.asarray(forcing.wind_speed)
    measured = np.setdiff1d(np.arange(60), [10, 12])
    # Below the surface: the measured day mean times 1 - albedo, days 11 and 13 included.
    np.testing.assert_allclose(par[measured], par_daily[measured] * (1.0 - SEA_SURFACE_ALBEDO), rtol=1e-5)
    windy = np.setdiff1d(np.arange(60), [12, 13])
    np.testing.assert_allclose(wind[windy], wind_daily[windy], rtol=1e-5)
    # The other days fall back to the clear-sky climatology and the fixed wind, as with no mast.
    np.testing.assert_allclose(par[[10, 12]], np.asarray(bare.par)[[10, 12]])
    np.testing.assert_allclose(wind[[12, 13]], np.asarray(bare.wind_speed)[[12, 13]])
    assert report.filled_fraction["par/air"] == pytest.approx(2 / 60)
    assert report.filled_fraction["wind_speed/air"] == pytest.approx(2 / 60)
    assert "par/air" not in build_site_forcing(table.isel(obs=table["layer"].values != "air"), "Point B", 43.68,
                                               ("surface", "bottom"), day0, 60)[1].filled_fraction


SWMP_MET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "swmp-apalachicola" / "apaebmet.csv.gz"


@pytest.mark.skipif(not SWMP_MET.is_file(), reason=f"real SWMP data not present at {SWMP_MET}")
def test_a_real_weather_stations_daily_light_and_wind():
    """Apalachicola's weather station (NERRS SWMP, 15-minute data, 2012-2013), read by the real reader: the daily
    PAR means lie under the clear-sky PAR above the surface (the sky's transmissivity 0.75 in the model: a day's
    ratio at most 1.05) and are 0.66 of it at the median (clouds), wind's daily means in 0.5-15 m s-1. The
    station flags much of its night-time PAR: weighted by the sun's course, 91 % of its days give a PAR mean
    (40 % had the 22 of 24 hours a plain mean would need)."""
    from emulators.solar import SEA_SURFACE_ALBEDO, clear_sky_par
    from twin.forcing_builder import daily_meteorology
    from twin.readers import swmp
    table = swmp.read(SWMP_MET)
    day0, num_days = np.datetime64("2012-01-02"), 729
    par = daily_meteorology(table, "apaebmet", "par", day0, num_days, sun_at=(29.7694, -84.8815))
    wind = daily_meteorology(table, "apaebmet", "wind_speed", day0, num_days)
    days = day0 + np.arange(num_days)
    doy = (days - days.astype("datetime64[Y]")).astype(int) + 0.5
    ratio = par / (np.asarray(clear_sky_par(29.7694, doy)) / (1.0 - SEA_SURFACE_ALBEDO))
    ok = np.isfinite(ratio)
    assert ok.mean() > 0.85
    assert ratio[ok].max() < 1.05 and 0.55 < np.median(ratio[ok]) < 0.8 and ratio[ok].min() > 0.0
    assert np.isfinite(wind).mean() > 0.8
    assert 0.5 < np.nanmin(wind) and np.nanmax(wind) < 15.0

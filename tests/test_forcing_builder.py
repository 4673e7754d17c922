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

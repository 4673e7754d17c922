"""Tests of forcing construction: astronomy, clear-sky PAR, harmonic climatology, gap filling, synthetic
forcing and scenario changes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emulators import forcing as fo
from emulators import solar

# ---------------------------------------------------------------------------------------------------- astronomy


def test_solar_declination_at_solstices_and_equinoxes():
    # 21 June noon (day 171.5) and 21 December noon (day 354.5): +-23.44 deg (obliquity), Spencer 1971 within
    # 0.1 deg; equinoxes (20 March, 22 September): within 0.5 deg of zero (the date shifts by a few hours a year).
    np.testing.assert_allclose(float(solar.solar_declination(171.5)), 23.44, atol=0.1)
    np.testing.assert_allclose(float(solar.solar_declination(354.5)), -23.44, atol=0.1)
    np.testing.assert_allclose(float(solar.solar_declination(78.5)), 0.0, atol=0.5)
    np.testing.assert_allclose(float(solar.solar_declination(264.5)), 0.0, atol=0.5)
    days = np.arange(0.0, 365.0, 0.25)
    declination = np.asarray(solar.solar_declination(days))
    assert 170 <= days[declination.argmax()] <= 174
    np.testing.assert_allclose(declination.max(), 23.44, atol=0.1)


def test_day_length_known_values():
    # Equator: 12 h all year; 45 N: 15.4 h at the June solstice, 8.6 h at the December one, 12 h at equinox
    # (geometric day length, sun's centre, no refraction: acos(-tan(45) tan(23.44)) * 24 / pi = 15.43 h).
    np.testing.assert_allclose(np.asarray(solar.day_length(0.0, np.arange(365.0))), 12.0, atol=1e-4)
    np.testing.assert_allclose(float(solar.day_length(45.0, 171.5)), 15.43, atol=0.03)
    np.testing.assert_allclose(float(solar.day_length(45.0, 354.5)), 24.0 - 15.43, atol=0.03)
    np.testing.assert_allclose(float(solar.day_length(45.0, 78.5)), 12.0, atol=0.05)
    assert float(solar.day_length(80.0, 354.5)) == 0.0  # polar night
    assert float(solar.day_length(80.0, 171.5)) == 24.0  # midnight sun


def test_extraterrestrial_irradiance_matches_fao56_example_and_the_global_mean():
    # Allen et al. 1998 (FAO-56) example 8: 20 S on 3 September, Ra = 32.2 MJ m-2 d-1. FAO's simplified
    # declination gives 6.9 deg that day against 7.7 deg from Spencer 1971 (almanac: 7.6), and FAO's solar
    # constant is 1367 W m-2 against our 1361: together 1.7 % less, so 2.5 % tolerance.
    ra = float(solar.daily_extraterrestrial_irradiance(-20.0, 245.5)) * 0.0864
    np.testing.assert_allclose(ra, 32.2, rtol=0.025)
    # Exact integral: the annual and global mean insolation at the top of the atmosphere is S0 / 4 (times the
    # annual mean of the eccentricity factor, 1.00014).
    lat = np.linspace(-89.95, 89.95, 1800)
    days = np.arange(365.0) + 0.5
    irradiance = np.asarray(solar.daily_extraterrestrial_irradiance(lat[:, None], days[None, :]))
    weights = np.cos(np.radians(lat))
    global_mean = np.sum(irradiance.mean(axis=1) * weights) / np.sum(weights)
    np.testing.assert_allclose(global_mean, solar.SOLAR_CONSTANT / 4 * 1.00014, rtol=2e-3)


def test_clear_sky_par_seasonal_magnitudes():
    summer = float(fo.clear_sky_par(45.0, 171.5)) * 0.0864  # mol m-2 d-1
    winter = float(fo.clear_sky_par(45.0, 354.5)) * 0.0864
    # Clear-sky daily PAR at mid-latitudes: about 60 mol m-2 d-1 in June, 10-20 in December.
    assert 50.0 < summer < 70.0, summer
    assert 8.0 < winter < 20.0, winter
    assert float(fo.clear_sky_par(80.0, 354.5)) == 0.0
    grid = jax.jit(fo.clear_sky_par)(jnp.linspace(-60.0, 60.0, 7)[:, None], jnp.arange(365.0)[None, :])
    assert grid.shape == (7, 365) and bool(jnp.all(grid >= 0.0))


# ---------------------------------------------------------------------------------------------------- climatology


def test_harmonic_climatology_recovers_a_known_annual_cycle():
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0.0, 3 * 365.25, 400))
    phase = 2 * np.pi * times / 365.25
    truth = 18.0 + 5.0 * np.cos(phase) - 2.0 * np.sin(phase) + 0.7 * np.cos(2 * phase)
    noise_sd = 0.3
    values = truth + rng.normal(0.0, noise_sd, times.size)
    values[::17] = np.nan  # gaps are ignored
    clim = fo.fit_harmonic_climatology(times, values, n_harmonics=2)
    # Standard error of each coefficient ~ noise_sd * sqrt(2 / N) = 0.02; tolerance 5 standard errors.
    np.testing.assert_allclose(clim.mean, 18.0, atol=0.1)
    np.testing.assert_allclose(clim.cos_coef, [5.0, 0.7], atol=0.1)
    np.testing.assert_allclose(clim.sin_coef, [-2.0, 0.0], atol=0.1)
    np.testing.assert_allclose(clim.residual_sd, noise_sd, rtol=0.15)
    np.testing.assert_allclose(fo.evaluate_climatology(clim, times), truth, atol=0.1)
    with pytest.raises(ValueError, match="at least 6 finite"):
        fo.fit_harmonic_climatology(times[:5], values[:5], n_harmonics=2)


def test_fill_series_interpolates_short_gaps_and_fills_long_ones_from_the_climatology():
    flat = fo.HarmonicClimatology(mean=10.0, cos_coef=np.zeros(1), sin_coef=np.zeros(1), residual_sd=1.0)
    obs_times = np.array([2.0, 4.0, 5.0, 30.0])
    obs_values = np.array([12.0, 16.0, 11.0, 8.0])
    target = np.arange(0.0, 40.0)
    values, filled = fo.fill_series(target, obs_times, obs_values, flat, max_gap_days=5.0)
    expected = np.full(40, 10.0)
    expected[2:6] = [12.0, 14.0, 16.0, 11.0]  # observed and linearly interpolated (gaps <= 5 days)
    expected[0:2] = [11.2, 11.6]  # before the record: first anomaly (+2) tapered over 5 days
    expected[6:10] = [10.8, 10.6, 10.4, 10.2]  # long gap: anomaly of day 5 (+1) tapered ...
    expected[26:35] = [9.6, 9.2, 8.8, 8.4, 8.0, 8.4, 8.8, 9.2, 9.6]  # ... and that of day 30 (-2)
    np.testing.assert_allclose(values, expected, atol=1e-12)
    np.testing.assert_array_equal(filled, ~np.isin(target, [2.0, 3.0, 4.0, 5.0, 30.0]))
    # With a seasonal climatology the anomaly, not the value, is interpolated.
    seasonal = fo.HarmonicClimatology(mean=15.0, cos_coef=np.array([5.0]), sin_coef=np.zeros(1), residual_sd=1.0)
    t = np.arange(0.0, 365.0)
    clim = fo.evaluate_climatology(seasonal, t)
    obs_t = np.arange(0.0, 365.0, 7.0)
    values, filled = fo.fill_series(t, obs_t, fo.evaluate_climatology(seasonal, obs_t) + 1.0, seasonal, 10.0)
    np.testing.assert_allclose(values[:360], clim[:360] + 1.0, atol=1e-12)
    assert not filled[:360].any()


def test_fill_series_without_observations_is_all_climatology():
    clim = fo.HarmonicClimatology(mean=3.0, cos_coef=np.zeros(2), sin_coef=np.zeros(2), residual_sd=0.1)
    values, filled = fo.fill_series(np.arange(5.0), np.array([1.0]), np.array([np.nan]), clim, 3.0)
    np.testing.assert_allclose(values, 3.0)
    assert filled.all()


def test_daily_means_bins_high_frequency_data():
    times = np.array([0.1, 0.2, 0.9, 2.5, 2.6, 5.0])
    values = np.array([1.0, 2.0, 3.0, 10.0, np.nan, 7.0])
    means = fo.daily_means(times, values, np.arange(4.0))
    np.testing.assert_allclose(means, [2.0, np.nan, 10.0, np.nan])


# ---------------------------------------------------------------------------------------------------- forcing


def test_synthetic_forcing_is_a_stratified_temperate_site():
    forcing = fo.synthetic_forcing(365)
    assert forcing.temperature.shape == (365, 2) and forcing.par.shape == (365,)
    for field in forcing:
        assert bool(jnp.all(jnp.isfinite(field)))
    surface, bottom = np.asarray(forcing.temperature).T
    np.testing.assert_allclose([surface.min(), surface.max()], [13.0, 26.0], atol=0.05)
    assert np.all(bottom <= surface)
    august, february = slice(213, 243), slice(31, 59)
    assert float(jnp.mean(forcing.mixing_index[august])) < 0.1  # stratified summer
    assert float(jnp.min(forcing.mixing_index[february])) > 0.99  # mixed winter
    noisy_a = fo.synthetic_forcing(100, key=jax.random.key(0))
    noisy_b = fo.synthetic_forcing(100, key=jax.random.key(0))
    np.testing.assert_array_equal(noisy_a.par, noisy_b.par)
    assert bool(jnp.all(noisy_a.par <= forcing.par[:100] + 1e-3))  # clouds only reduce PAR
    one = fo.synthetic_forcing(10, num_layers=1)
    assert one.temperature.shape == (10, 1)


def test_make_forcing_defaults_and_rejects_gaps():
    temperature = np.full((5, 2), 15.0)
    salinity = np.full((5, 2), 38.0)
    forcing = fo.make_forcing(temperature, salinity, np.arange(5.0), latitude=43.0)
    np.testing.assert_allclose(forcing.par, fo.clear_sky_par(43.0, np.arange(5.0) + 0.5), rtol=1e-5)
    np.testing.assert_allclose(forcing.mixing_index, 1.0)
    temperature[2, 0] = np.nan
    with pytest.raises(ValueError, match="'temperature' has non-finite"):
        fo.make_forcing(temperature, salinity, np.arange(5.0), latitude=43.0)
    with pytest.raises(ValueError, match="latitude"):
        fo.make_forcing(np.full((5, 2), 15.0), salinity, np.arange(5.0))


def test_scenario_changes_shift_scale_and_replace_a_period_only():
    base = fo.synthetic_forcing(60, mean_river_discharge=100.0)
    warmer = fo.apply_change(base, "temperature", "shift", 2.0, start=10, end=20)
    np.testing.assert_allclose(warmer.temperature[10:20], base.temperature[10:20] + 2.0, rtol=1e-6)
    np.testing.assert_array_equal(warmer.temperature[:10], base.temperature[:10])
    np.testing.assert_array_equal(warmer.temperature[20:], base.temperature[20:])
    np.testing.assert_array_equal(warmer.par, base.par)

    less_nitrate = fo.apply_change(base, "river_nitrate", "scale", 0.7)
    np.testing.assert_allclose(less_nitrate.river_nitrate, base.river_nitrate * 0.7, rtol=1e-6)

    changes = [fo.ForcingChange("river_discharge", "replace", 0.0, 30, None),
               fo.ForcingChange("temperature", "shift", np.array([1.0, 0.5]))]
    changed = fo.apply_changes(base, changes)
    np.testing.assert_array_equal(changed.river_discharge[30:], 0.0)
    np.testing.assert_array_equal(changed.river_discharge[:30], base.river_discharge[:30])
    np.testing.assert_allclose(changed.temperature - base.temperature, np.tile([1.0, 0.5], (60, 1)), atol=1e-5)
    # Non-negative fields stay non-negative.
    darker = fo.apply_change(base, "par", "shift", -1e6)
    assert float(jnp.min(darker.par)) == 0.0

    with pytest.raises(ValueError, match="valid fields"):
        fo.apply_change(base, "temp", "shift", 1.0)
    with pytest.raises(ValueError, match="valid ops"):
        fo.apply_change(base, "par", "add", 1.0)
    with pytest.raises(ValueError, match="empty or outside"):
        fo.apply_change(base, "par", "scale", 1.0, start=50, end=70)


def test_forcing_at_works_under_jit():
    forcing = fo.synthetic_forcing(20)
    day = jax.jit(fo.forcing_at)(forcing, 7)
    assert day.temperature.shape == (2,)
    np.testing.assert_allclose(float(day.day_of_year), 7.0)

"""LETKF between the sites of a network (twin.localization): the taper table, and the analysis it gives."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import assimilation as da
from twin.config import ConfigError, parse_config
from twin.localization import local_observations, site_distances_km, site_taper
from twin.state_layout import StateLayout

SITES = [{"name": "A", "latitude": 43.0, "longitude": 7.0},
         {"name": "B", "latitude": 43.5, "longitude": 7.0},     # 55.6 km north of A
         {"name": "C", "latitude": 48.0, "longitude": -4.0}]    # Brittany, ~1000 km away


def config(radius_km):
    return parse_config({"sites": SITES, "filter": {"method": "letkf", "localization_radius_km": radius_km}})


def test_letkf_needs_a_radius_and_the_radius_needs_the_letkf():
    with pytest.raises(ConfigError, match="filter: .*method letkf needs localization_radius_km"):
        parse_config({"filter": {"method": "letkf"}})
    with pytest.raises(ConfigError, match="filter: .*localization_radius_km is for method letkf"):
        parse_config({"filter": {"method": "etkf", "localization_radius_km": 50}})
    with pytest.raises(ConfigError, match=r"filter\.localization_radius_km"):
        parse_config({"filter": {"method": "letkf", "localization_radius_km": -1}})


def test_taper_is_gaspari_cohn_of_the_site_distance():
    """Half-width 50 km: 1 within a site, GC(55.6 / 50) between A and B (0.15; reference value from the
    polynomial of Gaspari and Cohn 1999 eq. 4.10 evaluated here in float64), 0 beyond 100 km (C)."""
    layout = StateLayout(("A", "B", "C"), 2)
    d = site_distances_km(config(50.0), layout)
    np.testing.assert_allclose(d[0, 1], 55.597, rtol=1e-4)   # 0.5 degree of latitude
    loc = site_taper(config(50.0), layout)
    taper = np.asarray(loc.taper)
    site = layout.site_of_state()
    z = d[0, 1] / 50.0
    gc = z**5 / 12 - z**4 / 2 + 5 / 8 * z**3 + 5 / 3 * z**2 - 5 * z + 4 - 2 / (3 * z)
    assert taper.shape == (3, layout.dim)
    np.testing.assert_array_equal(taper[np.arange(3)[:, None] == site[None, :]], 1.0)
    np.testing.assert_allclose(taper[0, site == 1], gc, rtol=1e-5)
    np.testing.assert_allclose(taper[1, site == 0], gc, rtol=1e-5)
    np.testing.assert_array_equal(taper[2, site != 2], 0.0)
    np.testing.assert_array_equal(np.asarray(loc.domain_of_state), site)
    assert site_taper(parse_config({"sites": SITES}), layout) is None      # the ETKF: no taper
    with pytest.raises(ValueError, match=r"no coordinates for site\(s\) \['D'\]"):
        site_taper(config(50.0), StateLayout(("A", "D"), 1))


def _ensemble_and_obs(layout, rng):
    """A correlated ensemble over three one-layer sites and observations at A and B only."""
    n = layout.dim
    mix = rng.normal(size=(n, n)) * 0.2 + np.eye(n)
    members = np.exp(0.3 * rng.normal(size=(30, n)) @ mix.T / np.sqrt(n) + 1.0).astype(np.float32)
    ia, ib = layout.index("nitrate", "A", "surface"), layout.index("oxygen", "B", "surface")
    obs = da.make_observations(jnp.array([2.0, 3.5], jnp.float32), jnp.array([0.2, 0.3], jnp.float32),
                               jnp.array([ia, ib]), num_slots=4)
    return jnp.asarray(members), obs


def test_letkf_with_a_wide_radius_is_the_etkf_and_a_far_site_keeps_its_forecast():
    """Radius 1e6 km: every taper is 1 to float32 precision and the LETKF equals the ETKF (rtol 1e-4, float32
    eigensolvers). Radius 50 km: site C (1000 km away) keeps its forecast exactly, while A and B move."""
    layout = StateLayout(("A", "B", "C"), 1)
    members, obs = _ensemble_and_obs(layout, np.random.default_rng(0))
    log_mask = jnp.asarray(layout.log_mask())
    key = jax.random.PRNGKey(0)
    etkf = da.analysis(da.Ensemble(members), obs, key, da.FilterParams(method="etkf"), log_mask=log_mask)
    wide = da.analysis(da.Ensemble(members), obs, key, da.FilterParams(method="letkf"), log_mask=log_mask,
                       localization=local_observations(site_taper(config(1e6), layout), obs.state_index))
    np.testing.assert_allclose(np.asarray(wide.ensemble.members), np.asarray(etkf.ensemble.members), rtol=1e-4)
    near = da.analysis(da.Ensemble(members), obs, key, da.FilterParams(method="letkf"), log_mask=log_mask,
                       localization=local_observations(site_taper(config(50.0), layout), obs.state_index))
    out, site = np.asarray(near.ensemble.members), layout.site_of_state()
    np.testing.assert_allclose(out[:, site == 2], np.asarray(members)[:, site == 2], rtol=1e-6)
    assert not np.allclose(out[:, site == 0].mean(0), np.asarray(members)[:, site == 0].mean(0), rtol=1e-3)
    assert not np.allclose(np.asarray(etkf.ensemble.members)[:, site == 2], np.asarray(members)[:, site == 2],
                           rtol=1e-3)   # the ETKF does move C, through the sampled correlations


def test_a_domain_sees_each_observation_with_its_error_variance_divided_by_the_taper():
    """Reference: site B's analysis equals an ETKF in which the observation at A (55.6 km) has its variance
    divided by GC(55.6 / 80) and the one at B its own (Hunt et al. 2007, section 2.3); linear space, so that
    the taper acts on the error as given. Tolerance rtol 1e-4 (float32, two eigensolver calls)."""
    layout = StateLayout(("A", "B", "C"), 1)
    members, obs = _ensemble_and_obs(layout, np.random.default_rng(1))
    loc = site_taper(config(80.0), layout)
    rho = float(loc.taper[1, layout.index("nitrate", "A", "surface")])
    assert 0.05 < rho < 0.95
    key = jax.random.PRNGKey(0)
    letkf = da.analysis(da.Ensemble(members), obs, key, da.FilterParams(method="letkf"),
                        localization=local_observations(loc, obs.state_index))
    widened = obs._replace(error_sd=obs.error_sd.at[0].divide(np.sqrt(rho)))
    etkf = da.analysis(da.Ensemble(members), widened, key, da.FilterParams(method="etkf"))
    site = layout.site_of_state()
    np.testing.assert_allclose(np.asarray(letkf.ensemble.members)[:, site == 1],
                               np.asarray(etkf.ensemble.members)[:, site == 1], rtol=1e-4)

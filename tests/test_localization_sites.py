"""LETKF between the sites of a network and between variables (twin.localization): the taper table, and the
analysis it gives."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import assimilation as da
from twin.config import ConfigError, parse_config
from twin.localization import local_observations, site_distances_km, local_taper
from twin.state_layout import StateLayout

SITES = [{"name": "A", "latitude": 43.0, "longitude": 7.0},
         {"name": "B", "latitude": 43.5, "longitude": 7.0},     # 55.6 km north of A
         {"name": "C", "latitude": 48.0, "longitude": -4.0}]    # Brittany, ~1000 km away


def config(radius_km):
    return parse_config({"sites": SITES, "filter": {"method": "letkf", "localization_radius_km": radius_km}})


def test_letkf_needs_a_radius_and_the_radius_needs_the_letkf():
    with pytest.raises(ConfigError, match="filter: .*method letkf needs localization_radius_km .* or "
                                          "cross_variable_localization"):
        parse_config({"filter": {"method": "letkf"}})
    with pytest.raises(ConfigError, match="filter: .*localization_radius_km is for method letkf"):
        parse_config({"filter": {"method": "etkf", "localization_radius_km": 50}})
    with pytest.raises(ConfigError, match="filter: .*cross_variable_localization is for method letkf"):
        parse_config({"filter": {"method": "etkf", "cross_variable_localization": {"ammonium": {"nitrate": 0}}}})
    with pytest.raises(ConfigError, match=r"filter\.cross_variable_localization: .*unknown observed variable\(s\) "
                                          r"\['zooplankton'\]"):
        parse_config({"filter": {"method": "letkf", "cross_variable_localization": {"zooplankton": {"nitrate": 0}}}})
    with pytest.raises(ConfigError, match=r"ammonium: unknown state variable\(s\) \['nitrite'\]"):
        parse_config({"filter": {"method": "letkf", "cross_variable_localization": {"ammonium": {"nitrite": 0}}}})
    with pytest.raises(ConfigError, match=r"filter\.cross_variable_localization\.ammonium\.nitrate"):
        parse_config({"filter": {"method": "letkf", "cross_variable_localization": {"ammonium": {"nitrate": 2}}}})
    with pytest.raises(ConfigError, match=r"filter\.localization_radius_km"):
        parse_config({"filter": {"method": "letkf", "localization_radius_km": -1}})


def test_taper_is_gaspari_cohn_of_the_site_distance():
    """Half-width 50 km: 1 within a site, GC(55.6 / 50) between A and B (0.15; reference value from the
    polynomial of Gaspari and Cohn 1999 eq. 4.10 evaluated here in float64), 0 beyond 100 km (C)."""
    layout = StateLayout(("A", "B", "C"), 2)
    d = site_distances_km(config(50.0), layout)
    np.testing.assert_allclose(d[0, 1], 55.597, rtol=1e-4)   # 0.5 degree of latitude
    loc = local_taper(config(50.0), layout)
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
    assert local_taper(parse_config({"sites": SITES}), layout) is None      # the ETKF: no taper
    with pytest.raises(ValueError, match=r"no coordinates for site\(s\) \['D'\]"):
        local_taper(config(50.0), StateLayout(("A", "D"), 1))


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
                       localization=local_observations(local_taper(config(1e6), layout), obs.state_index))
    np.testing.assert_allclose(np.asarray(wide.ensemble.members), np.asarray(etkf.ensemble.members), rtol=1e-4)
    near = da.analysis(da.Ensemble(members), obs, key, da.FilterParams(method="letkf"), log_mask=log_mask,
                       localization=local_observations(local_taper(config(50.0), layout), obs.state_index))
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
    loc = local_taper(config(80.0), layout)
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


def pairs_config(pairs, radius_km=None):
    flt = {"method": "letkf", "cross_variable_localization": pairs}
    if radius_km is not None:
        flt["localization_radius_km"] = radius_km
    return parse_config({"sites": SITES, "filter": flt})


def test_cross_variable_taper_table_groups_equal_rows_into_domains():
    """{ammonium: {nitrate: 0}} at one two-layer site: two domains, the nitrate elements (both layers) and the
    rest; the nitrate domain gives ammonium's columns 0 and every other column 1. With a radius too, the taper
    is the product of the site taper and the variable taper, and each site splits the same way."""
    layout = StateLayout(("A",), 2)
    loc = local_taper(pairs_config({"ammonium": {"nitrate": 0.0}}), layout)
    variable = np.array([v for v, _, _ in layout.variables()])
    domain, taper = np.asarray(loc.domain_of_state), np.asarray(loc.taper)
    assert taper.shape == (2, layout.dim)
    assert domain[0] == 0 and set(domain[variable == "nitrate"]) == {0} and set(domain[variable != "nitrate"]) == {1}
    np.testing.assert_array_equal(taper[0], np.where(variable == "ammonium", 0.0, 1.0))
    np.testing.assert_array_equal(taper[1], 1.0)

    layout = StateLayout(("A", "B", "C"), 1)
    both = local_taper(pairs_config({"ammonium": {"nitrate": 0.5}}, radius_km=50.0), layout)
    sites = local_taper(config(50.0), layout)
    variable, site = np.array([v for v, _, _ in layout.variables()]), layout.site_of_state()
    domain, taper = np.asarray(both.domain_of_state), np.asarray(both.taper)
    assert taper.shape == (6, layout.dim)
    for i in range(layout.dim):
        expect = np.asarray(sites.taper)[site[i]] * np.where((variable == "ammonium") & (variable[i] == "nitrate"),
                                                              0.5, 1.0)
        np.testing.assert_allclose(taper[domain[i]], expect, rtol=1e-6)


def augmented_config(pairs):
    """A LETKF config whose state carries a Chl:N error and a buoy's oxygen offset."""
    return parse_config({"sites": SITES, "model": {"bias": {"chlorophyll": {"sd_per_day": 0.2}}},
                         "sources": [{"path": "buoy.csv", "format": "coasthf", "name": "buoy",
                                      "offsets": {"oxygen": {"sd": 0.05, "timescale_days": 3650}}}],
                         "filter": {"method": "letkf", "cross_variable_localization": pairs}})


def test_cross_variable_taper_reaches_the_biases_and_offsets_the_state_carries():
    """The augmented elements can be tapered by name ({oxygen: {chlorophyll_bias: 0}}: oxygen samples do not
    move the model's Chl:N error); a name the state does not carry is refused, the name given."""
    layout = StateLayout(("A",), 2, ("chlorophyll",), (("buoy", "oxygen"),))
    pairs = {"oxygen": {"chlorophyll_bias": 0.0}, "chlorophyll": {"oxygen_offset_buoy": 0.0, "oxygen": 0.0}}
    loc = local_taper(augmented_config(pairs), layout)
    variable = np.array([v for v, _, _ in layout.variables()])
    observed = np.array(["oxygen" if v == "oxygen_buoy" else v for v in variable])
    taper = np.asarray(loc.taper)[np.asarray(loc.domain_of_state)]          # (n, n): element i's row
    for i, v in enumerate(variable):
        expect = np.where((observed == "oxygen") & (v == "chlorophyll_bias"), 0.0, 1.0)
        # The buoy's reading of oxygen takes oxygen's taper: neither factor of it moves with chlorophyll.
        expect = np.where((observed == "chlorophyll") & (v in ("oxygen_offset_buoy", "oxygen", "oxygen_buoy")),
                          0.0, expect)
        np.testing.assert_array_equal(taper[i], expect)
    # At parse time: an augmented element the config does not carry (no such bias, no such source's offset).
    with pytest.raises(ConfigError, match=r"names \['nitrate_bias'\], which the state does not carry .*"
                                          r"\['chlorophyll_bias', 'oxygen_offset_buoy'\]"):
        augmented_config({"oxygen": {"nitrate_bias": 0.0}})
    with pytest.raises(ConfigError, match=r"names \['oxygen_offset_buoy'\], which the state does not carry"):
        pairs_config({"chlorophyll": {"oxygen_offset_buoy": 0.0}})
    with pytest.raises(ConfigError, match=r"unknown state variable\(s\) \['oxygen_offset_'\]"):
        pairs_config({"oxygen": {"oxygen_offset_": 0.0}})
    # A twin experiment's buoy (the source named 'buoy') carries its offsets.
    parse_config({"experiment": {"buoy_offsets": {"oxygen": {"sd": 0.05}}},
                  "filter": {"method": "letkf", "cross_variable_localization": {"chlorophyll": {"oxygen_offset_buoy": 0}}}})
    # And at the analysis, a layout without the element (a config and state out of step) is refused.
    with pytest.raises(ValueError, match=r"names \['chlorophyll_bias'\], which the state does not carry"):
        local_taper(augmented_config({"oxygen": {"chlorophyll_bias": 0.0}}), StateLayout(("A",), 2))


def test_a_zero_cross_variable_taper_is_the_etkf_without_those_observations():
    """{ammonium: {nitrate: 0}}: the nitrate elements get the ETKF analysis of the nitrate observation alone,
    every other element the ETKF analysis of both; log space, as the twin runs. rtol 1e-4 (float32, separate
    eigensolver calls)."""
    layout = StateLayout(("A",), 2)
    rng = np.random.default_rng(3)
    n = layout.dim
    mix = rng.normal(size=(n, n)) * 0.5 + np.eye(n)
    members = jnp.asarray(np.exp(0.4 * rng.normal(size=(30, n)) @ mix.T / np.sqrt(n) + 1.0).astype(np.float32))
    inh4, ino3 = layout.index("ammonium", "A", "surface"), layout.index("nitrate", "A", "bottom")
    both = da.make_observations(jnp.array([5.0, 2.0], jnp.float32), jnp.array([0.4, 0.3], jnp.float32),
                                jnp.array([inh4, ino3]), num_slots=4)
    nitrate_only = da.make_observations(jnp.array([2.0], jnp.float32), jnp.array([0.3], jnp.float32),
                                        jnp.array([ino3]), num_slots=4)
    log_mask, key = jnp.asarray(layout.log_mask()), jax.random.PRNGKey(0)
    loc = local_taper(pairs_config({"ammonium": {"nitrate": 0.0}}), layout)
    local = da.analysis(da.Ensemble(members), both, key, da.FilterParams(method="letkf"), log_mask=log_mask,
                        localization=local_observations(loc, both.state_index))
    etkf_both = da.analysis(da.Ensemble(members), both, key, da.FilterParams(method="etkf"), log_mask=log_mask)
    etkf_no3 = da.analysis(da.Ensemble(members), nitrate_only, key, da.FilterParams(method="etkf"),
                           log_mask=log_mask)
    nitrate = np.array([v == "nitrate" for v, _, _ in layout.variables()])
    out = np.asarray(local.ensemble.members)
    np.testing.assert_allclose(out[:, nitrate], np.asarray(etkf_no3.ensemble.members)[:, nitrate], rtol=1e-4)
    np.testing.assert_allclose(out[:, ~nitrate], np.asarray(etkf_both.ensemble.members)[:, ~nitrate], rtol=1e-4)
    # and the ammonium sample does move nitrate in the ETKF (the test is not vacuous)
    moved = np.abs(np.asarray(etkf_both.ensemble.members)[:, nitrate].mean(0) - out[:, nitrate].mean(0))
    assert moved.max() > 1e-2 * np.abs(out[:, nitrate].mean(0)).max()

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings, strategies as st

from twin.errors import InputError
from twin.observations import (concat_observations, empty_observations, flag_duplicates, from_netcdf,
                               make_observations, sort_observations, to_netcdf)
from twin.units import CANONICAL_UNITS, to_canonical


def test_make_observations_rejects_non_canonical_variable():
    with pytest.raises(ValueError, match="non-canonical variables.*'NO3'"):
        make_observations(time=np.array(["2020-01-01"], "datetime64[ns]"), site=["a"], variable=["NO3"],
                          value=[1.0], qc=np.array([1]), native_qc=["2"], source="f")


def test_make_observations_refuses_a_sentinel_leak():
    with pytest.raises(ValueError, match="non-finite value but is not flagged missing"):
        make_observations(time=np.array(["2020-01-01"], "datetime64[ns]"), site=["a"], variable=["nitrate"],
                          value=[np.nan], qc=np.array([1]), native_qc=["2"], source="f")


def test_make_observations_rejects_qc_off_scale_and_unequal_lengths():
    t = np.array(["2020-01-01"], "datetime64[ns]")
    with pytest.raises(ValueError, match="not on the QARTOD scale"):
        make_observations(time=t, site=["a"], variable=["nitrate"], value=[1.0], qc=np.array([5]),
                          native_qc=["5"], source="f")
    with pytest.raises(ValueError, match="different lengths"):
        make_observations(time=t, site=["a", "b"], variable=["nitrate"], value=[1.0], qc=np.array([1]),
                          native_qc=["2"], source="f")


def test_duplicates_are_kept_and_later_ones_flagged(small_table):
    dup = concat_observations([small_table, small_table.isel(obs=[0])])
    actual = flag_duplicates(dup)["qc"].values
    expected = np.array([1, 1, 9, 3, 3], np.int8)  # the repeated first row is suspect, nothing dropped
    np.testing.assert_array_equal(actual, expected)
    assert actual.size == dup.sizes["obs"]


def test_sort_is_by_time_first(small_table):
    shuffled = small_table.isel(obs=[3, 0, 2, 1])
    actual = sort_observations(shuffled)["time"].values
    assert np.all(np.diff(actual.astype(np.int64)) >= 0)


def test_oxygen_and_nutrient_conversions_match_hand_values():
    # 1 mL/L O2 = 1000 / 22.3916 mmol m-3; 1 mg/L O2 = 1000 / 31.9988; 0.014 mg/L as N = 1 mmol m-3.
    np.testing.assert_allclose(to_canonical("oxygen", "ml/l", [1.0]), [44.6596], rtol=1e-5)
    np.testing.assert_allclose(to_canonical("oxygen", "mg/L", [1.0]), [31.2512], rtol=1e-5)
    np.testing.assert_allclose(to_canonical("nitrate", "mg/L as N", [0.0140067]), [1.0], rtol=1e-9)
    np.testing.assert_allclose(to_canonical("phosphate", "mg/L as P", [0.030973762]), [1.0], rtol=1e-9)
    with pytest.raises(ValueError, match="unknown unit 'furlongs' for nitrate"):
        to_canonical("nitrate", "furlongs", [1.0])


def test_empty_roundtrip(tmp_path):
    to_netcdf(empty_observations(), tmp_path / "e.nc")
    assert from_netcdf(tmp_path / "e.nc").sizes["obs"] == 0


def test_corrupted_netcdf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.nc"
    bad.write_bytes(b"CDF\x01garbage" * 10)
    with pytest.raises(InputError, match="broken.nc: not a readable NetCDF"):
        from_netcdf(bad)


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


@st.composite
def tables(draw):
    n = draw(st.integers(0, 12))
    qc = draw(st.lists(st.sampled_from([1, 2, 3, 4, 9]), min_size=n, max_size=n))
    values = [draw(st.floats(-1e6, 1e6, allow_nan=False)) if q != 9 else
              draw(st.sampled_from([np.nan, 1.5])) for q in qc]
    return make_observations(
        time=np.array(draw(st.lists(st.integers(0, 2**60), min_size=n, max_size=n)), "datetime64[ns]"),
        site=draw(st.lists(_text, min_size=n, max_size=n)),
        depth=draw(st.lists(st.floats(0, 5000) | st.just(np.nan), min_size=n, max_size=n)),
        layer=draw(st.lists(st.sampled_from(["surface", "bottom", ""]), min_size=n, max_size=n)),
        layer_code=draw(st.lists(_text, min_size=n, max_size=n)),
        variable=draw(st.lists(st.sampled_from(sorted(CANONICAL_UNITS)), min_size=n, max_size=n)),
        value=values, error_sd=draw(st.lists(st.floats(0, 100), min_size=n, max_size=n)),
        qc=np.array(qc, np.int8), native_qc=draw(st.lists(_text, min_size=n, max_size=n)),
        censored=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        source=draw(st.lists(_text, min_size=n, max_size=n)),
        line=draw(st.lists(st.integers(-1, 10**9), min_size=n, max_size=n)),
    )


@settings(max_examples=40, deadline=None)
@given(table=tables())
def test_netcdf_roundtrip_is_identical(tmp_path_factory, table):
    path = tmp_path_factory.mktemp("rt") / "obs.nc"
    to_netcdf(table, path)
    xr.testing.assert_identical(from_netcdf(path), table)

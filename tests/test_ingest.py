"""Ingestion of a config's sources: reader options, errors that scale with the value, site filter."""
from pathlib import Path

import numpy as np
import pytest

from twin.config import SourceConfig, parse_config
from twin.errors import ConfigError
from twin.ingest import read_source

HYDRO = Path(__file__).parent / "fixtures" / "somlit" / "somlit_native_hydro.csv"


def test_relative_error_adds_a_share_of_each_value_in_quadrature():
    plain = read_source(SourceConfig(path=str(HYDRO), format="somlit", error_sd={"nitrate": 0.05}))
    scaled = read_source(SourceConfig(path=str(HYDRO), format="somlit", error_sd={"nitrate": 0.05},
                                      relative_error={"nitrate": 0.3}))
    assert plain.sizes == scaled.sizes                      # nothing dropped or added
    variable, value = plain["variable"].values.astype(str), plain["value"].values
    nitrate = (variable == "nitrate") & np.isfinite(value)
    assert nitrate.sum() >= 3 and np.ptp(value[nitrate]) > 0
    np.testing.assert_allclose(plain["error_sd"].values[nitrate], 0.05)
    np.testing.assert_allclose(scaled["error_sd"].values[nitrate], np.hypot(0.05, 0.3 * value[nitrate]), rtol=1e-12)
    others = ~nitrate
    np.testing.assert_array_equal(scaled["error_sd"].values[others], plain["error_sd"].values[others])
    assert scaled["error_sd"].attrs == plain["error_sd"].attrs


def test_relative_error_names_its_field():
    with pytest.raises(ConfigError, match=r"sources\.0\.relative_error: unknown variable\(s\) in relative_error: "
                                          r"'nitrat' \(did you mean 'nitrate'\?\)"):
        parse_config({"sources": [{"path": "x.csv", "relative_error": {"nitrat": 0.2}}]})
    with pytest.raises(ConfigError, match=r"sources\.0\.relative_error\.nitrate: .*less than or equal to 1"):
        parse_config({"sources": [{"path": "x.csv", "relative_error": {"nitrate": 1.5}}]})

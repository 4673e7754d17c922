"""Configuration: YAML into typed, frozen objects that reject unknown keys.

Every section is a pydantic model with ``extra="forbid"`` and ``frozen=True``. ``load_config`` turns
pydantic's errors into one ``ConfigError`` listing each problem with its key path, the offending value and,
for unknown keys, a did-you-mean hint. Relative paths are resolved against the config file's folder.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, ValidationError, field_validator, model_validator

from twin.errors import ConfigError
from twin.units import CANONICAL_UNITS

ReaderFormat = Literal["somlit", "coasthf", "oceansites", "swmp", "csv", "gridded"]
Variable = str  # a key of twin.units.CANONICAL_UNITS, checked by validators
PositiveFloat = Annotated[float, Field(gt=0)]


class Frozen(BaseModel):
    """Base of every config section: immutable, unknown keys rejected."""
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _require_known(names, valid, kind: str, prefix: str = ""):
    """ValueError naming the ``names`` not in ``valid`` (each a ``kind``) and the valid ones."""
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"{prefix}unknown {kind}(s) {unknown}; valid: {list(valid)}")


def _check_variables(names, where: str):
    unknown = [n for n in names if n not in CANONICAL_UNITS]
    if unknown:
        hints = {n: difflib.get_close_matches(n, CANONICAL_UNITS, n=1) for n in unknown}
        text = ", ".join(f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items())
        raise ValueError(f"unknown variable(s) in {where}: {text}")
    return names


# The process model's tracers (emulators.parameters.TRACERS, repeated: a config check must not import JAX; a
# test keeps the two equal).
OFFSHORE_TRACERS = ("nitrate", "ammonium", "phosphate", "silicate", "phytoplankton", "zooplankton", "detritus",
                    "oxygen")
# The state variables an observation sees (twin.state_layout.OBSERVABLE's values, repeated for the same
# reason; the same test keeps them equal).
OBSERVED_STATE = ("nitrate", "ammonium", "phosphate", "silicate", "oxygen", "chlorophyll")
# The state variables of a site and layer (twin.state_layout.STATE_VARIABLES: the tracers and chlorophyll).
STATE_VARIABLES = OFFSHORE_TRACERS + ("chlorophyll",)
# The process model's layers (emulators.parameters.LAYERS, repeated for the same reason and kept equal likewise).
MODEL_LAYERS = ("surface", "bottom")


def _is_tracer_layer(key: str) -> bool:
    """Whether ``key`` is 'tracer/layer': a tracer of OFFSHORE_TRACERS and a layer of MODEL_LAYERS."""
    tracer, slash, layer = key.partition("/")
    return bool(slash) and tracer in OFFSHORE_TRACERS and layer in MODEL_LAYERS


class RiverConfig(Frozen):
    """A river entering the surface layer of a site: a seasonal discharge climatology and the nutrients of its
    water (defaults: the nitrate-rich river of the emulator's training runs, ``emulators.forcing.RIVER_WATER``).
    Scenarios scale or shift these series (``forcing.river_nitrate``, ``forcing.river_discharge``).

    ``discharge_from_salinity`` takes the discharge from the surface salinity forcing instead of a climatology
    (``emulators.forcing.salinity_river_discharge``): where a plume's freshening is sampled, its nutrients come
    with it."""
    mean_discharge_m3s: PositiveFloat | None = Field(default=None, description="m3 s-1; needed unless "
                                                                               "discharge_from_salinity")
    discharge_from_salinity: bool = Field(
        default=False, description="the discharge that holds the surface layer's observed freshwater fraction "
                                   "1 - S / offshore_salinity against its offshore exchange")
    offshore_salinity: PositiveFloat | None = Field(
        default=None, description="with discharge_from_salinity: the salinity of offshore water (none: the 0.9 "
                                  "quantile of the site's surface salinity observations; a run's resolved config "
                                  "lists it)")
    nutrients_from_data: bool = Field(
        default=False, description="with discharge_from_salinity: each nutrient of the river water from the "
                                   "site's surface samples, the mixing line's value at freshwater fraction 1 (a "
                                   "least-squares line of the nutrient against 1 - S / offshore_salinity on the "
                                   "samples with a salinity; withheld ones left out; a run's resolved config "
                                   "lists them)")
    seasonal_amplitude: float = Field(default=0.6, ge=0, lt=1, description="relative, of the annual cosine")
    peak_day_of_year: float = Field(default=60.0, ge=0, lt=366, description="day of the discharge maximum")
    nitrate: NonNegativeFloat = Field(default=150.0, description="mmol m-3 in river water")
    ammonium: NonNegativeFloat = Field(default=5.0, description="mmol m-3 in river water")
    phosphate: NonNegativeFloat = Field(default=1.5, description="mmol m-3 in river water")
    silicate: NonNegativeFloat = Field(default=120.0, description="mmol m-3 in river water")

    @model_validator(mode="after")
    def _discharge_given(self):
        if self.mean_discharge_m3s is None and not self.discharge_from_salinity:
            raise ValueError("a river needs mean_discharge_m3s (a climatology) or discharge_from_salinity: true")
        if self.nutrients_from_data and not self.discharge_from_salinity:
            raise ValueError("nutrients_from_data needs discharge_from_salinity: true (the mixing line is in "
                             "salinity)")
        return self


class SiteConfig(Frozen):
    """A station of the twin."""
    name: str = Field(min_length=1, description="station id as written in the data, e.g. 'Point B'")
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=360)
    layers: tuple[Literal["surface", "bottom"], ...] = ("surface", "bottom")
    bottom_depth_m: PositiveFloat = 30.0
    aliases: tuple[str, ...] = Field(default=(), description="other ids of this station in other sources")
    boundary_from_data: bool = Field(
        default=False, description="process model: offshore water of each layer = the median of the site's "
                                   "observed nutrients and oxygen in that layer (instead of a generic shelf)")
    boundary_seasonal: bool = Field(
        default=False, description="with boundary_from_data: also an annual harmonic of each tracer's log from the "
                                   "same observations (offshore_seasonal), so that winter water is richer")
    river: RiverConfig | None = Field(default=None, description="a river into the surface layer (none: no river)")
    offshore_exchange_per_day: dict[Literal["surface", "bottom"], PositiveFloat] = Field(
        default_factory=dict,
        description="process model: fraction of each layer renewed by offshore water per day (default 0.02, a "
                    "sheltered shelf; an open bay's surface water is renewed within days)")
    offshore_seasonal: dict[str, tuple[Annotated[float, Field(ge=-3.0, le=3.0)],
                                       Annotated[float, Field(ge=-3.0, le=3.0)]]] = Field(
        default_factory=dict,
        description="process model: per 'tracer/layer' (a, b), the offshore water times exp(a cos(2 pi d / 365.25) "
                    "+ b sin(2 pi d / 365.25)), d the day of the year; boundary_seasonal fills it from the data")
    offshore_water: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="process model: offshore water per 'tracer/layer', mmol m-3 (e.g. nitrate/bottom: 2.1); given "
                    "values win over boundary_from_data, which fills the rest (a run's resolved config lists them)")

    chlorophyll_scale: dict[Literal["surface", "bottom"], PositiveFloat] = Field(
        default_factory=dict,
        description="factor on the chlorophyll diagnostic (the model's Chl:N ratio) per layer, 1 when not given; "
                    "hindcast.calibrate_chlorophyll estimates it from the assimilated chlorophyll (a run's "
                    "resolved config lists the values)")
    chlorophyll_seasonal: dict[Literal["surface", "bottom"],
                               tuple[Annotated[float, Field(ge=-2.0, le=2.0)], Annotated[float, Field(ge=-2.0, le=2.0)]]
                               ] = Field(
        default_factory=dict,
        description="per layer (a, b): the chlorophyll factor times exp(a cos(2 pi d / 365.25) + b sin(2 pi d / "
                    "365.25)), d the day of the year from 1 January: a seasonal error of the model's Chl:N ratio; "
                    "hindcast.calibrate_chlorophyll_seasonal estimates it")

    @field_validator("offshore_water", "offshore_seasonal")
    @classmethod
    def _offshore_keys(cls, v):
        bad = [k for k in v if not _is_tracer_layer(k)]
        if bad:
            raise ValueError(f"keys {bad} are not 'tracer/layer' with tracer one of {list(OFFSHORE_TRACERS)} and layer "
                             f"surface or bottom")
        return v


class OffsetConfig(Frozen):
    """A sensor's offset for one variable, estimated by the filter (see ``twin.forecast``): its readings are
    the sea's value times exp(c), c an AR(1) in the state with this stationary sd and timescale."""
    sd: float = Field(default=0.05, gt=0.0, le=1.0, description="stationary sd of c (log of reading over value)")
    timescale_days: PositiveFloat = Field(default=365.0, ge=1.0, le=36500.0,
                                          description="e-folding time of c: how slowly the sensor drifts")


class SourceConfig(Frozen):
    """One data source: a file or glob, read by one reader."""
    path: str = Field(min_length=1, description="file or glob, relative to the config file")
    name: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
                             description="a short name for the source (needed with offsets: it names them)")
    offsets: dict[str, OffsetConfig] = Field(
        default_factory=dict, description="variables whose offset (drift, calibration) for this source's "
                                          "sensor the filter estimates, e.g. a buoy's oxygen optode")
    format: ReaderFormat | None = None
    mapping: str | None = Field(default=None, description="YAML mapping for format 'csv'")
    sites: tuple[str, ...] | None = Field(default=None, description="keep only these sites")
    error_sd: dict[Variable, PositiveFloat] = Field(default_factory=dict)
    relative_error: dict[Variable, Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=dict, description="variable -> fraction of each value added in quadrature to its error "
                                          "sd: a representativeness error that scales with the value, so that "
                                          "low values stay informative in log space")
    fluorescence_calibration: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="site -> (slope, offset): chlorophyll = slope * fluo + offset")
    utc_offset_hours: float | None = Field(default=None, ge=-14, le=14)
    radius_km: PositiveFloat | None = Field(default=None, description="gridded products: pixel radius")

    @field_validator("error_sd", "relative_error")
    @classmethod
    def _known_error_vars(cls, v, info):
        _check_variables(v, info.field_name)
        return v

    @model_validator(mode="after")
    def _mapping_for_csv(self):
        if self.format == "csv" and not self.mapping:
            raise ValueError("format 'csv' needs 'mapping' (a YAML column mapping file)")
        if self.offsets and not self.name:
            raise ValueError("a source with offsets needs a 'name' (the offsets are named after it)")
        return self

    @field_validator("offsets")
    @classmethod
    def _observable_offsets(cls, v):
        unknown = [k for k in v if k not in OBSERVED_STATE]
        if unknown:
            raise ValueError(f"offsets of {unknown}: the twin carries offsets of {list(OBSERVED_STATE)} only")
        return v


class GrossRange(Frozen):
    fail_span: tuple[float, float]
    suspect_span: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ordered(self):
        lo, hi = self.fail_span
        if lo >= hi:
            raise ValueError(f"fail_span must be (low, high) with low < high, got {self.fail_span}")
        if self.suspect_span is not None:
            slo, shi = self.suspect_span
            if not lo <= slo < shi <= hi:
                raise ValueError(f"suspect_span {self.suspect_span} must lie inside fail_span {self.fail_span}")
        return self


class SeasonalSpan(Frozen):
    """Climatology test: values outside ``span`` in these months are suspect."""
    months: tuple[int, int] = Field(description="first and last month, 1-12 (inclusive)")
    span: tuple[float, float]

    @field_validator("months")
    @classmethod
    def _months(cls, v):
        if not all(1 <= m <= 12 for m in v):
            raise ValueError(f"months must be within 1..12, got {v}")
        return v


class Spike(Frozen):
    suspect_threshold: PositiveFloat
    fail_threshold: PositiveFloat


class RateOfChange(Frozen):
    threshold_per_hour: PositiveFloat


class FlatLine(Frozen):
    tolerance: PositiveFloat
    suspect_hours: PositiveFloat = 3.0
    fail_hours: PositiveFloat = 6.0


class QcConfig(Frozen):
    """QARTOD thresholds per canonical variable. Built-in gross ranges apply to variables not listed.

    Spike, rate of change and flat line run only on series whose median interval is below
    ``high_frequency_max_interval_hours`` (they are meaningless on weekly bottles).
    """
    gross_range: dict[Variable, GrossRange] = Field(default_factory=dict)
    climatology: dict[Variable, tuple[SeasonalSpan, ...]] = Field(default_factory=dict)
    spike: dict[Variable, Spike] = Field(default_factory=dict)
    rate_of_change: dict[Variable, RateOfChange] = Field(default_factory=dict)
    flat_line: dict[Variable, FlatLine] = Field(default_factory=dict)
    high_frequency_max_interval_hours: PositiveFloat = 6.0
    use_builtin_defaults: bool = True

    @field_validator("gross_range", "climatology", "spike", "rate_of_change", "flat_line")
    @classmethod
    def _known(cls, v, info):
        _check_variables(v, f"qc.{info.field_name}")
        return v


class OutputConfig(Frozen):
    directory: str = "runs/latest"
    plots: bool = True


class TwinExperimentConfig(Frozen):
    """A twin experiment (OSSE): synthetic truth and observations written in SOMLIT and COAST-HF formats.

    When present, the hindcast makes these files first and reads them as its sources.
    """
    site: str = "SYNTH-B"
    platform: str = Field(default="SYNTH01", description="buoy platform code (an alias of the site)")
    latitude: float = Field(default=43.68, ge=-90, le=90)
    longitude: float = Field(default=7.32, ge=-180, le=360)
    start: date = date(2016, 1, 1)
    days: int = Field(default=730, ge=30, le=36600)
    seed: int = Field(default=1, ge=0)
    bottle_interval_days: int = Field(default=7, ge=1, le=365)
    missed_fraction: float = Field(default=0.1, ge=0, lt=1)
    buoy: bool = True
    buoy_gap_fraction: float = Field(default=0.15, ge=0, lt=0.9)
    oxygen_drift_per_year: float = -12.0
    buoy_meteorology: bool = Field(default=False, description="the buoy also measures PAR and wind speed above "
                                   "the surface (its met mast), which the twin's forcing then takes")
    buoy_offsets: dict[str, OffsetConfig] = Field(
        default_factory=dict, description="offsets of the buoy's sensors the filter estimates (the source "
                                          "'buoy'), e.g. {oxygen: {sd: 0.05, timescale_days: 365}} for its drift")
    fluorescence_slope: PositiveFloat = 1.0
    parameter_spread: float = Field(default=0.25, ge=0, le=1)
    river_discharge_m3s: NonNegativeFloat = Field(
        default=0.0, description="mean discharge of the site's river (0: none); the truth's discharge varies "
                                 "around the seasonal climatology the twin is given")


class BiasConfig(Frozen):
    """A persistent model error of one tracer, estimated by the filter (see ``twin.forecast``): each day the
    model's value is multiplied by exp(b), b an AR(1) in the state with this stationary sd and timescale. For
    ``chlorophyll`` (a diagnostic, recomputed every day) b is a level, the log of the Chl:N ratio's error: the
    model's chlorophyll is its diagnostic times exp(b), and sd_per_day is the stationary sd of that log factor
    (e.g. 0.25, timescale 60 days)."""
    sd_per_day: float | dict[str, float] = Field(
        default=0.02, description="stationary sd of b, the log-rate per day (chlorophyll: the log factor of its "
                                  "Chl:N ratio); per layer as {layer: sd} (a layer "
                                  "not named, or 0: no bias there; a bottom layer forgets far more slowly "
                                  "than the surface one, so the same rate there means a much larger anomaly)")

    @field_validator("sd_per_day")
    @classmethod
    def _sd_range(cls, v):
        values = v.values() if isinstance(v, dict) else [v]
        layers = [k for k in (v if isinstance(v, dict) else ()) if k not in ("surface", "bottom")]
        if layers:
            raise ValueError(f"unknown layer(s) {layers}; valid: surface, bottom")
        if any(not 0.0 <= x <= 1.0 for x in values):
            raise ValueError(f"sd_per_day must lie in [0, 1] (log-rate per day), got {v}")
        return v

    def sd(self, layer: str) -> float:
        return float(self.sd_per_day.get(layer, 0.0) if isinstance(self.sd_per_day, dict) else self.sd_per_day)
    timescale_days: PositiveFloat = Field(default=30.0, ge=1.0, le=3650.0,
                                          description="e-folding time of b: how long an anomaly is carried")


class EstimatedParameterConfig(Frozen):
    """A parameter the filter estimates with the state (joint state-parameter estimation): each site carries
    the log of a factor on the emulator's input of this parameter, an AR(1) around 0 with this stationary sd and
    timescale; each member steps with its own value (see ``twin.forecast``)."""
    sd: float = Field(default=0.1, gt=0.0, le=2.0, description="stationary sd of the log factor (0.1: about 10 %)")
    timescale_days: PositiveFloat = Field(default=365.0, ge=1.0, le=36500.0,
                                          description="e-folding time of the log factor: how long a value is kept")


def _named_value(values: dict, tracer: str, layer: str | None):
    """A per-tracer setting's value for this tracer and layer: 'tracer/layer' first, then 'tracer'; None."""
    if layer is not None and f"{tracer}/{layer}" in values:
        return values[f"{tracer}/{layer}"]
    return values.get(tracer)


class ModelConfig(Frozen):
    """Which model moves the ensemble: the neural emulator (default) or the process model itself."""
    kind: Literal["emulator", "process"] = "emulator"
    process_log_error_sd: PositiveFloat | dict[str, PositiveFloat] = Field(
        default=0.05, description="multiplicative model error per day of the process model (log sd): one number "
                                  "(a tenth of it for oxygen), or one per tracer or 'tracer/layer' with "
                                  "'default' for the others")
    emulator_error_scale: PositiveFloat | dict[str, PositiveFloat] = Field(
        default=1.0, description="scales the emulator's own model-error estimate: one number, or one per tracer "
                                 "or 'tracer/layer' with 'default' for the others (e.g. {default: 2.0, oxygen: "
                                 "4.0, detritus/bottom: 6.0})")
    substeps: int = Field(default=12, ge=1, le=200)
    process_params: Literal["default", "truth"] | dict[str, float] = Field(
        default="default",
        description="parameters of the model: the defaults; or (a twin experiment only) the truth's own: with "
                    "kind 'process', a perfect-model twin, the bound on what the observations can give; with the "
                    "emulator, the truth's values of the parameters it takes as inputs (pretrain.varied_params); "
                    "or, with kind 'process', the defaults with some values changed, {name: value} within the "
                    "parameter's range (emulators.parameters.PARAM_RANGES)")
    bias: dict[str, BiasConfig] = Field(
        default_factory=dict, description="tracers whose persistent model error the filter estimates in the state; "
                                          "'chlorophyll': the error of the model's Chl:N ratio (b then is the log "
                                          "of that factor, a level rather than a rate per day)")
    estimate_parameters: dict[str, EstimatedParameterConfig] = Field(
        default_factory=dict, description="process parameters the emulator takes as inputs (its pretraining's "
                                          "varied_params) that the filter estimates per site with the state, as "
                                          "the log of a factor on the emulator's value, e.g. {max_growth_rate: "
                                          "{sd: 0.1, timescale_days: 365}}")

    @field_validator("estimate_parameters")
    @classmethod
    def _known_parameters(cls, v):
        from emulators.parameters import PARAM_RANGES
        _require_known(v, tuple(PARAM_RANGES), "process parameter")
        return v

    @field_validator("bias")
    @classmethod
    def _known_variables(cls, v):
        unknown = [t for t in v if t not in STATE_VARIABLES]
        if unknown:
            raise ValueError(f"unknown variable(s) {unknown}; valid: {list(STATE_VARIABLES)}")
        return v

    @field_validator("emulator_error_scale", "process_log_error_sd", mode="before")
    @classmethod
    def _per_tracer(cls, v):
        # Checked here rather than by the union type, whose errors would name both of its branches.
        def positive(x, where):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0:
                raise ValueError(f"{where}must be a number greater than 0")
        if isinstance(v, dict):
            unknown = [t for t in v if t != "default" and t not in OFFSHORE_TRACERS and not _is_tracer_layer(t)]
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; valid: 'default', a tracer of "
                                 f"{list(OFFSHORE_TRACERS)}, or 'tracer/layer' with layer surface or bottom")
            for tracer, x in v.items():
                positive(x, f"{tracer}: ")
            return v
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError("expected a number or a mapping of tracer to number, e.g. {default: 2, oxygen: 8}")
        positive(v, "")
        return v

    @field_validator("process_params")
    @classmethod
    def _params_in_range(cls, v):
        if not isinstance(v, dict):
            return v
        from emulators.parameters import PARAM_RANGES
        _require_known(v, tuple(PARAM_RANGES), "process parameter")
        for name, value in v.items():
            low, high = PARAM_RANGES[name]
            if not low <= value <= high:
                raise ValueError(f"{name}: {value} is outside its range [{low}, {high}]")
        return v

    def process_param_values(self) -> dict[str, float]:
        """The parameter values the config changes from the defaults ({} for 'default' and 'truth')."""
        return dict(self.process_params) if isinstance(self.process_params, dict) else {}

    def error_scale(self, tracer: str, layer: str | None = None) -> float:
        """The factor on the emulator's model-error estimate for this tracer in this layer: its
        'tracer/layer' value, else its tracer's, else the default."""
        scale = self.emulator_error_scale
        if not isinstance(scale, dict):
            return float(scale)
        named = _named_value(scale, tracer, layer)
        return float(scale.get("default", 1.0) if named is None else named)

    def process_error_sd(self, tracer: str, layer: str | None = None) -> float:
        """The process model's daily log error sd for this tracer in this layer ('tracer/layer', else the
        tracer's, else the default). Oxygen, unless named, gets a tenth of the default: it sits near saturation
        and varies by percents, the nutrients by factors."""
        sd = self.process_log_error_sd
        if isinstance(sd, dict):
            named = _named_value(sd, tracer, layer)
            if named is not None:
                return float(named)
            sd = sd.get("default", 0.05)
        return float(sd) / (10.0 if tracer == "oxygen" else 1.0)


class PretrainConfig(Frozen):
    """Pretraining of the emulator on a process-model ensemble (forcing and initial states perturbed)."""
    members: int = Field(default=128, ge=4)
    years: int = Field(default=1, ge=1)
    hidden_sizes: tuple[int, ...] = (96, 96)
    max_steps: int = Field(default=3600, ge=10, description="optimizer steps over the whole curriculum")
    seed: int = Field(default=0, ge=0)
    varied_params: tuple[str, ...] = Field(
        default=(), description="process parameters drawn in their ranges and given to the emulator as inputs")

    @field_validator("varied_params")
    @classmethod
    def _known_params(cls, v):
        from emulators.parameters import ProcessParams
        unknown = [p for p in v if p not in ProcessParams._fields]
        if unknown:
            raise ValueError(f"unknown process parameter(s) {unknown}; valid: {list(ProcessParams._fields)}")
        return v
    river_discharge_m3s: NonNegativeFloat = Field(
        default=0.0, description="mean river discharge of the training runs (0: no river, as the demo)")


class EmulatorConfig(Frozen):
    checkpoint: str | None = Field(default=None, description="emulator checkpoint folder; pretrain if None")
    pretrain: PretrainConfig = PretrainConfig()


class FilterConfig(Frozen):
    method: Literal["etkf", "enkf", "letkf", "ensrf"] = "etkf"
    members: int = Field(default=32, ge=3, le=4096)
    inflation: float = Field(default=1.05, ge=1.0, le=3.0)
    rtps: float = Field(default=0.0, ge=0.0, le=1.0)
    adaptive_inflation: bool = False
    outlier_threshold: PositiveFloat = 4.0
    initial_spread: float = Field(default=0.3, gt=0, le=2)
    representativeness_fraction: float = Field(default=0.7, ge=0, le=1)
    variable_localization: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict,
        description="variable localization: {state variable: share of its analysis increment it takes, 0-1}, "
                    "1 for those not named; 0 keeps a variable no observation sees (zooplankton, detritus) "
                    "from being moved through its sampled correlations with the observed ones")

    localization_radius_km: PositiveFloat | None = Field(
        default=None,
        description="method letkf: Gaspari-Cohn half-width between sites, km (taper 0.21 at this distance, 0 "
                    "beyond twice it; each site is one local domain, twin.localization)")
    cross_variable_localization: dict[str, dict[str, Annotated[float, Field(ge=0.0, le=1.0)]]] = Field(
        default_factory=dict,
        description="method letkf: {observed variable: {state variable: taper 0-1}} on the observations of "
                    "the first in the analysis of the second (Kang et al. 2011), 1 for pairs not named; e.g. "
                    "{ammonium: {nitrate: 0}}: an ammonium sample does not move nitrate. The state variables "
                    "include the model biases ('chlorophyll_bias') and sensor offsets ('oxygen_offset_buoy')")

    @model_validator(mode="after")
    def _radius_with_letkf(self):
        if self.method == "letkf" and self.localization_radius_km is None and not self.cross_variable_localization:
            raise ValueError("method letkf needs localization_radius_km (the Gaspari-Cohn half-width between "
                             "sites, km) or cross_variable_localization")
        if self.method != "letkf":
            for name in ("localization_radius_km", "cross_variable_localization"):
                if getattr(self, name):
                    raise ValueError(f"{name} is for method letkf; method {self.method} analyses every element "
                                     f"with every observation")
        return self

    @field_validator("cross_variable_localization")
    @classmethod
    def _observed_and_state_variables(cls, v):
        _require_known(v, OBSERVED_STATE, "observed variable")
        for observed, shares in v.items():
            # The state's augmented elements too: model biases ('<variable>_bias'), sensor offsets
            # ('<observed variable>_offset_<source name>') and parameter factors ('<parameter>_log_factor');
            # _tapered_elements_are_carried checks the source or parameter against the config.
            augmented = tuple(k for k in shares if (k.partition("_offset_")[0] in OBSERVED_STATE
                                                    and k.partition("_offset_")[2]) or k.endswith("_log_factor"))
            _require_known(shares, STATE_VARIABLES + tuple(f"{x}_bias" for x in STATE_VARIABLES) + augmented,
                           "state variable", f"{observed}: ")
        return v

    @field_validator("variable_localization")
    @classmethod
    def _state_variables(cls, v):
        _require_known(v, STATE_VARIABLES, "state variable")
        return v


class RefitConfig(Frozen):
    """Periodic refit of the emulator to the analyses (Brajard et al. 2020); never when interval is None."""
    interval_days: int | None = Field(default=None, ge=7)
    steps: int = Field(default=400, ge=1)
    holdout_days: int = Field(default=30, ge=1)
    learning_rate: PositiveFloat = 1e-3
    fit: tuple[Literal["parameters", "weights"], ...] = Field(
        default=("parameters", "weights"), min_length=1,
        description="what a refit fits to the analyses: the emulator's parameter inputs (a few values, "
                    "calibrated first) and/or its network weights (fine-tuned)")


class ValidationConfig(Frozen):
    """Withhold a random fraction of the (non-buoy) observations and score the twin's forecast of them."""
    withhold_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)


class HindcastConfig(Frozen):
    start: date | None = Field(default=None, description="first day (default: the experiment's or data's)")
    end: date | None = Field(default=None, description="last day (default: the experiment's or data's)")
    window_days: int = Field(default=365, ge=1)
    forcing_max_gap_days: PositiveFloat = 20.0
    forcing_mode: Literal["interpolate", "causal"] = Field(
        default="interpolate", description="causal: each day's forcing uses no later observation, as in "
                                           "operational cycles (twin cycle); interpolate: across gaps")
    forecast_days: int = Field(default=7, ge=1, le=60)
    calibrate_chlorophyll: int = Field(
        default=0, ge=0, le=8,
        description="passes of the whole cycle that estimate sites[].chlorophyll_scale per site and layer, so "
                    "that the chlorophyll forecasts at the assimilated samples are unbiased (0: none)")
    calibrate_chlorophyll_seasonal: bool = Field(
        default=False, description="the calibration passes also estimate an annual harmonic of the factor "
                                   "(sites[].chlorophyll_seasonal), so that the forecasts are unbiased in every "
                                   "season, not only over the year")

    @model_validator(mode="after")
    def _seasonal_needs_passes(self):
        if self.calibrate_chlorophyll_seasonal and not self.calibrate_chlorophyll:
            raise ValueError("calibrate_chlorophyll_seasonal needs calibrate_chlorophyll passes (e.g. 3)")
        return self


class AlertConfig(Frozen):
    """An alert: probability that ``variable`` at ``site``/``layer`` goes beyond ``threshold`` (in the
    variable's canonical unit) within ``horizon_days``, raised when at least ``probability``.

    Example: bottom oxygen below 63 mmol m-3 (about 2 mg/L) within 7 days with probability >= 0.3.
    """
    name: str = Field(default="", description="id of the alert; derived from its settings when omitted")
    variable: str = Field(min_length=1, description="a state variable, e.g. 'oxygen' or 'chlorophyll'")
    site: str = Field(min_length=1)
    layer: Literal["surface", "bottom"] = "surface"
    threshold: float
    direction: Literal["below", "above"]
    horizon_days: int = Field(default=7, ge=1, le=60)
    probability: float = Field(default=0.5, gt=0, le=1, description="raise when P(exceedance) >= this")
    error_sd: float | None = Field(
        default=None, ge=0, description="observation error sd in the exceedance probability; None: the "
                                        "variable's default (twin.units.DEFAULT_ERROR_SD), 0 when it has none")

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data):
        # Derived before validation because the model is frozen; bad values still fail on their own field.
        if isinstance(data, dict) and not data.get("name"):
            parts = [data.get("layer", "surface"), data.get("variable"), data.get("direction"),
                     data.get("threshold"), data.get("site")]
            if all(p is not None for p in parts):
                data = {**data, "name": "{} {} {} {} at {}".format(*parts)}
        return data

    @field_validator("variable")
    @classmethod
    def _state_variable(cls, v):
        from twin.state_layout import STATE_VARIABLES  # lazy: pulls in JAX, needed only with alerts
        if v not in STATE_VARIABLES:
            hint = difflib.get_close_matches(v, STATE_VARIABLES, n=1)
            raise ValueError(f"alert variable {v!r} is not a state variable of the twin"
                             + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + f"; valid: {', '.join(STATE_VARIABLES)}")
        return v


class TwinConfig(Frozen):
    """The whole configuration of a twin run."""
    name: str = Field(default="twin", min_length=1)
    description: str = ""
    sites: tuple[SiteConfig, ...] = ()
    sources: tuple[SourceConfig, ...] = ()
    qc: QcConfig = QcConfig()
    experiment: TwinExperimentConfig | None = None
    hindcast: HindcastConfig = HindcastConfig()
    model: ModelConfig = ModelConfig()
    emulator: EmulatorConfig = EmulatorConfig()
    filter: FilterConfig = FilterConfig()
    refit: RefitConfig = RefitConfig()
    validation: ValidationConfig = ValidationConfig()
    alerts: tuple[AlertConfig, ...] = ()
    output: OutputConfig = OutputConfig()
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _unique_sites(self):
        names = [s.name for s in self.sites]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate site names {dup}")
        sources = [s.name for s in self.sources if s.name]
        dup = sorted({n for n in sources if sources.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate source names {dup}")
        return self

    def augmented_names(self) -> set[str]:
        """Names of the augmented state elements of this config's twin: its model biases, its parameter factors
        and its sensor offsets (of its named sources, and of a twin experiment's buoy, the source named 'buoy')."""
        names = {f"{v}_bias" for v in self.model.bias}
        names |= {f"{p}_log_factor" for p in self.model.estimate_parameters}
        names |= {f"{v}_offset_{s.name}" for s in self.sources for v in s.offsets}
        if self.experiment is not None and self.experiment.buoy:
            names |= {f"{v}_offset_buoy" for v in self.experiment.buoy_offsets}
        return names

    def without_absent_tapers(self) -> "TwinConfig":
        """This config with the cross-variable tapers on augmented elements it no longer carries dropped (a
        data-denial run that removes the buoy removes its offset too)."""
        carried = set(STATE_VARIABLES) | self.augmented_names()
        pairs = {obs: {v: t for v, t in shares.items() if v in carried}
                 for obs, shares in self.filter.cross_variable_localization.items()}
        pairs = {obs: shares for obs, shares in pairs.items() if shares}
        if pairs == self.filter.cross_variable_localization:
            return self
        return self.model_copy(update={"filter": self.filter.model_copy(update={"cross_variable_localization": pairs})})

    @model_validator(mode="after")
    def _tapered_elements_are_carried(self):
        named = {v for shares in self.filter.cross_variable_localization.values() for v in shares}
        carried = self.augmented_names()
        absent = sorted(n for n in named if n not in STATE_VARIABLES and n not in carried)
        if absent:
            raise ValueError(f"filter.cross_variable_localization names {absent}, which the state does not carry "
                             f"(model.bias, model.estimate_parameters and sources[].offsets add elements; this "
                             f"config's: {sorted(carried)})")
        return self

    @model_validator(mode="after")
    def _truth_params_need_an_experiment(self):
        if self.model.process_params == "truth" and self.experiment is None:
            raise ValueError("model.process_params 'truth' needs an 'experiment' section: only a twin experiment "
                             "knows its truth's parameters")
        return self

    @model_validator(mode="after")
    def _estimated_parameters_need_the_emulator(self):
        estimated = list(self.model.estimate_parameters)
        if estimated and self.model.kind != "emulator":
            raise ValueError(f"model.estimate_parameters {estimated} needs model.kind 'emulator': the factors act "
                             f"on the emulator's parameter inputs")
        varied = self.emulator.pretrain.varied_params if self.emulator.checkpoint is None else None
        if estimated and varied is not None:
            missing = [p for p in estimated if p not in varied]
            if missing:
                raise ValueError(f"model.estimate_parameters {missing}: the emulator pretrained here does not take "
                                 f"them as inputs (emulator.pretrain.varied_params: {list(varied)})")
        return self

    @model_validator(mode="after")
    def _param_values_need_the_process_model(self):
        if self.model.process_param_values() and self.model.kind != "process":
            raise ValueError("model.process_params as values needs model.kind 'process' (the emulator takes its "
                             "parameters from pretraining and refits)")
        return self

    @model_validator(mode="after")
    def _seasonal_boundary_needs_the_process_model(self):
        seasonal = [s.name for s in self.sites if s.offshore_seasonal or s.boundary_seasonal]
        if seasonal and self.model.kind != "process":
            raise ValueError(f"sites {seasonal}: a seasonal offshore water (offshore_seasonal, boundary_seasonal) "
                             f"is for model.kind process; the emulator learnt a constant one")
        return self


def _key_path(loc) -> str:
    return ".".join(str(p) for p in loc) if loc else "<root>"


def _fields_at(model: type[BaseModel], loc) -> list[str]:
    """Valid keys of the model section that ``loc`` (path to an unknown key) points into."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is not None:  # otherwise ``part`` is a key of a dict section: stay on its model
                current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation):
    import typing
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One readable line per pydantic error: key path, problem, value, did-you-mean hint."""
    problems = []
    for err in exc.errors():
        loc = err.get("loc", ())
        path = _key_path(loc)
        if err["type"] == "extra_forbidden":
            key = str(loc[-1]) if loc else ""
            valid = _fields_at(model, loc)
            hint = difflib.get_close_matches(key, valid, n=1)
            msg = f"{path}: unknown key"
            msg += f" (did you mean {hint[0]!r}?)" if hint else ""
            if valid:
                msg += f"; valid keys here: {', '.join(valid)}"
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "{...}"
            msg = f"{path}: {err['msg'].removeprefix('Value error, ')} (got {shown})"
        problems.append(msg)
    return problems


def parse_config(data: Any, source: str = "<config>", model: type[BaseModel] = TwinConfig):
    """Validate already-loaded YAML data into ``model``; raise ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"<root>: expected a mapping of keys, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc, model)) from None


def read_yaml(path: str | Path) -> Any:
    """Load a YAML file; a syntax error becomes a ConfigError naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}invalid YAML ({getattr(exc, 'problem', exc)})"]) from None


def load_config(path: str | Path, overrides: dict | None = None) -> TwinConfig:
    """Load, validate and resolve a config file (relative paths become absolute)."""
    path = Path(path)
    data = read_yaml(path)
    if overrides:
        data = {**(data or {}), **overrides}
    config = parse_config(data, str(path))
    return resolve_paths(config, path.parent)


def resolve_paths(config: TwinConfig, base: Path) -> TwinConfig:
    def absolute(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())
    sources = tuple(s.model_copy(update={"path": absolute(s.path), "mapping": absolute(s.mapping)})
                    for s in config.sources)
    emulator = config.emulator.model_copy(update={"checkpoint": absolute(config.emulator.checkpoint)})
    # output.directory stays relative to the working directory, like --out.
    return config.model_copy(update={"sources": sources, "emulator": emulator})


def config_to_dict(config: BaseModel) -> dict:
    return config.model_dump(mode="json")


def config_hash(config: BaseModel) -> str:
    """Stable short hash of a resolved config (for checkpoints and lineage)."""
    text = json.dumps(config_to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)


def write_resolved_config(config: BaseModel, directory: str | Path) -> Path:
    """Write ``resolved_config.yaml`` next to a run's outputs (atomically)."""
    from twin.observations import atomic_write
    target = Path(directory) / "resolved_config.yaml"
    text = dump_config(config)
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))

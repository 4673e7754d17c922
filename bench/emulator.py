"""Emulator speed benchmark: the neural emulator against the process model, same members, sites and years.

Runs the NPZD-O2 process model (``process_model.run``, vmapped over members x sites, 12 sub-steps a day) and
the emulator (``network.rollout``, one network step a day, the batch of members x sites in each matmul) over
the same forcing, initial states and simulated years, each jitted and timed warm (best of ``--repeat``).
The emulator's time includes turning the Forcing into its input features. Its weights do not change its
cost, so without ``--checkpoint`` an untrained network of the demo architecture is timed.

Prints member-years per second of both and their ratio; the last line is JSON.

Usage: python bench/emulator.py [--members 64] [--sites 2] [--years 2] [--repeat 3] [--checkpoint DIR]
                                [--hidden 128,128]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from emulators import process_model  # noqa: E402
from emulators.checkpoint import load_checkpoint  # noqa: E402
from emulators.network import Emulator, ModelError, NetworkConfig, build_network, rollout  # noqa: E402
from emulators.normalisation import fit_normalisation, fit_ranges  # noqa: E402
from emulators.parameters import default_params, default_site  # noqa: E402
from emulators.process_model import initial_state  # noqa: E402
from emulators.training import (  # noqa: E402
    EnsembleSpec,
    TrainConfig,
    _member_forcing,
    forcing_feature_names,
    forcing_inputs,
)


def untrained_emulator(num_sites: int, hidden_sizes: tuple[int, ...] | None = None) -> Emulator:
    """The demo architecture (``configs/demo.yaml``: hidden sizes and parameter inputs) with initial weights and a
    placeholder normalisation (speed does not depend on them); ``hidden_sizes`` overrides the demo's."""
    from twin.config import load_config
    pretrain = load_config(REPO / "configs" / "demo.yaml").emulator.pretrain
    train_config = TrainConfig(hidden_sizes=hidden_sizes or pretrain.hidden_sizes)
    config = NetworkConfig(
        state_names=tuple(process_model.state_names(2)),
        forcing_names=forcing_feature_names(2, pretrain.varied_params),
        num_sites=num_sites,
        site_features=train_config.site_features,
        hidden_sizes=train_config.hidden_sizes,
        activation=train_config.activation,
    )
    graphdef, weights = nnx.split(build_network(config))
    rng = np.random.default_rng(0)
    states = np.exp(rng.normal(size=(2, 3, config.num_state)))
    forcing = rng.normal(size=(2, 2, config.num_forcing))
    zeros = jnp.zeros(config.num_state)
    return Emulator(config, graphdef, weights, fit_normalisation(states, forcing), fit_ranges(states, forcing),
                    ModelError(zeros, zeros, zeros, zeros))


def best_time(fn, repeat: int) -> float:
    jax.block_until_ready(fn())  # compile and warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--years", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checkpoint", default=None, help="time a trained emulator from this checkpoint")
    parser.add_argument("--hidden", default=None,
                        help="hidden sizes of the untrained network (default: the demo's), e.g. 96,96")
    args = parser.parse_args()

    num_days = 365 * args.years
    latitudes = tuple(43.24 + 2.0 * s for s in range(args.sites))
    spec = EnsembleSpec(num_members=args.members, num_years=args.years, latitudes=latitudes)
    keys = jax.random.split(jax.random.key(0), args.members * args.sites)
    forcings = [
        _member_forcing(keys[m * args.sites + s], spec, s, num_days, True)
        for m in range(args.members)
        for s in range(args.sites)
    ]
    # (members, sites, T, ...) for the process model; the emulator takes time first.
    forcing = jax.tree_util.tree_map(
        lambda *a: jnp.stack(a).reshape((args.members, args.sites) + a[0].shape), *forcings
    )
    sites = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *(default_site(2, latitude=lat) for lat in latitudes))
    params = default_params()
    state0 = jnp.broadcast_to(initial_state(2), (args.members, args.sites, 16))

    run_sites = jax.vmap(process_model.run, in_axes=(0, 0, None, 0))
    run_members = jax.jit(jax.vmap(run_sites, in_axes=(0, 0, None, None)))
    process_seconds = best_time(lambda: run_members(state0, forcing, params, sites), args.repeat)

    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else None
    emulator = load_checkpoint(args.checkpoint) if args.checkpoint else untrained_emulator(args.sites, hidden)
    if emulator.config.num_sites < args.sites:
        sys.exit(f"bench/emulator.py: the checkpoint has {emulator.config.num_sites} sites, asked for {args.sites}")
    names = emulator.config.forcing_names
    forcing_time_first = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 2, 0), forcing)

    @jax.jit
    def run_emulator(state0, forcing, weights):
        features = forcing_inputs(names, forcing, params)  # (T, members, sites, F)
        return rollout(emulator.graphdef, weights, emulator.normalisation, state0, features,
                       forcing.day_of_year, jnp.arange(args.sites))

    emulator_seconds = best_time(lambda: run_emulator(state0, forcing_time_first, emulator.weights), args.repeat)
    trajectory = run_emulator(state0, forcing_time_first, emulator.weights)
    finite = bool(jnp.all(jnp.isfinite(trajectory)))

    member_years = args.members * args.sites * args.years
    result = {
        "members": args.members,
        "sites": args.sites,
        "years": args.years,
        "member_years": member_years,
        "substeps_process": process_model.DEFAULT_SUBSTEPS,
        "hidden_sizes": list(emulator.config.hidden_sizes),
        "trained_weights": bool(args.checkpoint),
        "seconds_process": round(process_seconds, 4),
        "seconds_emulator": round(emulator_seconds, 4),
        "member_years_per_s_process": round(member_years / process_seconds, 2),
        "member_years_per_s_emulator": round(member_years / emulator_seconds, 2),
        "ratio": round(process_seconds / emulator_seconds, 2),
        "emulator_finite": finite,
        "devices": [str(d) for d in jax.devices()],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"process model: {result['member_years_per_s_process']} member-years/s ({process_seconds:.3f} s)")
    print(f"emulator:      {result['member_years_per_s_emulator']} member-years/s ({emulator_seconds:.3f} s)")
    print(f"ratio emulator/process: {result['ratio']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Lorenz-96 (DAPPER's sakov2008 set-up): this project against DAPPER, in the same run.

For each case it prints the analysis RMSE (time mean after burn-in) and the time per cycle of ours (the
whole window compiled as one ``lax.scan``, compile time excluded and printed apart) and of DAPPER as it
runs (``xp.assimilate``, its own statistics included), the speed ratio (DAPPER / ours), and for ETKF and
EnKF a lean numpy loop of the same numerics (``us_per_cycle_dapper_lean``). Then a 10^5-element Lorenz-96
with the LETKF (in a child process started first, so that its peak memory is its own). Peak memory is
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. The last line is JSON.

DAPPER runs without random rotation (``rot=False``) so that both sides do the same numerics; its
inflation is on the analysis anomalies, ours too here (``inflation_position="posterior"``). The adaptive
case has no Anderson (2009) counterpart in DAPPER: its reference is DAPPER's ``EnKF_N`` (also free of a
tuned factor). If DAPPER cannot be imported, ours still runs and the DAPPER fields are null.

Usage: python bench/l96.py [--cycles 10000] [--dapper-cycles 2000] [--burn-in 500] [--large-dim 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = [
    dict(name="etkf_n24", method="etkf", N=24, infl=1.013, dapper="EnKF('Sqrt', N=24, infl=1.013)"),
    dict(name="enkf_n40", method="enkf", N=40, infl=1.06, dapper="EnKF('PertObs', N=40, infl=1.06)"),
    dict(name="letkf_n7_r4", method="letkf", N=7, infl=1.04, loc_rad=4.0,
         dapper="LETKF(N=7, infl=1.04, loc_rad=4)"),
    dict(name="etkf_n24_adaptive", method="etkf", N=24, infl=None, dapper="EnKF_N(N=24)"),
]


def peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB (getrusage ru_maxrss, kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def vm_hwm_mib() -> float | None:
    """Peak resident memory from /proc/self/status (VmHWM), MiB, where available."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------------- ours

def run_ours(case: dict, cycles: int, burn_in: int, seed: int = 0, state_dim: int = 40) -> dict:
    import jax

    import assimilation as da
    from assimilation.testbeds import lorenz96_sakov2008, simulate_twin

    testbed = lorenz96_sakov2008(state_dim)
    total = burn_in + cycles
    twin = jax.jit(simulate_twin, static_argnums=(0, 2, 3))(testbed, jax.random.key(seed), total, case["N"])
    if case["infl"] is None:
        params = da.FilterParams(case["method"], adaptive_inflation=True)
    else:
        params = da.FilterParams(case["method"], case["infl"], "posterior")
    loc = None
    if case["method"] == "letkf":
        loc = da.localization_1d(np.arange(state_dim), np.arange(state_dim), case["loc_rad"], "dapper",
                                 period=state_dim)
    key = jax.random.key(seed + 1)

    def window():
        out = da.run_cycles(testbed.forecast, twin.ensemble, twin.observations, key, params, localization=loc)
        return jax.block_until_ready(out)

    t0 = time.perf_counter()
    window()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = window()
    run_s = time.perf_counter() - t0
    skill = da.assess_skill(out.analysis_mean, out.analysis_spread, twin.truth, min(burn_in, total - 1))
    return dict(rmse=float(skill.rmse), spread=float(skill.spread), diverged=bool(skill.diverged),
                us_per_cycle=run_s / total * 1e6, compile_s=compile_s, cycles=total)


# ------------------------------------------------------------------------------------------- DAPPER

def import_dapper():
    try:
        import dapper  # noqa: F401
        import dapper.tools.progressbar as progressbar

        progressbar.disable_progbar = True
        return None
    except Exception as error:  # any failure to import is reported, the bench goes on with ours
        return f"{type(error).__name__}: {error}"


def run_dapper(case: dict, cycles: int, burn_in: int, seed: int = 0) -> dict:
    import dapper as dpr
    import dapper.da_methods as dam
    import dapper.mods as modelling
    from dapper.mods.Lorenz96.sakov2008 import HMM as SAKOV2008

    hmm = SAKOV2008.copy()
    dt = 0.05
    hmm.tseq = modelling.Chronology(dt, dko=1, Ko=burn_in + cycles - 1, BurnIn=burn_in * dt)
    dpr.set_seed(seed + 3000)
    xx, yy = hmm.simulate()
    xp = {"etkf_n24": lambda: dam.EnKF("Sqrt", N=24, infl=1.013),
          "enkf_n40": lambda: dam.EnKF("PertObs", N=40, infl=1.06),
          "letkf_n7_r4": lambda: dam.LETKF(N=7, infl=1.04, loc_rad=4),
          "etkf_n24_adaptive": lambda: dam.EnKF_N(N=24)}[case["name"]]()
    t0 = time.perf_counter()
    xp.assimilate(hmm, xx, yy)
    run_s = time.perf_counter() - t0
    xp.stats.average_in_time()
    return dict(rmse=float(xp.avrgs.err.rms.a.val), us_per_cycle=run_s / hmm.tseq.K * 1e6, cycles=hmm.tseq.K)


# ------------------------------------------------------------------------------------------- lean numpy

def _l96(x):
    return (np.roll(x, -1, -1) - np.roll(x, 2, -1)) * np.roll(x, 1, -1) - x + 8.0


def _rk4(x, dt=0.05):
    k1 = _l96(x)
    k2 = _l96(x + 0.5 * dt * k1)
    k3 = _l96(x + 0.5 * dt * k2)
    k4 = _l96(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2.0 * (k2 + k3) + k4)


def run_lean(case: dict, cycles: int, burn_in: int, seed: int = 0) -> dict | None:
    """A plain numpy loop of the same numerics (ETKF and stochastic EnKF only), R = I, H = I."""
    if case["name"] not in ("etkf_n24", "enkf_n40"):
        return None
    rng = np.random.default_rng(seed)
    n, N, infl = 40, case["N"], case["infl"]
    x0 = np.zeros(n)
    x0[0] = 1.0
    x = x0 + np.sqrt(0.001) * rng.standard_normal(n)
    E = x0 + np.sqrt(0.001) * rng.standard_normal((N, n))
    total = burn_in + cycles
    errors = np.empty(total)
    t0 = time.perf_counter()
    for k in range(total):
        x = _rk4(x)
        y = x + rng.standard_normal(n)
        E = _rk4(E)
        mu = E.mean(0)
        A = E - mu
        G = A @ A.T + (N - 1) * np.eye(N)
        d, V = np.linalg.eigh(G)
        if case["method"] == "etkf":
            T = (V * np.sqrt((N - 1) / d)) @ V.T
            w = V @ ((V.T @ (A @ (y - mu))) / d)
            E = mu + (w[None, :] + T) @ A
        else:
            eps = rng.standard_normal((N, n))
            D = (y - mu)[None, :] - A + (eps - eps.mean(0))
            E = E + (((D @ A.T) @ V / d) @ V.T) @ A
        mu = E.mean(0)
        E = mu + infl * (E - mu)
        errors[k] = np.sqrt(np.mean((mu - x) ** 2))
    run_s = time.perf_counter() - t0
    return dict(rmse=float(errors[burn_in:].mean()), us_per_cycle=run_s / total * 1e6)


# ------------------------------------------------------------------------------------------- 10^5 LETKF

def run_large(state_dim: int, cycles: int) -> dict:
    case = dict(name="letkf_large", method="letkf", N=7, infl=1.04, loc_rad=4.0)
    result = run_ours(case, cycles, 0, state_dim=state_dim)
    result.update(state_dim=state_dim, N=7, peak_rss_mib=peak_rss_mib(), vm_hwm_mib=vm_hwm_mib())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000, help="our cycles after burn-in")
    parser.add_argument("--dapper-cycles", type=int, default=2_000, help="DAPPER and lean cycles after burn-in")
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--large-dim", type=int, default=100_000, help="state size of the large LETKF (0: skip)")
    parser.add_argument("--large-cycles", type=int, default=10)
    parser.add_argument("--large-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.large_only:
        print(json.dumps(run_large(args.large_dim, args.large_cycles)))
        return

    # The large LETKF runs first, in a child process started while this one is still small: Linux carries
    # ru_maxrss across fork/exec, so a child started later would report this process's peak.
    large_result = None
    if args.large_dim:
        child = subprocess.run([sys.executable, __file__, "--large-only", "--large-dim", str(args.large_dim),
                                "--large-cycles", str(args.large_cycles)], capture_output=True, text=True)
        if child.returncode == 0:
            large = json.loads(child.stdout.strip().splitlines()[-1])
            large_result = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in large.items()}
            print(f"LETKF n={large['state_dim']} N={large['N']}: {large['us_per_cycle'] / 1e3:.1f} ms/cycle "
                  f"(compile {large['compile_s']:.1f} s), peak memory {large['peak_rss_mib']:.0f} MiB (ru_maxrss), "
                  f"rmse {large['rmse']:.3f}")
        else:
            large_result = dict(error=child.stderr.strip().splitlines()[-1:])
            print(f"large LETKF failed: {child.stderr[-2000:]}")

    import jax

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cpu(s)")
    dapper_error = import_dapper()
    if dapper_error:
        print(f"DAPPER NOT AVAILABLE ({dapper_error}): running ours only; install the bench extra "
              "(dapper==1.8.1 needs Python >= 3.12; on 3.11 dapper==1.7.1 works)")
    else:
        import dapper

        print(f"DAPPER {getattr(dapper, '__version__', '?')} from {Path(dapper.__file__).parent}")

    cases = []
    for case in CASES:
        ours = run_ours(case, args.cycles, args.burn_in)
        lean = run_lean(case, args.dapper_cycles, args.burn_in)
        theirs = None if dapper_error else run_dapper(case, args.dapper_cycles, args.burn_in)
        row = dict(name=case["name"], method=case["method"], N=case["N"], rmse_ours=round(ours["rmse"], 4),
                   rmse_dapper=None if theirs is None else round(theirs["rmse"], 4),
                   us_per_cycle_ours=round(ours["us_per_cycle"], 1),
                   us_per_cycle_dapper=None if theirs is None else round(theirs["us_per_cycle"], 1),
                   speed_ratio=None if theirs is None else round(theirs["us_per_cycle"] / ours["us_per_cycle"], 1),
                   us_per_cycle_dapper_lean=None if lean is None else round(lean["us_per_cycle"], 1),
                   rmse_lean=None if lean is None else round(lean["rmse"], 4),
                   diverged_ours=ours["diverged"], compile_s_ours=round(ours["compile_s"], 1),
                   cycles_ours=ours["cycles"], cycles_dapper=None if theirs is None else theirs["cycles"],
                   dapper_method=case["dapper"])
        cases.append(row)
        print(f"{row['name']:>18}: rmse ours {row['rmse_ours']} dapper {row['rmse_dapper']} lean "
              f"{row['rmse_lean']} | us/cycle ours {row['us_per_cycle_ours']} dapper "
              f"{row['us_per_cycle_dapper']} lean {row['us_per_cycle_dapper_lean']} | speed ratio "
              f"{row['speed_ratio']} | compile {row['compile_s_ours']} s", flush=True)
    result = dict(cases=cases, dapper_available=dapper_error is None, dapper_error=dapper_error,
                  peak_rss_mib=round(peak_rss_mib(), 1), large_letkf=large_result)
    print(f"peak memory of this process (ours + DAPPER): {result['peak_rss_mib']} MiB")

    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""`massgate bench totalizer`: samples/s of each kernel, next to numpy and plain Python.

One run, one core (numba's kernels are single-threaded loops; numpy is held to one thread
too). Each row integrates the same synthetic signal: a flow with noise, 1 % bad samples,
a temperature and a pressure. The numpy equivalents compute the same outputs vectorized
(totals, estimated quantity, gap, covered and flow time; np.sum's pairwise summation stands in
for the compensated sum), and `agree` checks they do; the pure-Python references are
agent/totalize/reference.py, timed on a slice and scaled.

The first-call rows run a fresh interpreter twice with one NUMBA_CACHE_DIR: the first finds
it empty and compiles, the second loads what the first wrote, as a gateway's second start
does. That is the start-up cost a Raspberry Pi pays.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

MAX_GAP = 5.0
MODEL = (998.2, 293.15, 2.1e-4, 4.6e-10)  # ρ_ref, T_ref, β, κ of the volume kernel
SPAN = 2.0**32 * 0.1  # a uint32 register of 0.1 kg
MAX_RATE = 50.0


@dataclass(frozen=True, slots=True)
class Row:
    kernel: str
    numba: float  # samples/s
    numpy: float
    python: float

    @property
    def over_numpy(self) -> float:
        return self.numba / self.numpy


def signal(n: int, seed: int = 1) -> dict[str, Any]:
    """10 Hz samples with 1 % bad, one gap in a thousand, and spells of reverse flow."""
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(n) < 0.001, 30.0, 0.1)
    t = np.cumsum(steps)
    q = 5.0 + rng.normal(0.0, 0.05, n)
    q[np.sin(t / 97.0) < -0.9] *= -1.0
    good = rng.random(n) > 0.01
    register = np.cumsum(np.where(good, 0.5, 0.0)) % SPAN
    register[n // 2 :] -= register[n // 2] - 7.0  # a meter reset: one implausible step
    return {
        "t": t,
        "q": q,
        "qv": q / 1000.0,
        "temperature": 293.15 + 10.0 * np.sin(t / 600.0),
        "pressure": 4e5 + rng.normal(0.0, 1e3, n),
        "good": good,
        "register": register,
        "level": rng.uniform(0.0, 3.5, n),
    }


LEVELS = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 3.5])
VOLUMES = np.array([0.0, 1.8, 3.9, 8.2, 12.6, 14.7])


# --- numpy equivalents --------------------------------------------------------------------
# The same outputs as the kernels, vectorized: what a careful numpy programmer would write.


def np_trapezoid(
    t: Array, q: Array, good: npt.NDArray[np.bool_], max_gap: float, cutoff: float
) -> dict[str, float]:
    ok = good & np.isfinite(q) & ~np.isnan(t)
    idx = np.flatnonzero(ok)
    tg = t[idx]
    qg = np.where(np.abs(q[idx]) < cutoff, 0.0, q[idx])
    # A time stamp not after the last accepted one carries no interval: drop such samples.
    if tg.size:
        accepted = np.concatenate(([True], tg[1:] > np.maximum.accumulate(tg)[:-1]))
        idx, tg, qg = idx[accepted], tg[accepted], qg[accepted]
    dt = np.diff(tg)
    bridged = dt <= max_gap
    fwd = np.maximum(qg, 0.0)
    rev = np.maximum(-qg, 0.0)
    f = 0.5 * (fwd[:-1] + fwd[1:]) * dt
    r = 0.5 * (rev[:-1] + rev[1:]) * dt
    bad_before = np.cumsum(~ok)
    had_bad = bad_before[idx[1:]] - bad_before[idx[:-1]] > 0
    flowing = (qg[:-1] != 0.0) | (qg[1:] != 0.0)
    return {
        "forward": float(np.sum(f[bridged])),
        "reverse": float(np.sum(r[bridged])),
        "estimated": float(np.sum((f + r)[bridged & had_bad])),
        "gap": float(np.sum(dt[~bridged])),
        "covered": float(np.sum(dt[bridged])),
        "flow_time": float(np.sum(dt[bridged & flowing])),
    }


def np_flow(s: dict[str, Any]) -> dict[str, float]:
    return np_trapezoid(s["t"], s["q"], s["good"], MAX_GAP, 0.0)


def np_volume(s: dict[str, Any]) -> dict[str, float]:
    ref, t_ref, beta, kappa = MODEL
    rho = ref / ((1.0 + beta * (s["temperature"] - t_ref)) * (1.0 - kappa * s["pressure"]))
    return np_trapezoid(s["t"], s["qv"] * rho, s["good"], MAX_GAP, 0.0)


def np_register(s: dict[str, Any]) -> dict[str, float]:
    ok = s["good"] & np.isfinite(s["register"])
    t, r = s["t"][ok], s["register"][ok]
    dt = np.diff(t)
    delta = np.diff(r)
    delta = np.where(delta < 0.0, delta + SPAN, delta)
    plausible = (delta <= MAX_RATE * dt) & (MAX_RATE * dt < SPAN) & (dt > 0.0)
    return {
        "forward": float(np.sum(delta[plausible])),
        "faults": float(np.count_nonzero(~plausible & (dt > 0.0))),
        "gap": float(np.sum(dt[~plausible & (dt > 0.0)])),
        "covered": float(np.sum(dt[plausible])),
        "flow_time": float(np.sum(dt[plausible & (delta > 0.0)])),
    }


def np_strapping(s: dict[str, Any]) -> Array:
    level = s["level"]
    out: Array = np.interp(level, LEVELS, VOLUMES)
    out[(level < LEVELS[0]) | (level > LEVELS[-1])] = np.nan
    return out


# --- the kernels and their references as uniform calls -----------------------------------


def _calls(module: Any, lists: bool) -> dict[str, Callable[[dict[str, Any]], object]]:
    """The four kernels of `module` (agent.kernels or agent.reference) as calls on a signal."""
    from ..totalize import kernels  # noqa: PLC0415  # numba is imported only when measured

    levels, volumes = (LEVELS.tolist(), VOLUMES.tolist()) if lists else (LEVELS, VOLUMES)

    def state() -> Any:
        fresh = kernels.new_state()
        return fresh.tolist() if lists else fresh

    return {
        "integrate_flow": lambda s: module.integrate_flow(
            s["t"], s["q"], s["good"], state(), MAX_GAP, 0.0
        ),
        "integrate_volume (T/P)": lambda s: module.integrate_volume(
            s["t"],
            s["qv"],
            s["temperature"],
            s["pressure"],
            s["good"],
            state(),
            MAX_GAP,
            0.0,
            *MODEL,
        ),
        "difference_register": lambda s: module.difference_register(
            s["t"], s["register"], s["good"], state(), SPAN, MAX_RATE
        ),
        "strapping": lambda s: module.strapping(s["level"], levels, volumes),
    }


def _numba_calls() -> dict[str, Callable[[dict[str, Any]], object]]:
    from ..totalize import kernels  # noqa: PLC0415

    return _calls(kernels, lists=False)


def warm_cache() -> float:
    """Compile every kernel into NUMBA_CACHE_DIR now, and return the seconds it took.

    deploy/install.sh runs this as the service user at install time, so that the service's
    first start on a Raspberry Pi loads compiled kernels instead of compiling them.
    """
    from ..totalize.engine import warmed  # noqa: PLC0415  # numba only when it runs

    started = time.perf_counter()
    warmed("numba")  # the warm-up the agent itself runs, with the totalizer's argument types
    return time.perf_counter() - started


def _python_calls() -> dict[str, Callable[[dict[str, Any]], object]]:
    from ..totalize import reference  # noqa: PLC0415

    return _calls(reference, lists=True)


NUMPY_CALLS: dict[str, Callable[[dict[str, Any]], object]] = {
    "integrate_flow": np_flow,
    "integrate_volume (T/P)": np_volume,
    "difference_register": np_register,
    "strapping": np_strapping,
}


def agree(samples: int = 100_000, tolerance: float = 1e-9) -> list[str]:
    """Where the numpy equivalents and the kernels disagree (nothing, if the rows compare
    like with like)."""
    from ..totalize import kernels  # noqa: PLC0415

    s = signal(samples)
    calls = _numba_calls()
    names = {
        "forward": kernels.FORWARD,
        "reverse": kernels.REVERSE,
        "estimated": kernels.ESTIMATED,
        "gap": kernels.GAP_TIME,
        "covered": kernels.COVERED_TIME,
        "flow_time": kernels.FLOW_TIME,
        "faults": kernels.FAULTS,
    }
    problems = []
    for name in ("integrate_flow", "integrate_volume (T/P)", "difference_register"):
        state = calls[name](s)
        assert isinstance(state, np.ndarray)
        for field, want in NUMPY_CALLS[name](s).items():  # type: ignore[attr-defined]
            slot = names[field]
            if slot in (kernels.FORWARD, kernels.REVERSE):
                got = kernels.total(state, slot)
            else:
                got = float(state[slot])
            if not math.isclose(got, want, rel_tol=tolerance, abs_tol=tolerance):
                problems.append(f"{name} {field}: numba {got!r}, numpy {want!r}")
    volumes = calls["strapping"](s)
    if not np.allclose(volumes, np_strapping(s), rtol=tolerance, equal_nan=True):  # type: ignore[arg-type]
        problems.append("strapping: volumes differ")
    return problems


def _rate(call: Callable[[dict[str, Any]], object], s: dict[str, Any], repeat: int) -> float:
    """Samples/s of the best of `repeat` runs (the least disturbed by the rest of the box)."""
    n = len(s["t"])
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        call(s)
        best = min(best, time.perf_counter() - t0)
    return n / best


def _as_lists(s: dict[str, Any]) -> dict[str, Any]:
    return {key: value.tolist() for key, value in s.items()}


def measure(samples: int, python_samples: int, repeat: int = 5) -> list[Row]:
    s = signal(samples)
    small = _as_lists(signal(python_samples))
    numba_calls = _numba_calls()
    python_calls = _python_calls()
    rows = []
    for name, kernel in numba_calls.items():
        kernel(signal(16))  # compile or load from the cache outside the measurement
        rows.append(
            Row(
                name,
                numba=_rate(kernel, s, repeat),
                numpy=_rate(NUMPY_CALLS[name], s, repeat),
                python=_rate(python_calls[name], small, 1),
            )
        )
    return rows


_FIRST_CALL = """
import json, time
t0 = time.perf_counter()
import numba  # noqa: F401
t1 = time.perf_counter()
from massgate.agent.bench import totalizer as bench_totalizer
from massgate.agent.totalize import kernels
s = bench_totalizer.signal(16)
calls = bench_totalizer._numba_calls()
t2 = time.perf_counter()
for call in calls.values():
    call(s)
t3 = time.perf_counter()
print(json.dumps({"import_numba": t1 - t0, "first_call": t3 - t2}))
"""


def first_calls() -> tuple[dict[str, float], dict[str, float]]:
    """(cold, warm) timings of the first call of every kernel in a fresh interpreter."""
    results = []
    with tempfile.TemporaryDirectory(prefix="massgate-numba-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-c", _FIRST_CALL],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results[0], results[1]


def _one_core() -> None:
    """Pin this process (and the interpreters it starts) to one CPU: figures per core."""
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[0]})


def report(samples: int, python_samples: int) -> str:
    _one_core()
    rows = measure(samples, python_samples)
    cold, warm = first_calls()
    problems = agree()
    lines = [
        f"massgate bench totalizer: {samples:,} samples per kernel call (pure Python: "
        f"{python_samples:,}, scaled), one core, best of 5",
        f"{'kernel':<24}{'numba M/s':>11}{'numpy M/s':>11}{'Python M/s':>12}{'numba/numpy':>13}",
    ]
    for r in rows:
        lines.append(
            f"{r.kernel:<24}{r.numba / 1e6:>11.1f}{r.numpy / 1e6:>11.1f}{r.python / 1e6:>12.2f}"
            f"{r.over_numpy:>12.1f}x"
        )
    lines.append(
        f"first call of all kernels in a new process: empty cache {cold['first_call']:.2f} s, "
        f"warm cache {warm['first_call']:.2f} s (import numba {warm['import_numba']:.2f} s), "
        "NUMBA_CACHE_DIR a new directory"
    )
    lines.append(
        "numpy and numba outputs agree to 1e-9"
        if not problems
        else "numpy and numba DISAGREE: " + "; ".join(problems)
    )
    volume = next(r for r in rows if r.kernel.startswith("integrate_volume"))
    lines.append(
        f"targets: T/P volume kernel ≥ 100 M samples/s ({volume.numba / 1e6:.0f}) and ≥ 5x "
        f"numpy ({volume.over_numpy:.1f}x); warm first call ≤ 1 s ({warm['first_call']:.2f})"
    )
    return "\n".join(lines)

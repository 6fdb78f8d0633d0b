"""The totalizer's arithmetic: numba's kernels (the default and the fast path) or their
plain-Python twins (`totals: {engine: python}`), for machines where numba is too big or has
no wheel (32-bit ARM): with it numba is never imported. The twins give the same bits as the
kernels (tests/agent/totalize/test_kernels.py holds them to it), so the engine changes the
CPU time and the memory, never a kilogram.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from . import reference
from .state import new_state

log = logging.getLogger(__name__)

ENGINES = ("numba", "python")
Array = npt.NDArray[Any]


def _array(values: list[float]) -> Array:
    return np.asarray(values, dtype=np.float64)


class PythonEngine:
    """The kernels' plain-Python twins behind the kernels' interface (arrays in, arrays out).

    It is also the interface's one written form: numba's kernels module has the same
    functions with the same arguments (`Engine`).
    """

    def integrate_flow(
        self, t: Array, q: Array, good: Array, state: Array, max_gap: float, cutoff: float
    ) -> Array:
        return _array(
            reference.integrate_flow(
                t.tolist(), q.tolist(), good.tolist(), state.tolist(), max_gap, cutoff
            )
        )

    def integrate_volume(
        self,
        t: Array,
        qv: Array,
        temperature: Array,
        pressure: Array,
        good: Array,
        state: Array,
        max_gap: float,
        cutoff: float,
        reference_density: float,
        reference_temperature: float,
        expansion: float,
        compressibility: float,
    ) -> Array:
        return _array(
            reference.integrate_volume(
                t.tolist(),
                qv.tolist(),
                temperature.tolist(),
                pressure.tolist(),
                good.tolist(),
                state.tolist(),
                max_gap,
                cutoff,
                reference_density,
                reference_temperature,
                expansion,
                compressibility,
            )
        )

    def difference_register(
        self, t: Array, register: Array, good: Array, state: Array, span: float, max_rate: float
    ) -> Array:
        return _array(
            reference.difference_register(
                t.tolist(), register.tolist(), good.tolist(), state.tolist(), span, max_rate
            )
        )

    def strapping(self, level: Array, levels: Array, volumes: Array) -> Array:
        return _array(reference.strapping(level.tolist(), levels.tolist(), volumes.tolist()))

    def density_linear(
        self,
        temperature: Array,
        reference_density: float,
        reference_temperature: float,
        expansion: float,
    ) -> Array:
        return _array(
            reference.density_linear(
                temperature.tolist(), reference_density, reference_temperature, expansion
            )
        )

    def linear_density(
        self,
        temperature: float,
        gauge: float,
        reference_density: float,
        reference_temperature: float,
        expansion: float,
        compressibility: float,
    ) -> float:
        return reference.linear_density(
            temperature,
            gauge,
            reference_density,
            reference_temperature,
            expansion,
            compressibility,
        )


Engine = PythonEngine  # what an engine offers; kernels.py has the same functions


def loaded(name: str) -> bool:
    """Whether load(name) would return at once: the Python engine, or numba's once imported."""
    return name == "python" or f"{__package__}.kernels" in sys.modules


def load(name: str = "numba") -> Engine:
    """The engine a configuration names; numba's is imported only here, when asked for.

    Where numba is not installed (32-bit systems have no wheels for it) numba's engine is
    the Python one, said once: the same kilograms, more CPU.
    """
    if name == "python":
        return PythonEngine()
    try:
        from . import kernels  # noqa: PLC0415  # numba: only for an agent that integrates
    except ImportError as exc:
        global _said_missing  # noqa: PLW0603  # one warning per process, not per stream
        if not _said_missing:
            _said_missing = True
            log.warning(
                "numba cannot be imported (%s): the totalizer runs on its Python engine, "
                "the same kilograms with more CPU; set totals.engine: python to say so",
                exc,
            )
        return PythonEngine()
    return cast(Engine, kernels)


_said_missing = False


def warmed(name: str) -> Engine:
    """load(name) with every kernel called once on two samples, with the argument types the
    totalizer passes: numba compiles a kernel (or reads it from NUMBA_CACHE_DIR) at its first
    call, and that first call should not be a processing cycle's (the pipeline runs this on a
    thread of its own while the Python engine integrates)."""
    engine = load(name)
    if isinstance(engine, PythonEngine):
        return engine
    t, ones, good = np.array([0.0, 0.1]), np.ones(2), np.ones(2, dtype=np.bool_)
    engine.integrate_flow(t, ones, good, new_state(), 60.0, 0.0)
    engine.integrate_volume(
        t,
        ones,
        ones * 293.15,
        ones * 1e5,
        good,
        new_state(),
        60.0,
        0.0,
        1000.0,
        293.15,
        2e-4,
        5e-10,
    )
    engine.difference_register(t, ones, good, new_state(), 1e6, 1e3)
    engine.strapping(ones, np.array([0.0, 2.0]), np.array([0.0, 4.0]))
    engine.density_linear(ones * 293.15, 1000.0, 293.15, 2e-4)
    engine.linear_density(293.15, 1e5, 1000.0, 293.15, 2e-4, 5e-10)
    return engine

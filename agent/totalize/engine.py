"""The totalizer's arithmetic: numba's kernels (the default and the fast path) or their
plain-Python twins (`totals: {engine: python}`), for machines where numba is too big or has
no wheel (32-bit ARM): with it numba is never imported. The twins give the same bits as the
kernels (tests/agent/totalize/test_kernels.py holds them to it), so the engine changes the
CPU time and the memory, never a kilogram.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from . import reference
from .state import new_state

if TYPE_CHECKING:
    from ..config.model import InventoryConfig, StreamConfig

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


KERNELS = (
    "integrate_flow",
    "integrate_volume",
    "difference_register",
    "strapping",
    "density_linear",
    "linear_density",
)


def kernels_for(
    streams: Iterable[StreamConfig], inventories: Iterable[InventoryConfig]
) -> set[str]:
    """The kernels a configuration calls (a few more where it is cheaper to be sure): the
    first kernel costs numba's code generator, ~45 MB; each further one ~2 MB."""
    used: set[str] = set()
    for stream in streams:
        if stream.mass_total is not None:
            used.add("difference_register")
        elif stream.volume_flow is not None:
            model = stream.density.model if stream.density is not None else "constant"
            if model in ("constant", "linear"):
                used.add("integrate_volume")
            else:
                used |= {"integrate_flow", "density_linear", "linear_density"}
        else:
            used.add("integrate_flow")
    for inventory in inventories:
        if inventory.strapping is not None:
            used.add("strapping")
        if inventory.density is not None:
            used |= {"density_linear", "linear_density"}
    return used


def warmed(name: str, kernels: Iterable[str] = KERNELS) -> Engine:
    """load(name) with the kernels named called once on two samples, with the argument
    types the totalizer passes: numba compiles a kernel (or reads it from NUMBA_CACHE_DIR) at
    its first call, and that first call should not be a processing cycle's (the pipeline
    runs this on a thread of its own while the Python engine integrates)."""
    engine = load(name)
    if isinstance(engine, PythonEngine):
        return engine
    t, ones, good = np.array([0.0, 0.1]), np.ones(2), np.ones(2, dtype=np.bool_)
    calls: dict[str, Callable[[], object]] = {
        "integrate_flow": lambda: engine.integrate_flow(t, ones, good, new_state(), 60.0, 0.0),
        "integrate_volume": lambda: engine.integrate_volume(
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
        ),
        "difference_register": lambda: engine.difference_register(
            t, ones, good, new_state(), 1e6, 1e3
        ),
        "strapping": lambda: engine.strapping(ones, np.array([0.0, 2.0]), np.array([0.0, 4.0])),
        "density_linear": lambda: engine.density_linear(ones * 293.15, 1000.0, 293.15, 2e-4),
        "linear_density": lambda: engine.linear_density(293.15, 1e5, 1000.0, 293.15, 2e-4, 5e-10),
    }
    for kernel in kernels:
        calls[kernel]()
    return engine

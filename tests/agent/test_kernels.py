"""Each numba kernel against its plain-Python reference, and the properties a total must keep."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from massgate.agent import kernels
from tests import naive

MAX_GAP = 2.0


def _series(draw_steps, draw_flows, draw_good):
    t = np.cumsum(np.asarray(draw_steps, dtype=np.float64))
    q = np.asarray(draw_flows, dtype=np.float64)
    good = np.asarray(draw_good, dtype=np.bool_)
    return t, q, good


flows = st.one_of(
    st.floats(-50, 50, allow_nan=False, allow_infinity=False),
    st.just(0.0),
    st.just(math.nan),
)
steps = st.one_of(st.floats(0.0, 3.0, allow_nan=False), st.just(0.0), st.just(5.0))


@st.composite
def signals(draw, *, non_negative=False):
    n = draw(st.integers(0, 60))
    flow = st.floats(0, 50, allow_nan=False) | st.just(math.nan) if non_negative else flows
    t, q, good = _series(
        draw(st.lists(steps, min_size=n, max_size=n)),
        draw(st.lists(flow, min_size=n, max_size=n)),
        draw(st.lists(st.booleans() | st.just(True), min_size=n, max_size=n)),
    )
    return t, q, good


def _run(t, q, good, state=None, *, cutoff=0.0):
    state = kernels.new_state() if state is None else state
    return kernels.integrate_flow(t, q, good, state, MAX_GAP, cutoff)


@settings(max_examples=300, deadline=None)
@given(signals(), st.floats(0, 5))
def test_integrate_flow_equals_reference(signal, cutoff):
    t, q, good = signal
    got = _run(t, q, good, cutoff=cutoff)
    want = naive.integrate_flow(t.tolist(), q.tolist(), good.tolist(), [0.0] * 10, MAX_GAP, cutoff)
    np.testing.assert_array_equal(got, np.asarray(want))


@settings(max_examples=200, deadline=None)
@given(signals(), st.data())
def test_chunked_equals_whole(signal, data):
    t, q, good = signal
    cut = data.draw(st.integers(0, len(t)))
    whole = _run(t, q, good)
    part = _run(t[:cut], q[:cut], good[:cut])
    chunked = _run(t[cut:], q[cut:], good[cut:], part)
    np.testing.assert_array_equal(whole, chunked)


@settings(max_examples=200, deadline=None)
@given(signals(non_negative=True))
def test_non_negative_flow_never_lowers_the_total(signal):
    t, q, good = signal
    state = kernels.new_state()
    previous = 0.0
    for i in range(len(t)):
        state = _run(t[i : i + 1], q[i : i + 1], good[i : i + 1], state)
        assert state[kernels.FORWARD] >= previous
        assert state[kernels.REVERSE] == 0.0
        previous = state[kernels.FORWARD]


@settings(max_examples=200, deadline=None)
@given(signals())
def test_nan_never_reaches_a_total(signal):
    t, q, good = signal
    state = _run(t, q, good)
    for index in (kernels.FORWARD, kernels.REVERSE, kernels.ESTIMATED, kernels.GAP_TIME):
        assert math.isfinite(state[index])


def test_restart_keeps_the_total_and_opens_a_new_interval():
    """A saved state reloaded after a restart continues the total; the downtime is not bridged."""
    from massgate.agent.config import StreamConfig
    from massgate.agent.totalizer import StreamTotal

    cfg = StreamConfig(
        name="s",
        mass_flow="d.q",
        volume_flow=None,
        density=None,
        accuracy=0.002,
        low_flow_cutoff=0.0,
        max_gap=MAX_GAP,
    )
    first = StreamTotal(cfg)
    for i in range(11):
        first.add(100.0 + i, 1e9 + i, 2.0)
    first.integrate()
    assert first.forward == pytest.approx(20.0)
    second = StreamTotal(cfg, saved=first.saved())
    for i in range(6):  # a new process: monotonic time starts elsewhere
        second.add(5.0 + i, 2e9 + i, 2.0)
    second.integrate()
    assert second.forward == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("name", "flow", "exact"),
    [
        ("constant", lambda x: np.full_like(x, 3.5), 3.5 * 100.0),
        ("linear", lambda x: 0.02 * x, 0.01 * 100.0**2),
        ("sine", lambda x: 2.0 + np.sin(2 * np.pi * x / 50.0), 2.0 * 100.0),
    ],
)
def test_analytical_integrals(name, flow, exact):
    t = np.linspace(0.0, 100.0, 10_001)
    state = _run(t, flow(t), np.ones_like(t, dtype=np.bool_))
    assert state[kernels.FORWARD] == pytest.approx(exact, rel=1e-6), name


def test_gaps_are_bridged_up_to_max_gap_and_flagged_beyond():
    t = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0])
    q = np.array([1.0, math.nan, 1.0, 1.0, 1.0, 1.0])
    good = np.ones(6, dtype=np.bool_)
    state = _run(t, q, good)
    assert state[kernels.FORWARD] == pytest.approx(4.0)  # 0→2 bridged, 2→3, 10→11
    assert state[kernels.ESTIMATED] == pytest.approx(2.0)
    assert state[kernels.GAP_TIME] == pytest.approx(7.0)


def test_zero_flow_and_cutoff_add_nothing():
    t = np.arange(10, dtype=np.float64)
    q = np.full(10, 0.004)
    state = _run(t, q, np.ones(10, dtype=np.bool_), cutoff=0.005)
    assert state[kernels.FORWARD] == 0.0
    state = _run(t, np.zeros(10), np.ones(10, dtype=np.bool_))
    assert state[kernels.FORWARD] == 0.0


def test_kahan_keeps_a_long_total_exact():
    """A million small increments onto a large total: compensated summation loses nothing."""
    n = 1_000_000
    t = np.arange(n, dtype=np.float64)
    q = np.full(n, 0.1)
    state = kernels.new_state()
    state[kernels.FORWARD] = 1e12
    state = _run(t, q, np.ones(n, dtype=np.bool_), state)
    assert state[kernels.FORWARD] - 1e12 == pytest.approx(0.1 * (n - 1), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(200.0, 500.0) | st.just(math.nan), max_size=40), st.floats(0, 1e-3))
def test_density_linear_equals_reference(temperatures, expansion):
    x = np.asarray(temperatures, dtype=np.float64)
    got = kernels.density_linear(x, 998.2, 293.15, expansion)
    want = naive.density_linear(temperatures, 998.2, 293.15, expansion)
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float64))

"""Each numba kernel against its plain-Python reference, and the properties a total must keep."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from massgate.agent.totalize import kernels
from massgate.agent.totalize import reference as naive

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
def signals(draw, *, non_negative=False, increasing=False):
    n = draw(st.integers(0, 60))
    flow = st.floats(0, 50, allow_nan=False) | st.just(math.nan) if non_negative else flows
    step = st.floats(0.01, 3.0) | st.just(5.0) if increasing else steps
    t, q, good = _series(
        draw(st.lists(step, min_size=n, max_size=n)),
        draw(st.lists(flow, min_size=n, max_size=n)),
        draw(st.lists(st.booleans() | st.just(True), min_size=n, max_size=n)),
    )
    return t, q, good


def _whole_and_chunked(run, signal, cut):
    """`run` over the whole signal; over its first `cut` samples; then over the rest from there."""
    whole = run(signal)
    part = run(tuple(x[:cut] for x in signal))
    return whole, part, run(tuple(x[cut:] for x in signal), part)


def _run(t, q, good, state=None, *, cutoff=0.0):
    state = kernels.new_state() if state is None else state
    return kernels.integrate_flow(t, q, good, state, MAX_GAP, cutoff)


@settings(max_examples=300, deadline=None)
@given(signals(), st.floats(0, 5))
def test_integrate_flow_equals_reference(signal, cutoff):
    t, q, good = signal
    got = _run(t, q, good, cutoff=cutoff)
    state = [0.0] * kernels.STATE_SIZE
    want = naive.integrate_flow(t.tolist(), q.tolist(), good.tolist(), state, MAX_GAP, cutoff)
    np.testing.assert_array_equal(got, np.asarray(want))


@settings(max_examples=200, deadline=None)
@given(signals(), st.data())
def test_chunked_equals_whole(signal, data):
    cut = data.draw(st.integers(0, len(signal[0])))
    whole, _, chunked = _whole_and_chunked(lambda sig, state=None: _run(*sig, state), signal, cut)
    np.testing.assert_array_equal(whole, chunked)


@settings(max_examples=200, deadline=None)
@given(signals(non_negative=True))
def test_non_negative_flow_never_lowers_the_total(signal):
    t, q, good = signal
    state = kernels.new_state()
    previous = 0.0
    for i in range(len(t)):
        state = _run(t[i : i + 1], q[i : i + 1], good[i : i + 1], state)
        assert kernels.total(state, kernels.FORWARD) >= previous
        assert kernels.total(state, kernels.REVERSE) == 0.0
        previous = kernels.total(state, kernels.FORWARD)


@settings(max_examples=200, deadline=None)
@given(signals())
def test_nan_never_reaches_a_total(signal):
    t, q, good = signal
    state = _run(t, q, good)
    assert np.isfinite(state).all()


def test_restart_keeps_the_total_and_opens_a_new_interval():
    """A saved state reloaded after a restart continues the total; the downtime is not bridged."""
    from massgate.agent.totalize.streams import StreamTotal

    cfg = _mass_stream()
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
    assert kernels.total(state, kernels.FORWARD) == pytest.approx(exact, rel=1e-6), name


def test_gaps_are_bridged_up_to_max_gap_and_flagged_beyond():
    t = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0])
    q = np.array([1.0, math.nan, 1.0, 1.0, 1.0, 1.0])
    good = np.ones(6, dtype=np.bool_)
    state = _run(t, q, good)
    assert kernels.total(state, kernels.FORWARD) == pytest.approx(4.0)  # 0→2 bridged, 2→3, 10→11
    assert state[kernels.ESTIMATED] == pytest.approx(2.0)
    assert state[kernels.GAP_TIME] == pytest.approx(7.0)


def test_zero_flow_and_cutoff_add_nothing():
    t = np.arange(10, dtype=np.float64)
    q = np.full(10, 0.004)
    state = _run(t, q, np.ones(10, dtype=np.bool_), cutoff=0.005)
    assert kernels.total(state, kernels.FORWARD) == 0.0
    state = _run(t, np.zeros(10), np.ones(10, dtype=np.bool_))
    assert kernels.total(state, kernels.FORWARD) == 0.0


def test_kahan_keeps_a_long_total_exact():
    """A million small increments onto a large total: compensated summation loses nothing."""
    n = 1_000_000
    t = np.arange(n, dtype=np.float64)
    q = np.full(n, 0.1)
    state = kernels.new_state()
    state[kernels.FORWARD] = 1e12
    state = _run(t, q, np.ones(n, dtype=np.bool_), state)
    assert kernels.total(state, kernels.FORWARD) - 1e12 == pytest.approx(0.1 * (n - 1), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(200.0, 500.0) | st.just(math.nan), max_size=40), st.floats(0, 1e-3))
def test_density_linear_equals_reference(temperatures, expansion):
    x = np.asarray(temperatures, dtype=np.float64)
    got = kernels.density_linear(x, 998.2, 293.15, expansion)
    want = naive.density_linear(temperatures, 998.2, 293.15, expansion)
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float64))


def _mass_stream(**changes):
    from massgate.agent.config import StreamConfig

    fields = {
        "name": "s",
        "mass_flow": "d.q",
        "volume_flow": None,
        "density": None,
        "accuracy": 0.002,
        "low_flow_cutoff": 0.0,
        "max_gap": MAX_GAP,
    }
    fields.update(changes)
    return StreamConfig(**fields)


# --- volume flow with a T/P-corrected density --------------------------------------------

temperatures = st.floats(250.0, 400.0) | st.just(math.nan)
pressures = st.floats(0.0, 1e7) | st.just(math.nan)


@st.composite
def volume_signals(draw):
    t, q, good = draw(signals())
    n = len(t)
    temp = np.asarray(draw(st.lists(temperatures, min_size=n, max_size=n)), dtype=np.float64)
    press = np.asarray(draw(st.lists(pressures, min_size=n, max_size=n)), dtype=np.float64)
    return t, q, temp, press, good


VOLUME_ARGS = (998.2, 293.15, 2.1e-4, 4.6e-10)


def _run_volume(signal, state=None, cutoff=0.0, args=VOLUME_ARGS):
    t, q, temp, press, good = signal
    state = kernels.new_state() if state is None else state
    return kernels.integrate_volume(t, q, temp, press, good, state, MAX_GAP, cutoff, *args)


@settings(max_examples=300, deadline=None)
@given(
    volume_signals(),
    st.floats(0, 5),
    st.tuples(
        st.floats(0.0, 2000.0),
        st.floats(250.0, 400.0),
        st.floats(-1e-2, 1e-2) | st.just(1.0 / 50.0),  # 1/50 K: a zero denominator at 243 K
        st.floats(0.0, 1e-6) | st.just(1e-7),  # 1e-7/Pa: zero at 10 MPa
    ),
)
def test_integrate_volume_equals_reference(signal, cutoff, args):
    got = _run_volume(signal, cutoff=cutoff, args=args)
    t, q, temp, press, good = (x.tolist() for x in signal)
    state = [0.0] * kernels.STATE_SIZE
    want = naive.integrate_volume(t, q, temp, press, good, state, MAX_GAP, cutoff, *args)
    np.testing.assert_array_equal(got, np.asarray(want))


@settings(max_examples=200, deadline=None)
@given(volume_signals(), st.data())
def test_integrate_volume_chunked_equals_whole(signal, data):
    cut = data.draw(st.integers(0, len(signal[0])))
    whole, _, chunked = _whole_and_chunked(_run_volume, signal, cut)
    np.testing.assert_array_equal(whole, chunked)
    for index in (kernels.FORWARD, kernels.REVERSE, kernels.ESTIMATED, kernels.FLOW_TIME):
        assert math.isfinite(whole[index])


def test_integrate_volume_corrects_for_temperature_and_pressure():
    """Constant 0.01 m³/s at 60 °C and 50 bar: ρ from the model, mass = ρ·V exactly."""
    t = np.arange(101, dtype=np.float64)
    ones = np.ones_like(t)
    state = _run_volume((t, 0.01 * ones, 333.15 * ones, 5e6 * ones, ones.astype(np.bool_)))
    rho = 998.2 / ((1 + 2.1e-4 * 40.0) * (1 - 4.6e-10 * 5e6))
    assert kernels.total(state, kernels.FORWARD) == pytest.approx(0.01 * 100 * rho, rel=1e-12)
    assert state[kernels.FLOW_TIME] == 100.0


def test_integrate_volume_cutoff_applies_to_the_volume_signal():
    t = np.arange(10, dtype=np.float64)
    ones = np.ones_like(t)
    signal = (t, 0.0009 * ones, 293.15 * ones, 0.0 * ones, ones.astype(np.bool_))
    assert kernels.total(_run_volume(signal, cutoff=0.001), kernels.FORWARD) == 0.0
    total = kernels.total(_run_volume(signal, cutoff=0.0), kernels.FORWARD)
    assert total == pytest.approx(0.0009 * 9 * 998.2)


# --- totalizer registers ------------------------------------------------------------------

SPAN = 1000.0
MAX_RATE = 20.0


@st.composite
def register_signals(draw):
    """A register counting up at ≤ MAX_RATE with rollover at SPAN, resets and bad replies."""
    n = draw(st.integers(0, 60))
    t = 0.0
    value = draw(st.floats(0, SPAN - 1))
    ts, regs, good = [], [], []
    for _ in range(n):
        dt = draw(st.floats(0.0, 3.0) | st.just(0.0) | st.just(60.0))
        t += dt
        kind = draw(st.sampled_from(["count", "count", "count", "reset", "nan", "jump"]))
        if kind == "count":
            value = (value + draw(st.floats(0, MAX_RATE)) * dt) % SPAN
        elif kind == "reset":
            value = 0.0
        elif kind == "jump":
            value = (value + draw(st.floats(0, SPAN))) % SPAN
        ts.append(t)
        regs.append(math.nan if kind == "nan" else value)
        good.append(draw(st.booleans() | st.just(True)))
    return (
        np.asarray(ts, dtype=np.float64),
        np.asarray(regs, dtype=np.float64),
        np.asarray(good, dtype=np.bool_),
    )


def _run_register(signal, state=None, span=SPAN):
    t, r, good = signal
    state = kernels.new_state() if state is None else state
    return kernels.difference_register(t, r, good, state, span, MAX_RATE)


@settings(max_examples=300, deadline=None)
@given(register_signals(), st.sampled_from([SPAN, math.inf]))
def test_difference_register_equals_reference(signal, span):
    got = _run_register(signal, span=span)
    t, r, good = (x.tolist() for x in signal)
    want = naive.difference_register(t, r, good, [0.0] * kernels.STATE_SIZE, span, MAX_RATE)
    np.testing.assert_array_equal(got, np.asarray(want))


@settings(max_examples=200, deadline=None)
@given(register_signals(), st.data())
def test_difference_register_chunked_equals_whole_and_never_lowers(signal, data):
    cut = data.draw(st.integers(0, len(signal[0])))
    whole, part, chunked = _whole_and_chunked(_run_register, signal, cut)
    np.testing.assert_array_equal(whole, chunked)
    assert kernels.total(chunked, kernels.FORWARD) >= kernels.total(part, kernels.FORWARD)
    assert math.isfinite(kernels.total(whole, kernels.FORWARD))


def test_register_rollover_counts_across_the_top():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    r = np.array([990.0, 998.0, 4.0, 12.0])  # +8, +6 across the rollover, +8
    state = _run_register((t, r, np.ones(4, dtype=np.bool_)))
    assert kernels.total(state, kernels.FORWARD) == pytest.approx(22.0)
    assert state[kernels.FAULTS] == 0.0


def test_register_jump_beyond_the_meter_is_a_fault_not_mass():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    r = np.array([100.0, 110.0, 500.0, 505.0])  # +10, then +390 in 1 s (max 20), then +5
    state = _run_register((t, r, np.ones(4, dtype=np.bool_)))
    assert kernels.total(state, kernels.FORWARD) == pytest.approx(15.0)
    assert state[kernels.FAULTS] == 1.0
    assert state[kernels.GAP_TIME] == 1.0


def test_register_counts_through_a_comms_gap_but_not_an_ambiguous_one():
    # 10 s without replies: the meter counted 150 kg meanwhile, and that is real mass.
    t = np.array([0.0, 10.0, 11.0])
    state = _run_register((t, np.array([0.0, 150.0, 160.0]), np.ones(3, dtype=np.bool_)))
    assert kernels.total(state, kernels.FORWARD) == pytest.approx(160.0)
    # 60 s at up to 20 kg/s could hide a whole turn of a 1000 kg register: unknown.
    t = np.array([0.0, 60.0, 61.0])
    state = _run_register((t, np.array([0.0, 150.0, 160.0]), np.ones(3, dtype=np.bool_)))
    assert kernels.total(state, kernels.FORWARD) == pytest.approx(10.0)
    assert state[kernels.GAP_TIME] == 60.0


# --- strapping tables --------------------------------------------------------------------

LEVELS = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 3.5])
VOLUMES = np.array([0.0, 1.8, 3.9, 8.2, 12.6, 14.7])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1.0, 4.0) | st.just(math.nan) | st.sampled_from(list(LEVELS))))
def test_strapping_equals_reference(levels):
    got = kernels.strapping(np.asarray(levels, dtype=np.float64), LEVELS, VOLUMES)
    want = naive.strapping(levels, LEVELS.tolist(), VOLUMES.tolist())
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float64))


def test_strapping_interpolates_and_refuses_to_extrapolate():
    got = kernels.strapping(np.array([0.0, 0.25, 1.5, 3.5, 3.6, -0.1]), LEVELS, VOLUMES)
    np.testing.assert_allclose(got[:4], [0.0, 0.9, 6.05, 14.7])
    assert np.isnan(got[4:]).all()


# --- restart: the saved state carries the total ------------------------------------------


@settings(max_examples=150, deadline=None)
@given(signals(increasing=True), st.data())
def test_restart_gives_the_total_of_running_on_less_the_downtime(signal, data):
    """Persist (through JSON, as the outbox does), reload, go on: the totals are those of
    running on, except the one interval across the restart, which becomes gap time.

    Time stamps strictly increase, as they do across a restart (a new process's monotonic
    clock never repeats the old one's readings)."""
    import json

    from massgate.agent.totalize.streams import StreamTotal

    t, q, good = signal
    q = np.where(good, q, math.nan)
    cut = data.draw(st.integers(0, len(t)))
    whole = StreamTotal(_mass_stream())
    for i in range(len(t)):
        whole.add(t[i], 1e6 + t[i], q[i])
    whole.integrate()

    first = StreamTotal(_mass_stream())
    for i in range(cut):
        first.add(t[i], 1e6 + t[i], q[i])
    first.integrate()
    second = StreamTotal(_mass_stream(), saved=json.loads(json.dumps(first.saved())))
    for i in range(cut, len(t)):
        second.add(t[i], 1e6 + t[i], q[i])
    second.integrate()

    # The interval across the restart: last good sample before, first good one after.
    before = [i for i in range(cut) if not math.isnan(q[i])]
    after = [i for i in range(cut, len(t)) if not math.isnan(q[i])]
    straddle = np.zeros(kernels.STATE_SIZE)
    if before and after:
        pair = [before[-1], after[0]]
        straddle = _run(t[pair], q[pair], np.ones(2, dtype=np.bool_))
    for index in (kernels.FORWARD, kernels.REVERSE):
        assert kernels.total(second.state, index) == pytest.approx(
            kernels.total(whole.state, index) - kernels.total(straddle, index), rel=1e-9, abs=1e-9
        )
    assert second.forward >= first.forward
    downtime = t[after[0]] - t[before[-1]] if before and after else 0.0
    assert second.state[kernels.GAP_TIME] == pytest.approx(
        whole.state[kernels.GAP_TIME] - straddle[kernels.GAP_TIME] + downtime, abs=1e-6
    )


def test_a_state_saved_by_an_older_release_keeps_its_totals():
    from massgate.agent.totalize.streams import StreamTotal

    # Ten slots, before FLOW_TIME; Kahan's compensation: the total was sum − compensation.
    old = [1.0, 5.0, 2.0, 1234.5, 1e-13, 6.5, -1e-14, 3.0, 7.0, 0.0]
    total = StreamTotal(_mass_stream(), saved={"state": old, "reported": [0.0, 0.0, 0.0]})
    assert (total.forward, total.reverse) == (1234.5 - 1e-13, 6.5 + 1e-14)
    assert total.state[kernels.FLOW_TIME] == 0.0
    with pytest.raises(ValueError, match="newer massgate"):
        StreamTotal(_mass_stream(), saved={"state": old * 2, "reported": [0.0, 0.0, 0.0]})

"""Weighted least-squares data reconciliation and gross-error detection on a node network.

A network is nodes joined by streams; a stream with no source (or no target) crosses the
network's boundary. The constraints are one mass balance per node, A·x = 0, where A[k, j] is
+1 when stream j enters node k and −1 when it leaves. A node that holds inventory gets a
stream for its accumulation (measured as Δinventory), so steady state is not assumed.

Measured streams x (variances Σ) and unmeasured streams u are separated by Crowe's projection
(Crowe, Garcia Campos & Hrymak, AIChE J. 29 (1983) 881): P with P·A_u = 0 removes the
unmeasured streams, leaving the reduced constraints B·x = 0 with B = P·A_x. Then

    x̂ = y − Σ Bᵀ V⁻¹ B y,   V = B Σ Bᵀ,   Cov(a) = W = Σ Bᵀ V⁻¹ B Σ for the adjustments a = y − x̂

the global test is γ = rᵀV⁻¹r ~ χ²(rank B) with r = B·y, the measurement test is
z_j = |a_j| / √W_jj, and for any gross error with signature f in the space of r (a bias in
meter j: f = B·e_j; a leak at node k: f = P·e_k) the generalized likelihood ratio is
T = (fᵀV⁻¹r)² / (fᵀV⁻¹f) ~ χ²(1), with the error's size fᵀV⁻¹r / fᵀV⁻¹f (Narasimhan & Mah,
AIChE J. 33 (1987) 1514). Serial elimination removes the suspect with the largest T, a
biased meter by deleting its measurement and a leak by adding an unmeasured stream out of its
node, and repeats until the global test passes. Two suspects whose signatures are parallel
cannot be told apart by any test on this network; both are reported.

The matrices are as small as a site (tens of streams), so plain numpy solves them in
microseconds; nothing here is worth compiling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

REDUNDANT = "redundant"  # measured, and would be known from the others without its meter
NON_REDUNDANT = "non-redundant"  # measured, and the only source of its value
OBSERVABLE = "observable"  # unmeasured, computed from the measured ones
UNOBSERVABLE = "unobservable"  # unmeasured, and no balance determines it

BIAS = "bias"
LEAK = "leak"

_TINY = 1e-9  # relative: below this a singular value, a signature or a variance is zero


@dataclass(frozen=True, slots=True)
class Stream:
    name: str
    source: str | None  # node it leaves; None: from beyond the network
    target: str | None  # node it enters; None: to beyond the network


@dataclass(frozen=True, slots=True)
class Network:
    nodes: tuple[str, ...]
    streams: tuple[Stream, ...]

    def __post_init__(self) -> None:
        known = set(self.nodes)
        if len(known) != len(self.nodes):
            raise ValueError("node names must be unique")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError("stream names must be unique")
        for s in self.streams:
            for end in (s.source, s.target):
                if end is not None and end not in known:
                    raise ValueError(f"stream {s.name}: no node named {end!r}")
            if s.source is None and s.target is None:
                raise ValueError(f"stream {s.name} touches no node")
            if s.source == s.target:
                raise ValueError(f"stream {s.name} leaves and enters the same node")

    def incidence(self) -> np.ndarray:
        index = {n: k for k, n in enumerate(self.nodes)}
        a = np.zeros((len(self.nodes), len(self.streams)))
        for j, s in enumerate(self.streams):
            if s.target is not None:
                a[index[s.target], j] += 1.0
            if s.source is not None:
                a[index[s.source], j] -= 1.0
        return a

    def with_leak(self, node: str) -> Network:
        return Network(self.nodes, (*self.streams, Stream(leak_name(node), node, None)))


def leak_name(node: str) -> str:
    return f"leak@{node}"


@dataclass(frozen=True, slots=True)
class StreamResult:
    name: str
    measured: float  # NaN when not measured
    sigma: float  # standard uncertainty of the measurement; NaN when not measured
    reconciled: float  # NaN when unobservable
    reconciled_sigma: float
    classification: str
    adjustment_test: float  # z of the measurement test; NaN where it does not apply

    @property
    def adjustment(self) -> float:
        return self.reconciled - self.measured


@dataclass(frozen=True, slots=True)
class GrossError:
    kind: str  # bias | leak
    where: str  # the meter's stream or the node
    size: float  # the bias (measured − true) or the leak (mass lost by the node)
    statistic: float  # the GLR test statistic, χ²(1) under no error
    alternatives: tuple[tuple[str, str], ...] = ()  # (kind, where) this one cannot be told from

    def describe(self, unit: str = "") -> str:
        amount = f"{abs(self.size):.4g}{' ' + unit if unit else ''}"
        what = (
            f"the meter on {self.where} reads {amount} {'high' if self.size > 0 else 'low'}"
            if self.kind == BIAS
            else f"node {self.where} {'loses' if self.size > 0 else 'gains'} {amount}"
        )
        if self.alternatives:
            others = ", ".join(f"{k} at {w}" for k, w in self.alternatives)
            what += f" (this network cannot tell it from: {others})"
        return what


@dataclass(frozen=True, slots=True)
class Reconciliation:
    streams: tuple[StreamResult, ...]
    statistic: float  # global test γ
    dof: int  # rank of the reduced constraints
    critical: float  # χ² quantile at 1 − alpha
    alpha: float
    test_critical: float  # z the measurement test compares with (Šidák-corrected)
    gross_errors: tuple[GrossError, ...] = ()
    unconverged: bool = False  # serial elimination stopped before the global test passed

    @property
    def passed(self) -> bool:
        return self.dof == 0 or self.statistic <= self.critical

    @property
    def p_value(self) -> float:
        return chi2_sf(self.statistic, self.dof) if self.dof else 1.0

    def stream(self, name: str) -> StreamResult:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(name)


def chi2_sf(x: float, k: int) -> float:
    """P(χ²_k > x) for integer k, in closed form (no scipy on a gateway for one function)."""
    if x <= 0:
        return 1.0
    half = x / 2.0
    if k % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, k // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    root = math.sqrt(x)
    total = math.erfc(root / math.sqrt(2.0))
    term = math.sqrt(2.0 * x / math.pi) * math.exp(-half)
    for i in range(1, (k + 1) // 2):
        total += term
        term *= x / (2 * i + 1)
    return min(1.0, total)


def chi2_quantile(p: float, k: int) -> float:
    """x with P(χ²_k ≤ x) = p, by bisection on chi2_sf."""
    low, high = 0.0, max(10.0, 10.0 * k)
    while chi2_sf(high, k) > 1.0 - p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if chi2_sf(mid, k) > 1.0 - p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2.0


@dataclass(slots=True)
class _Solution:
    """One WLS solve: everything the tests and the elimination need."""

    network: Network
    measured: np.ndarray  # bool per stream
    y: np.ndarray  # measurements of the measured streams
    sigma: np.ndarray
    x_hat: np.ndarray  # all streams; NaN where unobservable
    cov_x: np.ndarray  # covariance of x̂ over all streams
    observable: np.ndarray  # bool per stream
    redundant: np.ndarray  # bool per measured stream
    w_diag: np.ndarray  # variance of each measured stream's adjustment
    reducer: np.ndarray  # R·P: node balances → independent reduced residuals
    b: np.ndarray  # reduced constraints on the measured streams
    v_inv: np.ndarray
    r: np.ndarray
    statistic: float
    dof: int


# Covariances between two streams' measurement errors (data units squared): two meters that
# share a density or a temperature, a meter and its own register. Absent pairs are independent.
Covariances = Mapping[tuple[str, str], float]


def _solve(
    network: Network,
    values: np.ndarray,
    sigmas: np.ndarray,
    covariances: Covariances | None = None,
) -> _Solution:
    a = network.incidence()
    measured = np.isfinite(values) & np.isfinite(sigmas)
    am, au = a[:, measured], a[:, ~measured]
    y, sigma = values[measured], sigmas[measured]
    if np.any(sigma <= 0):
        raise ValueError("every measured stream needs a standard uncertainty above zero")
    n_nodes = a.shape[0]

    # P: an orthonormal basis of the left null space of A_u.
    if au.shape[1]:
        u_, s_, vt_u = np.linalg.svd(au, full_matrices=True)
        rank_u = int(np.sum(s_ > _TINY * max(1.0, s_.max(initial=0.0))))
        projector = u_[:, rank_u:].T
        null_u = vt_u[rank_u:].T  # directions of u that no balance sees
    else:
        projector = np.eye(n_nodes)
        null_u = np.zeros((0, 0))
    b_full = projector @ am
    # Keep independent reduced constraints only (a closed network's balances are dependent).
    if b_full.size:
        ub, sb, _ = np.linalg.svd(b_full, full_matrices=False)
        dof = int(np.sum(sb > _TINY * max(1.0, sb.max(initial=0.0))))
        reducer = ub[:, :dof].T @ projector
    else:
        dof = 0
        reducer = np.zeros((0, n_nodes))
    b = reducer @ am
    cov_y = np.diag(sigma**2)
    if covariances:
        names = [s.name for s, m in zip(network.streams, measured, strict=True) if m]
        index = {n: i for i, n in enumerate(names)}
        for (first, second), c in covariances.items():
            if first in index and second in index:  # a pair with an unmeasured end drops
                i, j = index[first], index[second]
                cov_y[i, j] = cov_y[j, i] = c
        try:
            np.linalg.cholesky(cov_y)
        except np.linalg.LinAlgError:
            raise ValueError(
                "the measurement covariances describe no possible errors (not positive "
                "definite): each correlation lies strictly between -1 and 1, and together "
                "they must be consistent"
            ) from None
    if dof:
        v_inv = np.linalg.inv(b @ cov_y @ b.T)
        r = b @ y
        gain = cov_y @ b.T @ v_inv
        x_m = y - gain @ r
        w = gain @ b @ cov_y
        cov_m = cov_y - w
        statistic = float(r @ v_inv @ r)
    else:
        v_inv = np.zeros((0, 0))
        r = np.zeros(0)
        x_m = y.copy()
        w = np.zeros_like(cov_y)
        cov_m = cov_y
        statistic = 0.0
    w_diag = np.diag(w).copy()
    redundant = w_diag > _TINY * sigma**2

    n = len(network.streams)
    x_hat = np.full(n, math.nan)
    cov_x = np.zeros((n, n))
    mi = np.flatnonzero(measured)
    ui = np.flatnonzero(~measured)
    x_hat[mi] = x_m
    cov_x[np.ix_(mi, mi)] = cov_m
    observable = measured.copy()
    if len(ui):
        # A_u·u = −A_x·x̂; the minimum-norm solution is exact for the observable part.
        pinv = np.linalg.pinv(au, rcond=_TINY)
        u_hat = -pinv @ am @ x_m
        cov_u = pinv @ am @ cov_m @ am.T @ pinv.T
        seen = (
            np.all(np.abs(null_u) < 1e-7, axis=1) if null_u.size else np.ones(len(ui), dtype=bool)
        )
        observable[ui] = seen
        x_hat[ui] = np.where(seen, u_hat, math.nan)
        cov_x[np.ix_(ui, ui)] = cov_u
        cov_x[np.ix_(ui, mi)] = -pinv @ am @ cov_m
        cov_x[np.ix_(mi, ui)] = cov_x[np.ix_(ui, mi)].T
    return _Solution(
        network=network,
        measured=measured,
        y=y,
        sigma=sigma,
        x_hat=x_hat,
        cov_x=cov_x,
        observable=observable,
        redundant=redundant,
        w_diag=w_diag,
        reducer=reducer,
        b=b,
        v_inv=v_inv,
        r=r,
        statistic=statistic,
        dof=dof,
    )


def _results(sol: _Solution, values: np.ndarray, sigmas: np.ndarray) -> tuple[StreamResult, ...]:
    out = []
    m = 0
    for j, s in enumerate(sol.network.streams):
        var = sol.cov_x[j, j]
        rec_sigma = math.sqrt(max(var, 0.0)) if sol.observable[j] else math.nan
        if sol.measured[j]:
            cls = REDUNDANT if sol.redundant[m] else NON_REDUNDANT
            adjust = sol.y[m] - sol.x_hat[j]
            z = float(abs(adjust) / math.sqrt(sol.w_diag[m])) if sol.redundant[m] else math.nan
            out.append(
                StreamResult(
                    s.name,
                    float(values[j]),
                    float(sigmas[j]),
                    float(sol.x_hat[j]),
                    rec_sigma,
                    cls,
                    z,
                )
            )
            m += 1
        else:
            cls = OBSERVABLE if sol.observable[j] else UNOBSERVABLE
            out.append(
                StreamResult(
                    s.name, math.nan, math.nan, float(sol.x_hat[j]), rec_sigma, cls, math.nan
                )
            )
    return tuple(out)


def _vectors(
    network: Network,
    values: Mapping[str, float],
    sigmas: Mapping[str, float],
    covariances: Covariances | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    known = {s.name for s in network.streams}
    pairs = [n for pair in (covariances or {}) for n in pair]
    for name in (*values, *sigmas, *pairs):
        if name not in known:
            raise ValueError(f"no stream named {name!r} in the network")
    v = np.array([values.get(s.name, math.nan) for s in network.streams], dtype=float)
    sg = np.array([sigmas.get(s.name, math.nan) for s in network.streams], dtype=float)
    sg[~np.isfinite(v)] = math.nan
    v[~np.isfinite(sg)] = math.nan
    return v, sg


def reconcile(
    network: Network,
    values: Mapping[str, float],
    sigmas: Mapping[str, float],
    *,
    alpha: float = 0.05,
    covariances: Covariances | None = None,
) -> Reconciliation:
    """Reconcile one data set. A stream without a finite value and sigma is unmeasured."""
    v, sg = _vectors(network, values, sigmas, covariances)
    sol = _solve(network, v, sg, covariances)
    return _reconciliation(sol, v, sg, alpha)


def _reconciliation(
    sol: _Solution, v: np.ndarray, sg: np.ndarray, alpha: float, **extra: object
) -> Reconciliation:
    tests = int(np.sum(sol.redundant))
    return Reconciliation(
        streams=_results(sol, v, sg),
        statistic=sol.statistic,
        dof=sol.dof,
        critical=chi2_quantile(1.0 - alpha, sol.dof) if sol.dof else 0.0,
        alpha=alpha,
        test_critical=sidak_z(alpha, tests),
        **extra,  # type: ignore[arg-type]
    )


def sidak_z(alpha: float, tests: int) -> float:
    """Two-sided z for `tests` simultaneous tests at an overall level alpha."""
    if tests <= 0:
        return math.inf
    beta = 1.0 - (1.0 - alpha) ** (1.0 / tests)
    return NormalDist().inv_cdf(1.0 - beta / 2.0)


@dataclass(frozen=True, slots=True)
class _Candidate:
    kind: str
    where: str
    signature: np.ndarray
    statistic: float
    size: float


def _signatures(sol: _Solution, exclude: set[tuple[str, str]]) -> list[tuple[str, str, np.ndarray]]:
    """Each gross error's signature in the reduced residuals: a bias in each measured
    stream, a leak at each node; those no balance sees (a zero signature) left out."""
    if not sol.dof:
        return []
    measured_names = [s.name for s, m in zip(sol.network.streams, sol.measured, strict=True) if m]
    signatures: list[tuple[str, str, np.ndarray]] = []
    for m, stream in enumerate(measured_names):
        signatures.append((BIAS, stream, sol.b[:, m]))
    for k, node in enumerate(sol.network.nodes):
        # The leak leaves the node: its balance reads in − out = +leak, hence +e_k.
        signatures.append((LEAK, node, sol.reducer[:, k]))
    return [
        (kind, where, f)
        for kind, where, f in signatures
        if (kind, where) not in exclude and float(np.linalg.norm(f)) > _TINY
    ]


def _candidates(sol: _Solution, exclude: set[tuple[str, str]]) -> list[_Candidate]:
    found = []
    for kind, where, f in _signatures(sol, exclude):
        weight = float(f @ sol.v_inv @ f)
        projection = float(f @ sol.v_inv @ sol.r)
        found.append(_Candidate(kind, where, f, projection**2 / weight, projection / weight))
    return found


def _parallel(f: np.ndarray, g: np.ndarray, v_inv: np.ndarray) -> bool:
    cross = float(f @ v_inv @ g)
    return cross * cross >= (1.0 - 1e-9) * float(f @ v_inv @ f) * float(g @ v_inv @ g)


def diagnose(
    network: Network,
    values: Mapping[str, float],
    sigmas: Mapping[str, float],
    *,
    alpha: float = 0.05,
    leaks: bool = True,
    covariances: Covariances | None = None,
) -> tuple[Reconciliation, Reconciliation]:
    """Reconcile, then find gross errors by serial elimination.

    Returns (the plain reconciliation of all the data, the reconciliation after removing each
    suspect, with the suspects named in order and their sizes estimated). `leaks=False` only
    considers biased meters.
    """
    v, sg = _vectors(network, values, sigmas, covariances)
    first = _solve(network, v, sg, covariances)
    plain = _reconciliation(first, v, sg, alpha)
    exclude: set[tuple[str, str]] = set()
    if not leaks:
        exclude |= {(LEAK, n) for n in network.nodes}
    found: list[GrossError] = []
    current_net, cv, cs, sol = network, v.copy(), sg.copy(), first
    limit = len(network.streams) + len(network.nodes)
    unconverged = False
    for _ in range(limit):
        if not sol.dof or sol.statistic <= chi2_quantile(1.0 - alpha, sol.dof):
            break
        candidates = _candidates(sol, exclude)
        # One candidate at a time is tested, with the overall level split Šidák-fashion.
        threshold = sidak_z(alpha, len(candidates)) ** 2
        if not candidates or max(c.statistic for c in candidates) < threshold:
            unconverged = True
            break
        best = max(candidates, key=lambda c: c.statistic)
        alternatives = tuple(
            (c.kind, c.where)
            for c in candidates
            if c is not best and _parallel(c.signature, best.signature, sol.v_inv)
        )
        exclude.add((best.kind, best.where))
        if best.kind == BIAS:
            j = next(i for i, s in enumerate(current_net.streams) if s.name == best.where)
            cv[j] = cs[j] = math.nan
        else:
            current_net = current_net.with_leak(best.where)
            cv = np.append(cv, math.nan)
            cs = np.append(cs, math.nan)
        sol = _solve(current_net, cv, cs, covariances)
        found.append(GrossError(best.kind, best.where, best.size, best.statistic, alternatives))
    else:
        unconverged = True
    # Each size from the final solve, where no other gross error contaminates it: a meter's
    # reading against what the rest of the network says, a leak's unmeasured stream.
    index = {s.name: j for j, s in enumerate(current_net.streams)}
    sized = []
    for e in found:
        j = index[e.where if e.kind == BIAS else leak_name(e.where)]
        estimate = v[j] - sol.x_hat[j] if e.kind == BIAS else sol.x_hat[j]
        sized.append(replace(e, size=float(estimate)) if math.isfinite(estimate) else e)
    final = _reconciliation(sol, cv, cs, alpha, gross_errors=tuple(sized), unconverged=unconverged)
    return plain, final


@dataclass(frozen=True, slots=True)
class Detectable:
    """The smallest gross error of one kind and place that the tests find, before any data."""

    kind: str  # bias | leak
    where: str  # the meter's stream or the node
    smallest: float  # its size found with the given power; inf: no test on this network sees it
    alternatives: tuple[tuple[str, str], ...] = ()  # (kind, where) it cannot be told from


def detectability(
    network: Network,
    sigmas: Mapping[str, float],
    *,
    alpha: float = 0.05,
    power: float = 0.9,
    leaks: bool = True,
    covariances: Covariances | None = None,
) -> tuple[Detectable, ...]:
    """The smallest bias of each meter and leak at each node detected with `power`.

    A gross error of size s with signature f shifts the GLR statistic's root to
    s·√(fᵀV⁻¹f) standard deviations; the serial elimination tests it at the Šidák level it
    uses on this network, |·| > z. The smallest s is δ/√(fᵀV⁻¹f) with δ the shift at which
    Φ(δ − z) + Φ(−δ − z) = power. It depends on the network and the σ alone, so it is the
    what-if before a meter is bought: the data decide nothing here. A meter whose bias no
    balance sees (non-redundant), or a node no balance covers, has inf. Errors whose
    signatures are parallel cannot be told apart: each names the others.
    """
    if not 0.0 < power < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError("alpha and power lie between 0 and 1")
    values = dict.fromkeys(sigmas, 0.0)  # only which streams are measured matters
    v, sg = _vectors(network, values, sigmas, covariances)
    sol = _solve(network, v, sg, covariances)
    exclude = set() if leaks else {(LEAK, n) for n in network.nodes}
    found = _signatures(sol, exclude)
    z = sidak_z(alpha, len(found))
    shift = _power_shift(z, power)
    out = []
    for kind, where, f in found:
        alternatives = tuple(
            (k, w) for k, w, g in found if (k, w) != (kind, where) and _parallel(f, g, sol.v_inv)
        )
        out.append(
            Detectable(kind, where, shift / math.sqrt(float(f @ sol.v_inv @ f)), alternatives)
        )
    seen = {(d.kind, d.where) for d in out}
    measured = [s.name for s, m in zip(network.streams, sol.measured, strict=True) if m]
    candidates = [(BIAS, s) for s in measured]
    if leaks:
        candidates += [(LEAK, n) for n in network.nodes]
    out += [Detectable(k, w, math.inf) for k, w in candidates if (k, w) not in seen]
    order = {c: i for i, c in enumerate(candidates)}
    return tuple(sorted(out, key=lambda d: order[(d.kind, d.where)]))


def _power_shift(z: float, power: float) -> float:
    """δ with P(|N(δ, 1)| > z) = power: bisection, as the two tails have no inverse."""
    normal = NormalDist()
    low, high = 0.0, z + 10.0
    for _ in range(100):
        mid = (low + high) / 2.0
        if normal.cdf(mid - z) + normal.cdf(-mid - z) < power:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


WLS, HUBER, FAIR = "wls", "huber", "fair"
ESTIMATORS = (WLS, HUBER, FAIR)
# The usual tuning constants: 95 % of WLS's efficiency when the errors are Gaussian.
TUNING = {HUBER: 1.345, FAIR: 1.3998}


def _weights(eps: np.ndarray, estimator: str, c: float) -> np.ndarray:
    """ψ(ε)/ε of the estimator: the weight a standardized adjustment ε keeps."""
    a = np.abs(eps)
    if estimator == HUBER:  # quadratic up to c, linear beyond
        return np.asarray(c / np.maximum(a, c), dtype=float)
    return np.asarray(1.0 / (1.0 + a / c), dtype=float)  # Fair: c²(|ε|/c − ln(1 + |ε|/c))


def robust(
    network: Network,
    values: Mapping[str, float],
    sigmas: Mapping[str, float],
    *,
    estimator: str = HUBER,
    alpha: float = 0.05,
    tuning: float | None = None,
    iterations: int = 200,
) -> Reconciliation:
    """Reconcile with an M-estimator (Huber or Fair) instead of least squares: minimize
    Σ ρ(ε_j) over the standardized adjustments ε_j = (y_j − x̂_j)/σ_j, subject to the
    balances, by iteratively reweighted least squares (each pass a WLS solve with σ_j/√w_j,
    w_j = ψ(ε_j)/ε_j). A gross error then pulls on the estimate with a bounded force instead
    of a squared one, so it is not smeared over its neighbours before it is found (Özyurt &
    Pike, Comput. Chem. Eng. 28 (2004) 381). Both ρ are convex: the passes converge.

    The streams' σ are the ones given; the tests and intervals are those of the last pass
    (its weights), so a down-weighted meter shows a wide interval and a small test."""
    if estimator not in TUNING:
        raise ValueError(f"estimator must be one of {', '.join(TUNING)}, not {estimator!r}")
    c = TUNING[estimator] if tuning is None else tuning
    if not c > 0:
        raise ValueError("the tuning constant must be above zero")
    v, sg = _vectors(network, values, sigmas)
    measured = np.isfinite(v) & np.isfinite(sg)
    sol = _solve(network, v, sg)
    scale = float(np.max(sg[measured], initial=1.0))
    unconverged = True
    for _ in range(iterations):
        eps = (v[measured] - sol.x_hat[measured]) / sg[measured]
        effective = sg.copy()
        effective[measured] = sg[measured] / np.sqrt(_weights(eps, estimator, c))
        new = _solve(network, v, effective)
        step = float(np.max(np.abs(new.x_hat[measured] - sol.x_hat[measured]), initial=0.0))
        sol = new
        if step <= 1e-10 * scale:
            unconverged = False
            break
    return _reconciliation(sol, v, sg, alpha, unconverged=unconverged)


def sigma_from_accuracy(value: float, accuracy: float) -> float:
    """A meter's rated accuracy (relative, ≈ 2σ as data sheets state it) as a σ in kg."""
    return abs(value) * accuracy / 2.0


def network_of(
    nodes: Sequence[str], inputs: Mapping[str, Sequence[str]], outputs: Mapping[str, Sequence[str]]
) -> Network:
    """The network implied by which nodes list a stream as input and which as output.

    A stream listed by one node only crosses the network's boundary. A stream listed as an
    input (or an output) of two nodes is a configuration error the caller reports.
    """
    source: dict[str, str] = {}
    target: dict[str, str] = {}
    order: dict[str, None] = {}  # first mention first, each stream once
    for node in nodes:
        for ends, listed, verb in ((target, inputs, "enters"), (source, outputs, "leaves")):
            for stream in listed.get(node, ()):
                if stream in ends:
                    raise ValueError(f"stream {stream} {verb} both {ends[stream]} and {node}")
                ends[stream] = node
                order.setdefault(stream)
    return Network(tuple(nodes), tuple(Stream(s, source.get(s), target.get(s)) for s in order))

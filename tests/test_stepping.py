"""Step control (scoresde.stepping): tableaus, error norm, PI controller, loop, solve_ivp wrapper.

The order of every tableau is measured on a linear, non-autonomous ODE with a closed-form
solution (so the nodes ``c`` matter too), in float64:

    x'(t) = cos(t) x,   x(t) = x(0) exp(sin t),   t in [0, 1].

Halving the step divides the global error (the largest over the grid points) by ``2^p``
asymptotically (Hairer, Nørsett & Wanner 1993, §II.3); the measured slopes must be within 0.3
of the order (measured: within 0.15 for the kept solutions, 0.26 for dopri5's embedded one).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from scoresde._runtime import NonFiniteError
from scoresde.stepping import (
    BS3,
    DOPRI5,
    EULER,
    HEUN,
    RK4,
    TABLEAUS,
    ButcherTableau,
    PIController,
    RKStep,
    error_ratio,
    initial_step,
    integrate_adaptive,
    jacobian_structure,
    scipy_solve,
)

X0 = torch.tensor([[1.0], [-0.5], [2.0]], dtype=torch.float64)  # a batch of three 1-D problems
T_END = 1.0


def field(x, t):
    return math.cos(t) * x


def exact(t):
    return X0 * math.exp(math.sin(t))


def global_error(tableau: ButcherTableau, n: int, embedded: bool = False) -> float:
    """Largest error over ``n`` uniform steps on [0, T_END] (x̂ = x - error if ``embedded``)."""
    x, h, worst = X0, T_END / n, 0.0
    for i in range(n):
        step = tableau.step(field, x, i * h, h)
        x = step.x - step.error if embedded else step.x
        worst = max(worst, float((x - exact((i + 1) * h)).abs().max()))
    return worst


def measured_order(tableau, ns, embedded=False) -> list[float]:
    errs = [global_error(tableau, n, embedded) for n in ns]
    return [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]


@pytest.mark.parametrize("tableau, ns", [
    (EULER, (64, 128, 256)),
    (HEUN, (32, 64, 128)),
    (RK4, (16, 32, 64)),
    (BS3, (16, 32, 64)),
    (DOPRI5, (8, 16, 32)),
], ids=lambda v: v.name if isinstance(v, ButcherTableau) else None)
def test_measured_order_of_every_tableau(tableau, ns):
    for slope in measured_order(tableau, ns):
        assert abs(slope - tableau.order) < 0.3, (tableau.name, slope)
    if tableau.embedded:  # the embedded solution has its own, lower order
        for slope in measured_order(tableau, ns, embedded=True):
            assert abs(slope - tableau.error_order) < 0.3, (tableau.name, "embedded", slope)


def test_builtin_table_is_read_only_and_frozen():
    assert set(TABLEAUS) == {"euler", "heun", "rk4", "bs3", "dopri5"}
    assert TABLEAUS["dopri5"] is DOPRI5
    with pytest.raises(TypeError):
        TABLEAUS["mine"] = EULER
    with pytest.raises(dataclasses.FrozenInstanceError):
        DOPRI5.order = 4
    assert (BS3.stages, BS3.evaluations_per_step, RK4.evaluations_per_step) == (4, 3, 4)
    assert BS3.b_error == pytest.approx((2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8))
    assert RK4.b_error is None and not RK4.embedded


@pytest.mark.parametrize("tableau", [BS3, DOPRI5], ids=lambda t: t.name)
def test_fsal_step_reuses_its_last_stage(tableau):
    calls = []

    def counted(x, t):
        calls.append(t)
        return field(x, t)

    first = tableau.step(counted, X0, 0.0, 0.1)
    assert len(calls) == tableau.stages
    torch.testing.assert_close(first.k_last, field(first.x, 0.1), rtol=0, atol=1e-15)
    calls.clear()
    tableau.step(counted, first.x, 0.1, 0.1, k0=first.k_last)
    assert len(calls) == tableau.stages - 1 and calls[-1] == pytest.approx(0.2)


def test_a_new_embedded_pair_is_a_few_lines_of_data():
    # Heun-Euler 2(1) and a non-FSAL 3(2) pair (Bogacki-Shampine without its last stage weight)
    heun_euler = ButcherTableau("heun_euler", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5),
                                order=2, b_hat=(1.0, 0.0), error_order=1)
    for slope in measured_order(heun_euler, (32, 64, 128)):
        assert abs(slope - 2) < 0.3
    for slope in measured_order(heun_euler, (64, 128, 256), embedded=True):
        assert abs(slope - 1) < 0.3
    step = heun_euler.step(lambda x, t: -x, torch.ones(1, 1, dtype=torch.float64), 0.0, 0.1)
    assert step.k_last is None
    assert float(step.x) == pytest.approx(1 - 0.1 + 0.005)  # 1 - h + h²/2
    assert float(step.error) == pytest.approx(0.005)  # x - x̂ = h²/2


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(c=(0.1, 1.0)), ValueError, r"c\[0\] must be 0"),
    (dict(c=()), ValueError, "at least one entry"),
    (dict(c=(0.0, float("nan"))), ValueError, "c must be finite"),
    (dict(c=(0.0, "x")), TypeError, "c must be a sequence of numbers"),
    (dict(a=((), (1.0,), (0.5, 0.5))), ValueError, "a must have 2 rows"),
    (dict(a=((), (0.5, 0.5))), ValueError, r"a\[1\] must have 1 entries"),
    (dict(a=((), (0.9,))), ValueError, r"row-sum condition violated at stage 1"),
    (dict(a=5), TypeError, "a must be a sequence of rows"),
    (dict(b=(0.5, 0.6)), ValueError, "b must sum to 1"),
    (dict(b=(1.0,)), ValueError, "b must have 2 entries"),
    (dict(order=0), ValueError, "order must be an int >= 1"),
    (dict(order=2.0), ValueError, "order must be an int"),
    (dict(name=""), TypeError, "name must be a non-empty str"),
    (dict(b_hat=(0.9, 0.0), error_order=1), ValueError, "b_hat must sum to 1"),
    (dict(b_hat=(0.5, 0.5), error_order=1), ValueError, "b_hat must differ from b"),
    (dict(b_hat=(1.0, 0.0)), ValueError, r"error_order must be an int in \[1, order=2\)"),
    (dict(b_hat=(1.0, 0.0), error_order=2), ValueError, "error_order must be an int in"),
    (dict(error_order=1), ValueError, "error_order is only meaningful with b_hat"),
    (dict(fsal=True), ValueError, "fsal=True needs"),
    (dict(fsal=1), TypeError, "fsal must be a bool"),
])
def test_tableau_validation_names_the_entry(kwargs, error, match):
    base = dict(name="heun", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
    with pytest.raises(error, match=match):
        ButcherTableau(**{**base, **kwargs})


def test_fsal_tableau_is_validated():
    ok = ButcherTableau("ee", c=(0.0, 1.0), a=((), (1.0,)), b=(1.0, 0.0), order=1, fsal=True)
    assert ok.evaluations_per_step == 1
    with pytest.raises(ValueError, match="fsal=True needs"):  # last row is not b
        ButcherTableau("bad", c=(0.0, 0.5, 1.0), a=((), (0.5,), (0.0, 1.0)), b=(1.0, 0.0, 0.0),
                       order=1, fsal=True)


# -- error norm ----------------------------------------------------------------------------


def test_error_ratio_norms_and_tolerances():
    x_old = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    x_new = torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    err = torch.tensor([[0.4, 0.1], [0.0, 0.3]], dtype=torch.float64)
    # scale = atol + rtol max(|x_old|, |x_new|) = [[0.4, 0.1], [0.1, 0.1]] -> ratios 1, 1, 0, 3
    rms = error_ratio(err, x_old, x_new, rtol=0.1, atol=0.1)
    assert rms == pytest.approx(math.sqrt((1 + 1 + 0 + 9) / 4))
    worst = error_ratio(err, x_old, x_new, rtol=0.1, atol=0.1, norm="max")
    assert worst == pytest.approx(math.sqrt(9 / 2))  # sample 1: mean of (0², 3²)
    # mixed="max": scale = max(atol, rtol |x|) = [[0.3, 0.1], [0.1, 0.1]]
    mixed = error_ratio(err, x_old, x_new, rtol=0.1, atol=0.1, mixed="max")
    assert mixed == pytest.approx(math.sqrt(((0.4 / 0.3) ** 2 + 1 + 0 + 9) / 4))


@pytest.mark.parametrize("where", ["error", "x_new"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_error_ratio_is_inf_for_non_finite_trials(where, value):
    x = torch.zeros(3, 2)
    err = torch.full((3, 2), 1e-6)
    bad = x.clone()
    bad[1, 0] = value
    args = (bad, x, x) if where == "error" else (err, x, bad)
    assert error_ratio(*args, rtol=1e-3, atol=1e-3) == math.inf
    assert error_ratio(*args, rtol=1e-3, atol=1e-3, norm="max") == math.inf


def test_error_ratio_blocks_hold_each_group_to_the_tolerance():
    """One log-det-like entry next to three state entries: the per-block norm is not diluted."""
    x = torch.zeros(2, 4, dtype=torch.float64)
    # ratios (atol = 1, rtol = 0): sample 0 [0.5, 0.5, 0.5 | 2], sample 1 [1, 1, 1 | 0]
    err = torch.tensor([[0.5, 0.5, 0.5, 2.0], [1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    opts = dict(rtol=1e-9, atol=1.0)
    plain = error_ratio(err, x, x, norm="max", **opts)
    assert plain == pytest.approx(math.sqrt((0.75 + 4) / 4))  # sample 0 passes, diluted
    blocked = error_ratio(err, x, x, norm="max", blocks=(3, 1), **opts)
    assert blocked == pytest.approx(2.0)  # sample 0's last entry alone
    # rms over the samples of the per-sample errors: sqrt((4 + 1) / 2)
    assert error_ratio(err, x, x, blocks=(3, 1), **opts) == pytest.approx(math.sqrt(2.5))
    # one block is the plain per-sample RMS
    assert error_ratio(err, x, x, norm="max", blocks=(4,), **opts) == pytest.approx(plain)
    bad = err.clone()
    bad[1, 3] = float("nan")
    assert error_ratio(bad, x, x, norm="max", blocks=(3, 1), **opts) == math.inf
    for blocks in [(3,), (2, 3), (4, 0)]:
        with pytest.raises(ValueError, match="blocks must be sizes >= 1 adding up to the 4"):
            error_ratio(err, x, x, blocks=blocks, **opts)


# -- PI controller ----------------------------------------------------------------------------


def test_pi_controller_factors():
    pi = PIController(order=5)
    # 0.9 err^(-0.7/5) err_prev^(0.4/5), inside the limits
    assert pi.accepted(0.5, 0.8, False) == pytest.approx(0.9 * 0.5 ** -0.14 * 0.8 ** 0.08)
    assert pi.accepted(0.0, 1.0, False) == 10.0  # err floored at 1e-10: capped by fac_max
    assert pi.accepted(1e-6, 1.0, True) == 1.0  # no growth right after a rejection
    assert pi.accepted(1.0, 1e-10, False) == 0.2  # a sudden error jump: floored by fac_min
    assert pi.rejected(2.0) == pytest.approx(0.9 * 2.0 ** -0.2)
    assert pi.rejected(1e6) == 0.2
    assert pi.rejected(math.inf) == 0.2
    integral = PIController(order=1, alpha=0.9, beta=0.0, reject_alpha=0.9, fac_min=0.0,
                            fac_max=math.inf, fac_max_after_reject=math.inf, fac_nonfinite=0.5)
    assert integral.accepted(1e-3, 0.3, True) == pytest.approx(0.9 * 1e-3 ** -0.9)
    assert integral.rejected(1e6) == pytest.approx(0.9 * 1e6 ** -0.9)
    assert integral.rejected(math.nan) == 0.5


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(order=0), ValueError, "order must be an int >= 1"),
    (dict(order=True), ValueError, "order must be an int"),
    (dict(alpha=0.0), ValueError, "alpha must be > 0"),
    (dict(beta=-0.1), ValueError, "beta must be >= 0"),
    (dict(reject_alpha=math.nan), ValueError, "reject_alpha must be > 0"),
    (dict(safety=1.5), ValueError, r"safety must be in \(0, 1\]"),
    (dict(fac_min=1.0), ValueError, r"fac_min must be in \[0, 1\)"),
    (dict(fac_max=0.5, fac_max_after_reject=0.5), ValueError, "fac_max must be >= 1"),
    (dict(fac_max_after_reject=20.0), ValueError, r"fac_max_after_reject must be in \[1, fac_max\]"),
    (dict(fac_nonfinite=1.0), ValueError, r"fac_nonfinite must be in \(0, 1\)"),
    (dict(err_floor=0.0), ValueError, r"err_floor must be in \(0, 1\)"),
    (dict(safety="0.9"), TypeError, "safety must be a number"),
])
def test_pi_controller_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        PIController(**{"order": 3, **kwargs})


# -- the accept/reject loop -----------------------------------------------------------------


def scripted(errors):
    """A propose() that returns the given error ratios in turn and records each attempt."""
    attempts = []

    def propose(state, t, t_next, h):
        attempts.append((t, t_next, h))
        err = errors[len(attempts) - 1] if len(attempts) <= len(errors) else 0.01
        if isinstance(err, Exception):
            raise err
        return err, state + 1

    return propose, attempts


def test_loop_accepts_rejects_and_lands_on_the_end():
    pi = PIController(order=2)
    propose, attempts = scripted([0.5, 4.0, 0.25, 0.5])
    seen = []
    final = integrate_adaptive(propose, 0, t0=1.0, t_end=0.0, h=0.1, controller=pi,
                               max_steps=100, label="toy", on_accept=lambda *a: seen.append(a))
    hs = [h for _, _, h in attempts]
    assert hs[0] == -0.1 and attempts[0][:2] == (1.0, 0.9)
    f1 = pi.accepted(0.5, 1.0, False)
    assert hs[1] == pytest.approx(-0.1 * f1)
    f2 = pi.rejected(4.0)  # the rejected attempt is retried from the same time
    assert attempts[2][0] == attempts[1][0] and hs[2] == pytest.approx(hs[1] * f2)
    assert hs[3] == pytest.approx(hs[2] * pi.accepted(0.25, 0.5, True))
    assert attempts[-1][1] == 0.0  # the last step is clipped onto t_end exactly
    assert final == len(attempts) - 1  # one increment per accepted step
    assert [s for s, _, _ in seen] == list(range(final))
    assert [t for _, t, _ in seen] == [a[1] for i, a in enumerate(attempts) if i != 1]


def test_loop_treats_non_finite_trials_as_rejections():
    pi = PIController(order=3)
    boom = NonFiniteError("score exploded")
    propose, attempts = scripted([boom, math.nan, 0.5])
    assert integrate_adaptive(propose, 0, t0=0.0, t_end=1.0, h=0.5, controller=pi,
                              max_steps=50, label="toy") > 0
    hs = [h for _, _, h in attempts]
    assert hs[:3] == pytest.approx([0.5, 0.1, 0.02])  # fac_nonfinite = 0.2 twice


def test_loop_raises_non_finite_error_when_it_cannot_shrink():
    propose, attempts = scripted([NonFiniteError("stage failed")] * 1000)
    with pytest.raises(NonFiniteError, match=r"toy: non-finite trial state at step 0 \(t=0.3\): "
                                             r"the step size underflowed") as info:
        integrate_adaptive(propose, 0, t0=0.3, t_end=0.0, h=0.1, controller=PIController(order=2),
                           max_steps=1000, label="toy")
    assert str(info.value.__cause__) == "stage failed"
    assert len(attempts) < 30  # 0.1 · 0.2^k reaches 10 ulp(0.3) in about 20 tries
    propose, _ = scripted([0.5, 0.5] + [math.inf] * 1000)
    with pytest.raises(NonFiniteError, match=r"at step 2 \(t=.*more than max_steps=10"):
        integrate_adaptive(propose, 0, t0=0.0, t_end=1.0, h=0.01, controller=PIController(order=2),
                           max_steps=10, label="toy")


def test_loop_max_steps_and_underflow_with_finite_errors():
    propose, attempts = scripted([0.9] * 1000)
    with pytest.raises(RuntimeError, match=r"toy: more than max_steps=5 attempted steps before "
                                           r"reaching t=1 .*raise max_steps"):
        integrate_adaptive(propose, 0, t0=0.0, t_end=1.0, h=1e-3, controller=PIController(order=2),
                           max_steps=5, label="toy")
    assert len(attempts) == 5
    propose, _ = scripted([1e3] * 1000)
    with pytest.raises(RuntimeError, match="the step size underflowed"):
        integrate_adaptive(propose, 0, t0=0.0, t_end=1.0, h=0.1, controller=PIController(order=2),
                           max_steps=1000, label="toy")


@pytest.mark.parametrize("h", [0.0, math.nan, math.inf, "0.1"])
def test_loop_needs_a_step_size(h):
    propose, _ = scripted([])
    with pytest.raises(ValueError, match="h must be a finite non-zero step size"):
        integrate_adaptive(propose, 0, t0=0.0, t_end=1.0, h=h, controller=PIController(order=1),
                           max_steps=10, label="toy")


def test_loop_with_nothing_to_do_returns_the_state():
    propose, attempts = scripted([])
    assert integrate_adaptive(propose, "x", t0=0.5, t_end=0.5, h=0.1,
                              controller=PIController(order=1), max_steps=1, label="toy") == "x"
    assert attempts == []


# -- initial step ------------------------------------------------------------------------------


def test_initial_step_heuristic():
    x = torch.ones(4, 2, dtype=torch.float64)
    k0 = -x
    h = initial_step(lambda y, t: -y, x, 1.0, k0, 0.0, 5, 1e-3, 1e-3)
    # d0 = d1 = 1/(2e-3), h0 = 0.01; d2 ≈ 1/(2e-3), h1 = (0.01/500)^(1/5) ≈ 0.115
    assert h == pytest.approx(min(1.0, (0.01 * 2e-3) ** 0.2), rel=1e-2)
    assert initial_step(lambda y, t: -y, x, 1.0, k0, 0.99, 5, 1e-3, 1e-3) <= 0.01 + 1e-15

    def fails(y, t):
        raise NonFiniteError("probe")

    assert initial_step(fails, x, 1.0, k0, 0.0, 5, 1e-3, 1e-3) == pytest.approx(0.01)
    nan = initial_step(lambda y, t: y * math.nan, x, 1.0, k0, 0.0, 5, 1e-3, 1e-3)
    assert nan == pytest.approx(0.01)
    with pytest.raises(NonFiniteError, match=r"solver: non-finite state or derivative at step 0 \(t=1\)"):
        initial_step(lambda y, t: -y, x, 1.0, k0 * math.nan, 0.0, 5, 1e-3, 1e-3, label="solver")
    tiny = initial_step(lambda y, t: 0 * y, x, 1.0, 0 * x, 0.0, 5, 1e-3, 1e-3)
    assert tiny == pytest.approx(1e-6)  # no motion: h0 = 1e-6 and h1 = max(1e-6, 1e-3 h0)


# -- solve_ivp wrapper -----------------------------------------------------------------------


def test_jacobian_structure():
    from scipy import sparse

    pattern = jacobian_structure("Radau", 3, 2)["jac_sparsity"]
    expected = sparse.block_diag([np.ones((2, 2))] * 3).toarray()
    assert np.array_equal(pattern.toarray(), expected)
    assert jacobian_structure("BDF", 2, 1)["jac_sparsity"].shape == (2, 2)
    assert jacobian_structure("LSODA", 5, 3) == {"lband": 2, "uband": 2}
    assert jacobian_structure("RK45", 5, 3) == {}


@pytest.mark.parametrize("method", ["RK45", "Radau", "LSODA"])
def test_scipy_solve_batch_and_output_times(method):
    y0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    calls = []

    def f(y, t):
        calls.append(y.dtype)
        return field(y, t)

    end = scipy_solve(f, y0, (0.0, T_END), method=method, rtol=1e-9, atol=1e-9, label="toy")
    assert len(end) == 1 and end.times == (T_END,)
    assert end.final.dtype == torch.float32 and end.final.shape == (2, 2)
    truth = y0.double() * math.exp(math.sin(T_END))
    torch.testing.assert_close(end.final.double(), truth, rtol=0, atol=1e-6)
    assert set(calls) == {torch.float32} and len(calls) > 10
    # scipy's nfev leaves out Radau's finite-difference Jacobian columns
    assert end.nfev == len(calls) if method == "RK45" else end.nfev <= len(calls)
    grid = [0.0, 0.25, 0.5, T_END]
    sol = scipy_solve(f, y0, (0.0, T_END), method=method, rtol=1e-9, atol=1e-9, t_eval=grid,
                      label="toy")
    assert sol.times == tuple(grid) and len(sol) == 4
    for i, t in enumerate(grid):
        torch.testing.assert_close(sol[i].double(), y0.double() * math.exp(math.sin(t)),
                                   rtol=0, atol=1e-6)


def test_scipy_solve_errors(monkeypatch):
    y0 = torch.ones(2, 1, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"toy: non-finite rate at t=0\.5 \(method RK23\); "
                                             r"look again"):
        scipy_solve(lambda y, t: y * (math.nan if t >= 0.5 else 1.0), y0, (0.5, 1.0),
                    method="RK23", rtol=1e-3, atol=1e-3, label="toy", what="rate",
                    hint="look again")
    import scipy.integrate

    class Failed:
        success, message = False, "step size underflow"

    monkeypatch.setattr(scipy.integrate, "solve_ivp", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match=r"toy: solve_ivp \(BDF, rtol=0.01, atol=0.001\) "
                                           r"failed: step size underflow"):
        scipy_solve(field, y0, (0.0, 1.0), method="BDF", rtol=1e-2, atol=1e-3, label="toy")


def test_rkstep_is_a_named_tuple():
    step = EULER.step(field, X0, 0.0, 0.1)
    assert isinstance(step, RKStep) and step.k_last is None and step.error is None
    torch.testing.assert_close(step.x, X0 + 0.1 * field(X0, 0.0))

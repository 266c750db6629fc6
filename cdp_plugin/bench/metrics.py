"""Metric code of the benchmark harness: pure functions with known answers (tested in ``tests/test_bench_metrics.py``).

* :func:`wilson_interval`: 95 % score interval of a success rate (binomial, pooled over episodes and seeds),
* :func:`action_variance`: per-observation variance of sampled actions (many noise seeds, one observation),
* :func:`sampler_separation`: the deterministic sampler's separation ratio (two nearby noise seeds),
* :func:`lambda_profile`: lambda_max / lambda_min of sym J_x0 at given noise levels (any prediction type),
* :func:`step_lambda_profile`: the same per step of a sampler grid, against each step's exact contraction window,
* :func:`interleaved_step_times`: median wall-clock time of several callables measured round-robin,
* :func:`parse_train_log`: LeRobot's ``step:N ... updt_s:... loss:...`` console lines,
* :func:`median_latency_ms`: wall-clock latency of a callable.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from cdp_plugin.contraction import sym_extreme_eigs
from cdp_plugin.samplers import separation_ratio, step_contraction_bounds

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` of a binomial proportion; ``(0, 1)`` when ``n == 0``."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def action_variance(sample_fn: Callable[[Tensor], Tensor], noise: Tensor) -> Tensor:
    """Per-observation action variance.

    Args:
        sample_fn: maps noise ``(K, N, ...)`` flattened to ``(K*N, ...)`` to actions of the same shape, where
            the ``N`` samples of row ``k`` share observation ``k``.
        noise: ``(K, N, ...)`` initial noises (``N >= 2`` samples per observation).

    Returns ``(K,)``: for each observation the unbiased variance across its ``N`` samples, averaged over the
    action entries (every horizon step and action dimension), in squared action units.
    """
    K, N = noise.shape[:2]
    if N < 2:
        raise ValueError("action_variance needs at least 2 samples per observation")
    acts = sample_fn(noise.reshape(K * N, *noise.shape[2:])).reshape(K, N, -1)
    return acts.var(dim=1, unbiased=True).mean(dim=1)


def sampler_separation(
    sample_fn: Callable[[Tensor], Tensor],
    noise: Tensor,
    delta: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Separation ratio per sample (``|A(z + delta u) - A(z)| / delta``, unit ``u``); < 1 means contractive.

    Thin wrapper over :func:`cdp_plugin.samplers.separation_ratio` (computed in float64 when the noise is).
    """
    return separation_ratio(sample_fn, noise, delta=delta, generator=generator)


def lambda_profile(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    scheduler,
    timesteps: list[int],
    prediction_type: str,
    num_iters: int = 8,
    generator: torch.Generator | None = None,
) -> list[dict[str, float]]:
    """lambda_max / lambda_min of sym J_x0 at each training timestep in ``timesteps``.

    ``x_t = alpha_t x0 + sigma_t eps`` for clean actions ``x0`` (B, ...); ``denoiser(x_t, t)`` is the network
    (its output is read with ``prediction_type``: for epsilon networks the x0-Jacobian is
    ``(I - sigma_t J_eps) / alpha_t``). Returns one row per timestep with the batch mean / max of lambda_max,
    the mean of lambda_min, ``alpha_t`` (the contraction threshold: the sampler contracts where
    lambda_max < alpha_t) and the share of samples violating it.
    """
    rows = []
    ac = scheduler.alphas_cumprod
    for t in timesteps:
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long)
        a = float(ac[int(t)].sqrt())
        s = float((1 - ac[int(t)]).sqrt())
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        xt = a * x0 + s * eps
        lmin, lmax = sym_extreme_eigs(
            lambda x, tt=tt: denoiser(x, tt),
            xt,
            num_iters=num_iters,
            alpha=torch.full((x0.shape[0],), a, dtype=x0.dtype),
            sigma=torch.full((x0.shape[0],), s, dtype=x0.dtype),
            prediction_type=prediction_type,
            generator=generator,
        )
        rows.append(
            {
                "t": int(t),
                "alpha": a,
                "sigma": s,
                "lambda_max_mean": float(lmax.mean()),
                "lambda_max_max": float(lmax.max()),
                "lambda_min_mean": float(lmin.mean()),
                "violation_frac": float((lmax >= a).float().mean()),
            }
        )
    return rows


def step_lambda_profile(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    scheduler,
    sampler: str,
    num_inference_steps: int | None,
    prediction_type: str,
    num_iters: int = 8,
    generator: torch.Generator | None = None,
) -> list[dict[str, float]]:
    """lambda_max / lambda_min of sym J_x0 at every step ``t -> s`` of ``sampler``'s grid, against the step's
    exact contraction window ``(lower, upper)`` (:func:`cdp_plugin.samplers.step_contraction_bounds` on the
    training ``scheduler``). ``x_t = alpha_t x0 + sigma_t eps`` for clean actions ``x0`` (B, ...), one fresh
    ``eps`` per step. A sample violates the step when ``lambda_max >= upper`` or ``lambda_min <= lower``
    (the step then expands some direction); ``violation_frac`` is the share of the B samples that do,
    ``violation_upper_frac`` the share with ``lambda_max >= upper`` alone. Rows also carry ``alpha`` (the
    continuous-time threshold) for comparison.
    """
    rows = []
    ac = scheduler.alphas_cumprod
    for b in step_contraction_bounds(scheduler, sampler, num_inference_steps):
        t = b.t
        tt = torch.full((x0.shape[0],), t, dtype=torch.long)
        a = float(ac[t].sqrt())
        s = float((1 - ac[t]).sqrt())
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        lmin, lmax = sym_extreme_eigs(
            lambda x, tt=tt: denoiser(x, tt),
            a * x0 + s * eps,
            num_iters=num_iters,
            alpha=torch.full((x0.shape[0],), a, dtype=x0.dtype),
            sigma=torch.full((x0.shape[0],), s, dtype=x0.dtype),
            prediction_type=prediction_type,
            generator=generator,
        )
        up, lo = lmax >= b.upper, lmin <= b.lower
        rows.append(
            {
                "t": t,
                "s": b.s,
                "alpha": a,
                "sigma": s,
                "lower": b.lower,
                "upper": b.upper,
                "n": int(x0.shape[0]),
                "lambda_max_mean": float(lmax.mean()),
                "lambda_max_max": float(lmax.max()),
                "lambda_min_mean": float(lmin.mean()),
                "lambda_min_min": float(lmin.min()),
                "violation_frac": float((up | lo).float().mean()),
                "violation_upper_frac": float(up.float().mean()),
                "violation_alpha_frac": float((lmax >= a).float().mean()),
            }
        )
    return rows


def interleaved_step_times(
    fns: dict[str, Callable[[], object]], repeats: int = 8, warmup: int = 2
) -> dict[str, float]:
    """Median seconds of each callable, measured round-robin (``a b a b ...``) so that load on a shared machine
    hits every callable alike; ``warmup`` rounds are dropped."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


_LOG_KV = re.compile(r"(\w+):([-+0-9.eE]+)([KMB]?)(?=\s|$)")
_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9}


def parse_train_log(text: str) -> list[dict[str, float]]:
    """LeRobot's console log lines ``... step:N smpl:.. loss:.. updt_s:.. data_s:..`` as dicts of floats."""
    rows = []
    for line in text.splitlines():
        if " step:" not in line or "loss:" not in line:
            continue
        row = {}
        for k, v, suf in _LOG_KV.findall(line[line.index(" step:") :]):
            try:
                row[k] = float(v) * _SUFFIX[suf]
            except ValueError:
                pass
        if "step" in row:
            rows.append(row)
    return rows


def mean_update_seconds(rows: list[dict[str, float]]) -> float | None:
    """Mean ``updt_s`` (seconds per optimiser step, averaged by LeRobot over each log window), first window
    dropped when there are several (warm-up)."""
    vals = [r["updt_s"] for r in rows if "updt_s" in r]
    if len(vals) > 1:
        vals = vals[1:]
    return statistics.fmean(vals) if vals else None


def median_latency_ms(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall-clock time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)

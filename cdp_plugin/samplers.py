"""Deterministic (ODE) samplers for diffusion policies, built on diffusers' schedulers.

Contraction is a property of the probability-flow ODE, so CDP deploys with a deterministic sampler:

* ``"ddim"``: ``DDIMScheduler`` with ``eta = 0`` (first-order, a discretised PF-ODE),
* ``"dpmsolver++"``: ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``,
  ``solver_order=2`` (the paper's DPM-Solver++(2M)),
* ``"ddpm"``: LeRobot's stochastic default, kept selectable.

All helpers are small pure functions: no global state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")

# model_fn(x_t, t) -> network output, t a (B,) long tensor of scheduler timesteps
ModelFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class ScheduleConfig:
    """The training noise schedule (the fields LeRobot's ``DiffusionConfig`` and diffusion_policy share)."""

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0


def make_scheduler(sampler: str, schedule: ScheduleConfig):
    """Build the diffusers scheduler for ``sampler`` on the given training schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        beta_schedule=schedule.beta_schedule,
        prediction_type=schedule.prediction_type,
    )
    if sampler == "ddpm":
        return DDPMScheduler(**common, clip_sample=schedule.clip_sample, clip_sample_range=schedule.clip_sample_range)
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=schedule.clip_sample, clip_sample_range=schedule.clip_sample_range)
    if sampler == "dpmsolver++":
        return DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            lower_order_final=True,
            # dpmsolver++ thresholding clips x0 like clip_sample does for DDPM/DDIM
            thresholding=schedule.clip_sample,
            sample_max_value=schedule.clip_sample_range,
            dynamic_thresholding_ratio=1.0,
        )
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")


def alpha_sigma(scheduler, timesteps: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha_t = sqrt(alphas_cumprod[t])`` and ``sigma_t = sqrt(1 - alphas_cumprod[t])`` (VP)."""
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps.long()]
    return ac.sqrt(), (1 - ac).sqrt()


def sample(
    model_fn: ModelFn,
    noise: Tensor,
    scheduler,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run the reverse process from ``noise`` (B, ...) with ``scheduler``; returns the final sample."""
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    x = noise
    if hasattr(scheduler, "init_noise_sigma"):
        x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        out = model_fn(x, tt)
        kw = {"generator": generator} if generator is not None else {}
        x = scheduler.step(out, t, x, **kw).prev_sample
    return x


def separation_ratio(
    sample_fn: Callable[[Tensor], Tensor],
    noise: Tensor,
    delta: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Empirical contraction of a deterministic sampler, per sample (B,).

    Sends ``noise`` and ``noise + delta * u`` (``u`` a random unit direction per sample) through
    ``sample_fn`` and returns ``|final difference| / |initial difference|``. Below 1: nearby noise seeds
    converge (contractive); above 1: they separate.
    """
    u = torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device=noise.device)
    u = u / u.flatten(1).norm(dim=1).reshape(-1, *([1] * (noise.dim() - 1)))
    a = sample_fn(noise)
    b = sample_fn(noise + delta * u)
    return (a - b).flatten(1).norm(dim=1) / delta

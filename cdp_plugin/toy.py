"""A 2-D two-mode toy that shows what the contraction penalty does to a diffusion sampler.

Actions come from two modes (centres +-(0.6, 0.3), std 0.06). A small MLP denoiser is trained with and
without the penalty; the deterministic sampler's separation ratio (how far two nearby noise seeds end
apart, relative to where they started) and the share of samples in each mode are measured. Used by the
tests, ``examples/toy_flows.py`` and the benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import trange

from cdp_plugin.contraction import (
    ContractionConfig,
    contraction_penalty,
    dual_ascent_weight,
    steering_violation_share,
)
from cdp_plugin.samplers import (
    ScheduleConfig,
    alpha_sigma,
    make_scheduler,
    sample,
    separation_ratio,
    training_scheduler,
)

CENTRES = torch.tensor([[0.6, 0.3], [-0.6, -0.3]])
MODE_STD = 0.06


def two_mode_data(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` 2-D points, half from each mode."""
    which = torch.randint(0, 2, (n,), generator=generator)
    return CENTRES[which] + MODE_STD * torch.randn(n, 2, generator=generator)


class ToyDenoiser(nn.Module):
    """MLP ``(x_t, t) -> output`` with a sinusoidal embedding of t (2 hidden layers, SiLU)."""

    def __init__(self, dim: int = 2, hidden: int = 128, emb: int = 32, num_train_timesteps: int = 100):
        super().__init__()
        self.emb, self.T = emb, num_train_timesteps
        self.net = nn.Sequential(
            nn.Linear(dim + emb, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        half = self.emb // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=x.device) / half)
        ang = (t.float() / self.T * 1000.0)[:, None] * freqs[None]
        return self.net(torch.cat([x, ang.sin(), ang.cos()], dim=1))


@dataclass
class ToyResult:
    sep_median: float
    sep_p90: float
    mode_pos: float
    mode_neg: float
    stranded_p90: float

    def __str__(self) -> str:
        return (
            f"separation ratio median {self.sep_median:.4f} p90 {self.sep_p90:.4f} | "
            f"mode+ {self.mode_pos:.2f} mode- {self.mode_neg:.2f} | stranded p90 {self.stranded_p90:.3f}"
        )


def train_toy(
    contraction: ContractionConfig | None,
    prediction_type: str = "sample",
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    num_train_timesteps: int = 100,
    n_data: int = 2048,
    progress: bool = False,
) -> ToyDenoiser:
    """Train a :class:`ToyDenoiser` on the two-mode data (``contraction=None`` is plain DP)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = two_mode_data(n_data, g)
    sched = training_scheduler(
        ScheduleConfig(num_train_timesteps, prediction_type=prediction_type, clip_sample=False)
    )
    model = ToyDenoiser(num_train_timesteps=num_train_timesteps)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gamma = contraction.weight if contraction is not None else 0.0
    for step in trange(steps, disable=not progress, desc="toy"):
        x0 = data[torch.randint(0, n_data, (batch_size,), generator=g)]
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, num_train_timesteps, (batch_size,), generator=g)
        xt = sched.add_noise(x0, eps, t)
        pred = model(xt, t)
        target = {"sample": x0, "epsilon": eps}.get(prediction_type)
        if target is None:
            target = sched.get_velocity(x0, eps, t)
        loss = (pred - target).pow(2).mean()
        if contraction is not None and contraction.active:
            a, s = alpha_sigma(sched, t)
            pen, diag = contraction_penalty(
                lambda x, i, t=t: model(x, t[i]),
                xt,
                a,
                s,
                prediction_type,
                contraction,
                t_frac=t.float() / num_train_timesteps,
                generator=g,
                y=pred,
                measure=contraction.measures_share_at_step(step),
            )
            loss = loss + gamma * pen
            if contraction.adaptive and (v := steering_violation_share(diag)) is not None:
                gamma = dual_ascent_weight(gamma, v, contraction)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def evaluate_toy(
    model: ToyDenoiser,
    prediction_type: str = "sample",
    sampler: str = "ddim",
    num_inference_steps: int = 20,
    n: int = 2000,
    seed: int = 123,
) -> ToyResult:
    """Separation ratio (delta 1e-3) and mode statistics of the deterministic sampler."""
    sched = make_scheduler(
        sampler, ScheduleConfig(model.T, prediction_type=prediction_type, clip_sample=False)
    )
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 2, generator=g)

    def run(z: Tensor) -> Tensor:
        return sample(model, z, sched, num_inference_steps)

    ratio = separation_ratio(run, noise, 1e-3, generator=g)
    x = run(noise)
    d = torch.cdist(x, CENTRES)
    nearest = d.argmin(1)
    return ToyResult(
        sep_median=ratio.median().item(),
        sep_p90=ratio.quantile(0.9).item(),
        mode_pos=(nearest == 0).float().mean().item(),
        mode_neg=(nearest == 1).float().mean().item(),
        stranded_p90=d.min(1).values.quantile(0.9).item(),
    )

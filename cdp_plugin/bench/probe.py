"""Sampler-level metrics of a trained checkpoint (DP ``diffusion`` or ``cdp``), measured in-process.

The policy is loaded from ``<ckpt>/pretrained_model`` with its processors, and evaluated with the *same*
deterministic sampler for every policy type (DDIM, eta = 0, ``num_inference_steps`` steps; LeRobot's ``diffusion``
offers only DDPM / DDIM, so this is the common deterministic choice). Observations are fixed training windows
of the task's full dataset, normalised by the policy's own preprocessor; all action quantities are in the policy's
normalised action space (LeRobot's min-max normalisation to [-1, 1]).

* ``lambda_profile``: per step ``t -> s`` of that sampler grid, lambda_max / lambda_min of sym J_x0 (Lanczos) at
  ``x_t = alpha_t x0 + sigma_t eps`` for ``n_lambda`` (>= 16) observations, against the step's exact contraction
  window (:func:`cdp_plugin.samplers.step_contraction_bounds`); a sample violates when ``lambda_max >= upper``
  or ``lambda_min <= lower``.
* ``step_time``: train-step time (forward + backward + AdamW) of this policy and of LeRobot's ``diffusion`` with
  the same architecture, measured round-robin in this process (:func:`interleaved_step_times`), as a ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cdp_plugin.bench.metrics import (
    action_variance,
    interleaved_step_times,
    median_latency_ms,
    sampler_separation,
    step_lambda_profile,
)
from cdp_plugin.policy import ContractiveDiffusionPolicy  # noqa: F401  (registers the cdp policy type)
from cdp_plugin.register import register_all


@dataclass
class ProbeSettings:
    eval_sampler: str = "ddim"
    num_inference_steps: int = 10
    n_obs: int = 16  # observations (dataset windows)
    n_samples: int = 16  # samples per observation for the action variance
    n_sep: int = 4  # noise seeds per observation for the separation ratio
    sep_delta: float = 1e-3
    n_lambda: int = 16  # observations for the per-step lambda profile (issue 13: >= 16)
    lanczos_iters: int = 8
    latency_repeats: int = 10
    step_time_repeats: int = 8  # interleaved train steps per policy (0: skip)
    step_time_batch: int = 32
    seed: int = 0


def load_policy(ckpt: str | Path, settings: ProbeSettings, device: str = "cpu"):
    """``(policy, preprocessor, cfg)`` with the evaluation sampler swapped in (DDIM for DP, ``sampler`` for cdp)."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    from cdp_plugin.policy.safe_load import validate_processor_files

    register_all()  # the plugin's env types, for configs that name them
    ckpt = str(ckpt)
    validate_processor_files(ckpt)  # before LeRobot builds anything from the checkpoint's JSON
    cfg = PreTrainedConfig.from_pretrained(ckpt)
    cfg.device = device
    cfg.num_inference_steps = settings.num_inference_steps
    if cfg.type == "cdp":
        cfg.sampler = settings.eval_sampler
    elif settings.eval_sampler == "ddim":
        cfg.noise_scheduler_type = "DDIM"
    else:
        raise ValueError(f"DP (diffusion) has no {settings.eval_sampler!r} sampler; use ddim")
    policy = get_policy_class(cfg.type).from_pretrained(ckpt, config=cfg)
    policy.eval()
    # a checkpoint trained on a GPU names cuda in its processor: probe on ``device`` whatever it was trained on
    pre, _ = make_pre_post_processors(
        cfg, pretrained_path=ckpt, preprocessor_overrides={"device_processor": {"device": device}}
    )
    return policy, pre, cfg


def observation_batch(dataset_root: str | Path, cfg, preprocessor, n_obs: int) -> dict:
    """``n_obs`` evenly spaced training windows of the dataset, collated and preprocessed."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from torch.utils.data import default_collate

    meta = LeRobotDatasetMetadata("local/bench", root=dataset_root)
    ds = LeRobotDataset(
        "local/bench", root=dataset_root, delta_timestamps=resolve_delta_timestamps(cfg, meta)
    )
    n = len(ds)
    idx = [int(i) for i in torch.linspace(0, n - 1, n_obs + 2)[1:-1].round()]
    batch = default_collate([ds[i] for i in idx])
    return preprocessor(batch)


def _sampler(model, global_cond):
    @torch.no_grad()
    def run(noise):
        reps = noise.shape[0] // global_cond.shape[0]
        return model.conditional_sample(
            noise.shape[0], global_cond=global_cond.repeat_interleave(reps, 0), noise=noise
        )

    return run


def dp_reference(cfg):
    """LeRobot's ``DiffusionPolicy`` with the architecture of ``cfg`` (the step-time reference)."""
    from dataclasses import fields

    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    kw = {f.name: getattr(cfg, f.name) for f in fields(DiffusionConfig) if f.init and hasattr(cfg, f.name)}
    if kw.get("prediction_type") not in ("epsilon", "sample"):
        kw["prediction_type"] = "sample"
    kw["noise_scheduler_type"] = "DDPM"
    return DiffusionPolicy(DiffusionConfig(**kw))


def step_time(ckpt: str | Path, batch: dict, settings: ProbeSettings) -> dict:
    """Median train-step seconds of the checkpoint's policy (trained weights, its own training config) and of a
    same-size DP, interleaved in this process; ``ratio`` = policy / DP."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    cfg = PreTrainedConfig.from_pretrained(str(ckpt))
    cfg.device = "cpu"
    torch.manual_seed(settings.seed)
    policies = {
        "policy": get_policy_class(cfg.type).from_pretrained(str(ckpt), config=cfg).train(),
        "dp": dp_reference(cfg).train(),
    }
    b = {k: v[: settings.step_time_batch] for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def make_step(p):
        opt = torch.optim.AdamW(p.parameters(), lr=1e-6)

        def step():
            loss, _ = p.forward(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    t = interleaved_step_times(
        {k: make_step(p) for k, p in policies.items()}, repeats=settings.step_time_repeats
    )
    return {
        "policy_s": t["policy"],
        "dp_s": t["dp"],
        "ratio": t["policy"] / t["dp"],
        "repeats": settings.step_time_repeats,
        "batch": int(next(iter(b.values())).shape[0]),
    }


def probe_checkpoint(
    ckpt: str | Path, dataset_root: str | Path, settings: ProbeSettings, full: bool = True
) -> dict:
    """Action variance, separation ratio, per-step lambda profile, step time and latency of one checkpoint
    (``full=False``: only the separation ratio, for checkpoints along training)."""
    policy, pre, cfg = load_policy(ckpt, settings)
    model = policy.diffusion
    n_batch = max(settings.n_obs, settings.n_lambda)
    batch = observation_batch(dataset_root, cfg, pre, n_batch)
    g = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        gc = model._prepare_global_conditioning(batch)
    H, A = cfg.horizon, cfg.action_feature.shape[0]
    K = min(settings.n_obs, gc.shape[0])
    run = _sampler(model, gc[:K])
    out: dict = {}
    sep = sampler_separation(
        run, torch.randn(K * settings.n_sep, H, A, generator=g), settings.sep_delta, generator=g
    )
    out["sep_ratio"] = {
        "median": float(sep.median()),
        "p90": float(sep.quantile(0.9)),
        "mean": float(sep.mean()),
        "n": int(sep.numel()),
    }
    if not full:
        return out
    var = action_variance(run, torch.randn(K, settings.n_samples, H, A, generator=g))
    out["action_var"] = {
        "mean": float(var.mean()),
        "per_obs": [float(v) for v in var],
        "n_obs": K,
        "n_samples": settings.n_samples,
    }
    m = min(settings.n_lambda, gc.shape[0])
    cond = gc[:m]
    out["lambda_profile"] = step_lambda_profile(
        lambda x, t: model.unet(x, t, global_cond=cond),
        batch["action"][:m].float(),
        model.noise_scheduler,
        settings.eval_sampler,
        settings.num_inference_steps,
        cfg.prediction_type,
        num_iters=settings.lanczos_iters,
        generator=g,
    )
    one = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        out["latency_ms"] = median_latency_ms(
            lambda: model.generate_actions(one), repeats=settings.latency_repeats
        )
    if settings.step_time_repeats:
        out["step_time"] = step_time(ckpt, batch, settings)
    out["prediction_type"] = cfg.prediction_type
    out["eval_sampler"] = f"{settings.eval_sampler}-{settings.num_inference_steps}"
    return out

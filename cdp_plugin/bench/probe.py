"""Sampler-level metrics of a trained checkpoint (DP ``diffusion`` or ``cdp``), measured in-process.

The policy is loaded from ``<ckpt>/pretrained_model`` with its processors, and evaluated with the *same*
deterministic sampler for every policy type (DDIM, eta = 0, ``num_inference_steps`` steps; LeRobot's ``diffusion``
offers only DDPM / DDIM, so this is the common deterministic choice). Observations are fixed training windows
of the task's full dataset, normalised by the policy's own preprocessor; all action quantities are in the policy's
normalised action space (LeRobot's min-max normalisation to [-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cdp_plugin.bench.metrics import action_variance, lambda_profile, median_latency_ms, sampler_separation
from cdp_plugin.policy import ContractiveDiffusionPolicy  # noqa: F401  (registers the cdp policy type)
from cdp_plugin.register import register_all
from cdp_plugin.samplers import make_scheduler


@dataclass
class ProbeSettings:
    eval_sampler: str = "ddim"
    num_inference_steps: int = 10
    n_obs: int = 8  # observations (dataset windows)
    n_samples: int = 16  # samples per observation for the action variance
    n_sep: int = 8  # noise seeds per observation for the separation ratio
    sep_delta: float = 1e-3
    n_lambda: int = 4  # observations for the lambda profile
    lanczos_iters: int = 8
    latency_repeats: int = 10
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
    pre, _ = make_pre_post_processors(cfg, pretrained_path=ckpt)
    return policy, pre, cfg


def observation_batch(dataset_root: str | Path, cfg, preprocessor, n_obs: int) -> dict:
    """``n_obs`` evenly spaced training windows of the dataset, collated and preprocessed."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from torch.utils.data import default_collate

    meta = LeRobotDatasetMetadata("local/bench", root=dataset_root)
    ds = LeRobotDataset("local/bench", root=dataset_root, delta_timestamps=resolve_delta_timestamps(cfg, meta))
    n = len(ds)
    idx = [int(i) for i in torch.linspace(0, n - 1, n_obs + 2)[1:-1].round()]
    batch = default_collate([ds[i] for i in idx])
    return preprocessor(batch)


def _sampler(model, global_cond):
    @torch.no_grad()
    def run(noise):
        reps = noise.shape[0] // global_cond.shape[0]
        return model.conditional_sample(noise.shape[0], global_cond=global_cond.repeat_interleave(reps, 0), noise=noise)

    return run


def probe_checkpoint(ckpt: str | Path, dataset_root: str | Path, settings: ProbeSettings, full: bool = True) -> dict:
    """Action variance, separation ratio, lambda profile and latency of one checkpoint (``full=False``: only the
    separation ratio, for checkpoints along training)."""
    policy, pre, cfg = load_policy(ckpt, settings)
    model = policy.diffusion
    batch = observation_batch(dataset_root, cfg, pre, settings.n_obs)
    g = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        gc = model._prepare_global_conditioning(batch)
    H, A = cfg.horizon, cfg.action_feature.shape[0]
    K = gc.shape[0]
    run = _sampler(model, gc)
    out: dict = {}
    sep = sampler_separation(run, torch.randn(K * settings.n_sep, H, A, generator=g), settings.sep_delta, generator=g)
    out["sep_ratio"] = {"median": float(sep.median()), "p90": float(sep.quantile(0.9)), "mean": float(sep.mean()),
                        "n": int(sep.numel())}
    if not full:
        return out
    var = action_variance(run, torch.randn(K, settings.n_samples, H, A, generator=g))
    out["action_var"] = {"mean": float(var.mean()), "per_obs": [float(v) for v in var], "n_obs": K,
                         "n_samples": settings.n_samples}
    # lambda_max of sym J_x0 at the noise levels the deterministic sampler visits
    sched = model.noise_scheduler
    eval_sched = make_scheduler("ddim", sched)
    eval_sched.set_timesteps(settings.num_inference_steps)
    ts = sorted(int(t) for t in eval_sched.timesteps)
    m = min(settings.n_lambda, K)
    x0 = batch["action"][:m].float()
    cond = gc[:m]
    out["lambda_profile"] = lambda_profile(
        lambda x, t: model.unet(x, t, global_cond=cond), x0, sched, ts, cfg.prediction_type,
        num_iters=settings.lanczos_iters, generator=g,
    )
    one = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        out["latency_ms"] = median_latency_ms(lambda: model.generate_actions(one), repeats=settings.latency_repeats)
    out["prediction_type"] = cfg.prediction_type
    out["eval_sampler"] = f"{settings.eval_sampler}-{settings.num_inference_steps}"
    return out

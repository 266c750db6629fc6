"""Contractive Diffusion Policy for LeRobot: ``DiffusionPolicy`` + contraction penalty + ODE sampler.

The checkpoint layout is LeRobot's ``diffusion`` one (``diffusion.unet.*``, ``diffusion.rgb_encoder.*``):
no parameter or buffer is added, so ``diffusion`` weights load into ``cdp`` and back. The one exception is
the adaptive weight (``contraction_adaptive_target`` set): its dual variable gamma is the scalar buffer
``diffusion.contraction_weight``, saved with the weights so that ``--resume=true`` continues it.
"""

import os
from importlib.resources import files

import torch
import torch.nn.functional as F  # noqa: N812
from lerobot.policies.diffusion.modeling_diffusion import DiffusionModel, DiffusionPolicy
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE
from torch import Tensor

from cdp_plugin.contraction import (
    StepGrid,
    dual_ascent_weight,
    penalty_from_outputs,
    penalty_rows,
    steering_violation_share,
    sym_extreme_eigs,
)
from cdp_plugin.policy.configuration_cdp import ContractiveDiffusionConfig
from cdp_plugin.policy.guards import GuardedPolicyMixin, check_finite_loss, install_train_hooks
from cdp_plugin.samplers import alpha_sigma, make_scheduler

# Optional batch keys that pin the random draws of one training step (tests, DDP equivalence checks).
NOISE_KEY, TIMESTEPS_KEY, PROBE_KEY = "cdp.noise", "cdp.timesteps", "cdp.probe"
# Core diagnostics logged as contraction_<key> next to LeRobot's metrics.
DIAG_KEYS = ("lambda_max", "lambda_min", "violation_frac", "probe_rayleigh", "ritz_violation_frac")


class ContractiveDiffusionModel(DiffusionModel):
    """LeRobot's ``DiffusionModel`` with the contraction penalty in ``compute_loss`` and an ODE sampler."""

    def __init__(self, config: ContractiveDiffusionConfig):
        super().__init__(config)
        self.contraction = config.contraction_config()
        # built from the training scheduler's own config (one meaning per sampler name: cdp_plugin.samplers)
        self.sampling_scheduler = make_scheduler(config.sampler, self.noise_scheduler)
        self._train_step = 0
        self._last_diag: dict[str, float] = {}  # latest Lanczos estimates, logged every step
        self.last_info: dict[str, float] = {}  # floats of the latest compute_loss, for LeRobot's training log
        self._step_grid: StepGrid | None = None
        if self.contraction.adaptive:  # the dual variable: saved in model.safetensors, restored on resume
            self.register_buffer("contraction_weight", torch.tensor(float(self.contraction.weight)))

    def current_weight(self) -> float:
        """gamma of the next training step: ``contraction_weight`` (fixed) or the adaptive buffer's value."""
        return float(self.contraction_weight) if self.contraction.adaptive else self.contraction.weight

    def step_grid(self) -> StepGrid | None:
        """The deployed sampler's steps on the training timestep axis (step window, per-step thresholds), or
        ``None`` when the contraction settings need neither."""
        c = self.contraction
        if c.step_window == (0.0, 1.0) and c.threshold != "sampler":
            return None
        if self._step_grid is None:
            self._step_grid = StepGrid.from_sampler(
                self.noise_scheduler, self.config.sampler, self.config.num_inference_steps
            )
        return self._step_grid

    # ----------------------------------------------------------------------------------- sampling
    def conditional_sample(self, batch_size, global_cond=None, generator=None, noise=None) -> Tensor:
        """LeRobot's reverse loop, run with the configured (deterministic) scheduler."""
        original = self.noise_scheduler
        self.noise_scheduler = self.sampling_scheduler
        try:
            return super().conditional_sample(
                batch_size, global_cond=global_cond, generator=generator, noise=noise
            )
        finally:
            self.noise_scheduler = original

    # ----------------------------------------------------------------------------------- training
    def _check_batch(self, batch: dict[str, Tensor]) -> None:
        missing = [k for k in (OBS_STATE, ACTION) if k not in batch]
        if missing:
            raise KeyError(f"cdp: batch is missing {missing}; it has {sorted(batch)}")
        if OBS_IMAGES not in batch and OBS_ENV_STATE not in batch:
            raise KeyError(f"cdp: batch needs images or '{OBS_ENV_STATE}'; it has {sorted(batch)}")
        act, st = batch[ACTION], batch[OBS_STATE]
        if act.dim() != 3 or act.shape[1] != self.config.horizon:
            raise ValueError(
                f"cdp: '{ACTION}' must be (B, horizon={self.config.horizon}, action_dim), "
                f"got {tuple(act.shape)}"
            )
        if st.dim() != 3 or st.shape[1] != self.config.n_obs_steps:
            raise ValueError(
                f"cdp: '{OBS_STATE}' must be (B, n_obs_steps={self.config.n_obs_steps}, state_dim), "
                f"got {tuple(st.shape)}"
            )
        for k in (ACTION, OBS_STATE, OBS_ENV_STATE):
            if k in batch and not torch.isfinite(batch[k]).all():
                raise ValueError(f"cdp: non-finite values in batch['{k}']")

    def _target(self, trajectory: Tensor, eps: Tensor, timesteps: Tensor) -> Tensor:
        p = self.config.prediction_type
        if p == "epsilon":
            return eps
        if p == "sample":
            return trajectory
        return self.noise_scheduler.get_velocity(trajectory, eps, timesteps)

    def _diffusion_loss(self, pred: Tensor, target: Tensor, batch: dict[str, Tensor]) -> Tensor:
        loss = F.mse_loss(pred, target, reduction="none")
        if self.config.do_mask_loss_for_padding:
            if "action_is_pad" not in batch:
                raise ValueError("cdp: do_mask_loss_for_padding=True needs 'action_is_pad' in the batch")
            mask = (~batch["action_is_pad"]).unsqueeze(-1)
            return (loss * mask).sum() / (mask.sum() * loss.shape[-1]).clamp_min(1)
        return loss.mean()

    def compute_loss(self, batch: dict[str, Tensor], return_info: bool = False):
        """Denoising loss + gamma * contraction penalty at the same (x_t, t).

        Returns the total loss, or ``(loss, info)`` with ``return_info=True`` where ``info`` holds floats
        for LeRobot's training log. The penalty is skipped when gradients are disabled (validation).
        """
        self._check_batch(batch)
        cfg, ccfg = self.config, self.contraction
        global_cond = self._prepare_global_conditioning(batch)
        trajectory = batch[ACTION]
        B = trajectory.shape[0]
        T = self.noise_scheduler.config.num_train_timesteps
        eps = batch.get(NOISE_KEY)
        if eps is None:
            eps = torch.randn(trajectory.shape, device=trajectory.device)
        timesteps = batch.get(TIMESTEPS_KEY)
        if timesteps is None:
            timesteps = torch.randint(0, T, (B,), device=trajectory.device).long()
        noisy = self.noise_scheduler.add_noise(trajectory, eps, timesteps)
        alpha, sigma = alpha_sigma(self.noise_scheduler, timesteps)
        alpha, sigma = alpha.to(trajectory.dtype), sigma.to(trajectory.dtype)
        t_frac = timesteps.float() / T

        step = self._train_step
        training = torch.is_grad_enabled() and self.training
        if training:
            self._train_step += 1
        active = training and ccfg.applies_at_step(step)
        info: dict[str, float] = {}
        penalty = trajectory.new_zeros(())

        # Entry point 1 of the core: penalised rows, and (fd_probe) probe rows riding in this forward pass.
        grid = self.step_grid() if active else None
        fn = lambda x, i: self.unet(x, timesteps[i], global_cond=global_cond[i])  # noqa: E731
        rows = (
            penalty_rows(
                noisy,
                ccfg,
                t_frac,
                probes=batch.get(PROBE_KEY),
                timesteps=timesteps,
                grid=grid,
                fn=fn,  # fd_ritz: its no-grad Krylov steps choose the probe row before this forward pass
                alpha=alpha,
                sigma=sigma,
                prediction_type=cfg.prediction_type,
                measure=ccfg.measures_share_at_step(step),  # the adaptive fd_probe's prepass cadence
            )
            if active
            else None
        )
        if rows is not None and rows.extra:
            i = rows.idx
            out = self.unet(
                torch.cat([noisy, rows.x]),
                torch.cat([timesteps, timesteps[i]]),
                global_cond=torch.cat([global_cond, global_cond[i]]),
            )
            pred, y_rows = out[:B], out[B:]
        else:
            pred, y_rows = self.unet(noisy, timesteps, global_cond=global_cond), None
        if active:  # entry point 2: penalty and diagnostics (double-backward estimators call the UNet)
            penalty, diag = penalty_from_outputs(
                rows,
                noisy,
                alpha,
                sigma,
                cfg.prediction_type,
                ccfg,
                y=pred,
                y_rows=y_rows,
                fn=fn,
                timesteps=timesteps,
                grid=grid,
            )
            info.update({f"contraction_{k}": v for k, v in diag.items() if k in DIAG_KEYS})

        diffusion_loss = self._diffusion_loss(pred, self._target(trajectory, eps, timesteps), batch)
        weight = self.current_weight()
        loss = diffusion_loss + weight * penalty
        if (
            active and ccfg.adaptive and (v := steering_violation_share(diag)) is not None
        ):  # gamma of the next step
            self.contraction_weight.fill_(dual_ascent_weight(weight, v, ccfg))
        if training:  # nothing non-finite reaches the optimiser (policy/guards.py); LeRobot counts from 1
            terms = {"diffusion_loss": diffusion_loss, "contraction_penalty": penalty, "total": loss}
            hint = f"Lower --policy.optimizer_lr (now {cfg.optimizer_lr:g}) or check the data."
            check_finite_loss(step + 1, terms, hint)

        info["diffusion_loss"] = diffusion_loss.item()
        info["contraction_loss"] = penalty.item()
        if ccfg.adaptive:
            info["contraction_weight"] = weight
        if training and cfg.contraction_diag_every and step % cfg.contraction_diag_every == 0:
            self._last_diag = self._eig_diagnostics(noisy, timesteps, global_cond, alpha, sigma)
        for k, v in self._last_diag.items():
            info.setdefault(k, v)
        self.last_info = info  # read by ContractiveDiffusionPolicy.forward (LeRobot's forward drops it)
        return (loss, info) if return_info else loss

    def _eig_diagnostics(self, noisy, timesteps, global_cond, alpha, sigma) -> dict[str, float]:
        """Lanczos lambda_max / lambda_min of sym J_x0 on a few training samples (no effect on gradients).

        Uses twice ``contraction_lanczos_iters`` steps: on untrained UNets (a bulk spectrum without outliers)
        8 steps leave lambda_max 3-9 % off, 16 steps < 0.2 % (``benchmarks/RESULTS.md``).
        """
        n = min(self.config.contraction_diag_samples, noisy.shape[0])
        t, cond = timesteps[:n], global_cond[:n].detach()
        lmin, lmax = sym_extreme_eigs(
            lambda x: self.unet(x, t, global_cond=cond),
            noisy[:n].detach().float(),
            num_iters=2 * self.config.contraction_lanczos_iters,  # a log line can afford an accurate estimate
            alpha=alpha[:n],
            sigma=sigma[:n],
            prediction_type=self.config.prediction_type,
        )
        grid = self.step_grid()
        if grid is None:  # threshold="alpha": the continuous-time condition
            bad = lmax >= alpha[:n]
        else:  # the exact condition of the deployed grid step nearest to each sample's timestep
            lower, upper = grid.bounds(t, lmax)
            bad = (lmax >= upper) | (lmin <= lower)
        return {
            "contraction_lambda_max": lmax.mean().item(),
            "contraction_lambda_min": lmin.mean().item(),
            "contraction_violation_frac": bad.float().mean().item(),
        }


class ContractiveDiffusionPolicy(GuardedPolicyMixin, DiffusionPolicy):
    """Contractive Diffusion Policy (Abyaneh et al., ICLR 2026) as LeRobot policy type ``cdp``."""

    config_class = ContractiveDiffusionConfig
    name = "cdp"

    def __init__(self, config: ContractiveDiffusionConfig, **kwargs):
        # The one copy of LeRobot code (pinned by test_policy_lerobot.py::test_lerobot_originals_are_pinned):
        # DiffusionPolicy.__init__ hard-codes DiffusionModel; build ours in its place (same keys).
        super(DiffusionPolicy, self).__init__(config)
        config.validate_features()
        self.config = config
        self._queues = None
        self.diffusion = ContractiveDiffusionModel(config)
        self.reset()

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """LeRobot's own ``forward`` (image stacking, ``compute_loss``) plus the floats for the log."""
        loss, _ = super().forward(batch)
        return loss, dict(self.diffusion.last_info)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], noise: Tensor | None = None) -> Tensor:
        """LeRobot's ``predict_action_chunk``, also for one frame without a time axis and no history.

        LeRobot's async policy server calls this directly with a single observation (state ``(B, D)``,
        images ``(B, C, H, W)``) and empty queues, which LeRobot 0.6.1's diffusion rejects (LeRobot issue
        #3861). As ``select_action`` does on its first step, the frame is repeated ``n_obs_steps`` times.
        """
        if not any(len(q) for k, q in self._queues.items() if k != ACTION):
            n = self.config.n_obs_steps
            batch = dict(batch)
            for key in (OBS_STATE, OBS_ENV_STATE, *self.config.image_features):
                v = batch.get(key)
                if v is not None and v.ndim == (4 if key in self.config.image_features else 2):
                    batch[key] = v.unsqueeze(1).expand(v.shape[0], n, *v.shape[1:])
        return super().predict_action_chunk(batch, noise=noise)

    def generate_model_card(self, dataset_repo_id, model_type, license, tags, cfg=None, dataset_meta=None):
        """LeRobot's model card plus the paper, the sign convention used and the contraction settings."""
        from huggingface_hub import ModelCard, ModelCardData
        from lerobot.policies.pretrained import _build_card_context

        card_data = ModelCardData(
            license=license or "apache-2.0",
            library_name="lerobot",
            pipeline_tag="robotics",
            tags=sorted(set(tags or []) | {"robotics", "lerobot", "cdp", "diffusion-policy", "contractive"}),
            model_name=model_type,
            datasets=dataset_repo_id,
        )
        context = _build_card_context(
            cfg, dataset_meta, self.config.input_features, self.config.output_features
        )
        context["policy_repo_id"] = getattr(self.config, "repo_id", None)
        context["base_model"] = None
        template = (
            files("lerobot.templates").joinpath("lerobot_modelcard_template.md").read_text(encoding="utf-8")
        )
        card = ModelCard.from_template(card_data, template_str=template, **context)
        card.text = card.text + "\n" + model_card_section(self.config)
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes"):
            from cdp_plugin.hub import validate_card

            validate_card(card)  # at HF_ENDPOINT (RepoCard.validate always posts to huggingface.co)
        return card


def model_card_section(config: ContractiveDiffusionConfig) -> str:
    """Markdown section naming the policy type, the paper and the contraction settings."""
    rows = "\n".join(
        f"| `{name}` | `{getattr(config, name)}` |"
        for name in (
            "prediction_type",
            "sampler",
            "num_inference_steps",
            "contraction_loss",
            "contraction_estimator",
            "contraction_weight",
            "contraction_adaptive_target",
            "contraction_normalization",
            "contraction_margin",
            "contraction_batch_fraction",
            "contraction_every",
            "contraction_noise_window",
            "contraction_step_window",
            "contraction_threshold",
        )
    )
    return f"""
## Contractive Diffusion Policy (`cdp`)

This is a **Contractive Diffusion Policy** (policy type `cdp`, installed with
`pip install lerobot_policy_cdp`): a LeRobot diffusion policy trained with an extra loss that penalises the
Jacobian of the denoiser's x0 prediction
w.r.t. the noisy action, so that the deterministic (ODE) sampler is contractive
(Abyaneh et al., *Contractive Diffusion Policies*, ICLR 2026, https://openreview.net/forum?id=iKJbmx1iuQ).
Contraction holds when lambda_max(sym J_x0) < alpha_t; the penalty is formed on J_x0 for every prediction
type.

| setting | value |
|---|---|
{rows}
"""


install_train_hooks()  # only acts inside lerobot-train (see cdp_plugin.policy.guards)

"""One sampler builder, finite actions for every (sampler, steps) the config accepts (issues 11, 12.1), and the
exact per-step contraction thresholds of the deployed grid against the real scheduler's Jacobian (issue 13.2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cdp_plugin.samplers import (
    SAMPLERS,
    ScheduleConfig,
    make_scheduler,
    sample,
    training_scheduler,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = 100
PREDS = ("epsilon", "sample", "v_prediction")
STEPS = (1, 2, 10, 100, None)  # None: every training timestep (LeRobot's meaning)


def untrained_net(seed: int = 0):
    """A fixed random network of an untrained policy's size: outputs O(1) whatever its parameterisation."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)
    emb = torch.randn(T, 3, generator=g, dtype=torch.float64)

    def fn(x, t):
        return torch.tanh(x.double() @ w + emb[t].unsqueeze(1)).to(x.dtype) * 1.5

    return fn


@pytest.mark.parametrize("clip_sample", [True, False])
@pytest.mark.parametrize("prediction_type", PREDS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_and_step_count_gives_finite_samples(sampler, prediction_type, clip_sample):
    """Issue 12.1: DPM-Solver++ over the full schedule (alpha_bar[T-1] ~ 2e-7, 'linspace' repeated a timestep)
    returned NaN. Every steps in [1, T] and None now gives finite samples, with and without clipping."""
    train = training_scheduler(ScheduleConfig(T, prediction_type=prediction_type, clip_sample=clip_sample))
    sched = make_scheduler(sampler, train)
    noise = torch.randn(4, 8, 3, generator=torch.Generator().manual_seed(1))
    for steps in STEPS:
        n = T if steps is None else steps
        x = sample(untrained_net(), noise, sched, n, generator=torch.Generator().manual_seed(2))
        assert torch.isfinite(x).all(), (sampler, prediction_type, steps)
        ts = [int(t) for t in sched.timesteps]
        assert len(ts) == n and len(set(ts)) == n, (sampler, steps, ts)  # n distinct timesteps
        if clip_sample:
            assert x.abs().max() <= 1.0 + 1e-5  # x0 clipping bounds the final sample


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_builder_takes_every_schedule_setting_from_the_training_scheduler(sampler):
    """One builder: the deployment scheduler is ``from_config`` of the training scheduler's config."""
    from diffusers import DDIMScheduler

    train = DDIMScheduler(
        num_train_timesteps=50,
        beta_schedule="linear",
        beta_start=2e-4,
        beta_end=0.03,
        prediction_type="v_prediction",
        clip_sample=False,
    )
    sched = make_scheduler(sampler, train)
    assert torch.equal(sched.alphas_cumprod, train.alphas_cumprod)
    assert sched.config.num_train_timesteps == 50 and sched.config.prediction_type == "v_prediction"
    # the same result from the config mapping and from a ScheduleConfig describing the same schedule
    assert torch.equal(make_scheduler(sampler, train.config).alphas_cumprod, train.alphas_cumprod)
    sc = ScheduleConfig(50, "linear", 2e-4, 0.03, "v_prediction", clip_sample=False)
    assert torch.equal(make_scheduler(sampler, sc).alphas_cumprod, train.alphas_cumprod)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        make_scheduler("euler", train)


def _tiny_cdp(**kw):
    from lerobot.configs.types import FeatureType, PolicyFeature

    from cdp_plugin.policy import ContractiveDiffusionConfig, ContractiveDiffusionPolicy

    torch.manual_seed(0)
    cfg = ContractiveDiffusionConfig(
        device="cpu",
        horizon=8,
        n_action_steps=4,
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
        push_to_hub=False,
        contraction_diag_every=0,
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (3,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        **kw,
    )
    return ContractiveDiffusionPolicy(cfg).eval()


def _act(policy):
    policy.reset()
    obs = {
        "observation.state": torch.randn(2, 2, generator=torch.Generator().manual_seed(3)),
        "observation.environment_state": torch.randn(2, 3, generator=torch.Generator().manual_seed(4)),
    }
    with torch.no_grad():
        return policy.select_action(obs)


@pytest.mark.parametrize("prediction_type", PREDS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cdp_policy_acts_finitely_over_the_full_schedule(sampler, prediction_type):
    """``--policy.num_inference_steps=None`` (all 100 steps) with an untrained UNet: finite actions."""
    a = _act(_tiny_cdp(sampler=sampler, prediction_type=prediction_type, num_inference_steps=None))
    assert a.shape == (2, 2) and torch.isfinite(a).all(), (sampler, prediction_type, a)


def test_ddpm_means_the_training_schedule_stepped_stochastically():
    """One meaning per name: ``"ddpm"`` is a DDPM on the training config even when LeRobot's
    ``noise_scheduler_type`` is DDIM (it used to be that DDIM scheduler, i.e. deterministic)."""
    from diffusers import DDPMScheduler

    p = _tiny_cdp(sampler="ddpm", noise_scheduler_type="DDIM", num_inference_steps=4)
    s = p.diffusion.sampling_scheduler
    assert type(s) is DDPMScheduler and torch.equal(
        s.alphas_cumprod, p.diffusion.noise_scheduler.alphas_cumprod
    )
    torch.manual_seed(0)
    a1 = _act(p)
    torch.manual_seed(1)
    a2 = _act(p)
    assert not torch.allclose(a1, a2)  # stochastic


def test_converted_diffusion_checkpoint_acts(tmp_path):
    """``python -m cdp_plugin.policy.convert`` on a DP checkpoint (num_inference_steps=None, LeRobot's
    default) gives a cdp checkpoint whose default sampler (DPM-Solver++) produces finite actions."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    from cdp_plugin.policy import ContractiveDiffusionPolicy

    torch.manual_seed(0)
    dp = DiffusionPolicy(
        DiffusionConfig(
            device="cpu",
            horizon=8,
            n_action_steps=4,
            down_dims=(16, 32),
            diffusion_step_embed_dim=16,
            push_to_hub=False,
            input_features={
                "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                "observation.environment_state": PolicyFeature(FeatureType.ENV, (3,)),
            },
            output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        )
    )
    assert dp.config.num_inference_steps is None
    dp.save_pretrained(tmp_path / "dp")
    proc = subprocess.run(
        [sys.executable, "-m", "cdp_plugin.policy.convert", str(tmp_path / "dp"), str(tmp_path / "cdp")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.loads((tmp_path / "cdp" / "config.json").read_text())
    assert cfg["type"] == "cdp" and cfg["prediction_type"] == "epsilon" and cfg["num_inference_steps"] is None
    policy = ContractiveDiffusionPolicy.from_pretrained(tmp_path / "cdp").eval()
    assert policy.config.sampler == "dpmsolver++"  # cdp's default sampler over all 100 steps
    a = _act(policy)
    assert a.shape == (2, 2) and torch.isfinite(a).all(), a


# ------------------------------------------------------------------------------ exact per-step thresholds
def _sym_with_eigs(eigs, seed=0):
    q, _ = torch.linalg.qr(
        torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def _net_for_x0_map(A, prediction_type, sched):
    """The network output (in ``prediction_type``) of the linear denoiser x0(x_t) = x_t A^T, any t."""
    from cdp_plugin.samplers import alpha_sigma

    def fn(x, t):
        a, s = alpha_sigma(sched, t)
        a, s = a.to(x.dtype).view(-1, 1), s.to(x.dtype).view(-1, 1)
        x0 = x @ A.T
        eps = (x - a * x0) / s
        return {"sample": x0, "epsilon": eps, "v_prediction": a * eps - s * x0}[prediction_type]

    return fn


def _one_step_jacobian(sampler, prediction_type, n, A, i):
    """Brute force: the Jacobian of x_t -> scheduler.step(net(x_t), t, x_t).prev_sample at step ``i`` of the
    real diffusers scheduler, after running the earlier steps (so a multistep solver holds its history)."""
    import copy

    train = training_scheduler(ScheduleConfig(T, prediction_type=prediction_type, clip_sample=False))
    sched = make_scheduler(sampler, train)
    sched.set_timesteps(n)
    net = _net_for_x0_map(A, prediction_type, train)
    x = torch.randn(1, A.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.5
    for t in sched.timesteps[:i]:
        tt = torch.full((1,), int(t), dtype=torch.long)
        x = sched.step(net(x, tt), t, x, generator=torch.Generator().manual_seed(0)).prev_sample.double()
    t = sched.timesteps[i]
    tt = torch.full((1,), int(t), dtype=torch.long)

    def f(z):
        s = copy.deepcopy(sched)  # step() advances the scheduler's state
        return s.step(net(z, tt), t, z, generator=torch.Generator().manual_seed(0)).prev_sample.double()

    return torch.autograd.functional.jacobian(f, x)[0, :, 0, :]


@pytest.mark.parametrize("prediction_type", PREDS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_step_bounds_match_the_real_schedulers_one_step_jacobian(sampler, prediction_type):
    """For D(x) = A x with sym A's eigenvalues just inside (lower, upper) the real step's symmetric Jacobian
    contracts; one eigenvalue just above ``upper`` or just below ``lower`` makes it expand."""
    from cdp_plugin.samplers import step_coefficients, step_contraction_bounds

    for n in (1, 2, 10):
        bounds = step_contraction_bounds(
            training_scheduler(ScheduleConfig(T, prediction_type=prediction_type)), sampler, n
        )
        coefs = step_coefficients(ScheduleConfig(T, prediction_type=prediction_type), sampler, n)
        assert len(bounds) == n and bounds[-1].s == -1 and bounds[-1].lower == pytest.approx(-1.0)
        for i, (lo, hi) in enumerate((b.lower, b.upper) for b in bounds):
            w = hi - lo
            cases = {
                "inside": [lo + 0.02 * w, lo + 0.5 * w, hi - 0.02 * w, hi - 0.3 * w],
                "above": [lo + 0.5 * w, hi + 0.02 * w, hi - 0.3 * w, lo + 0.2 * w],
                "below": [lo - 0.02 * w, lo + 0.5 * w, hi - 0.3 * w, hi - 0.1 * w],
            }
            for case, eigs in cases.items():
                A = _sym_with_eigs(eigs, seed=i)
                J = _one_step_jacobian(sampler, prediction_type, n, A, i)
                a, b = coefs[i].a, coefs[i].b
                # the step's Jacobian is a I + b A (DPM-Solver++ steps in float32)
                assert torch.allclose(
                    J, a * torch.eye(4, dtype=J.dtype) + b * A, rtol=1e-4, atol=1e-4 * (1 + b)
                ), (sampler, n, i)
                ev = torch.linalg.eigvalsh((J + J.T) / 2)
                spread = ev.abs().max().item()
                if case == "inside":
                    assert spread < 1, (sampler, prediction_type, n, i, case, ev)
                else:
                    assert spread > 1, (sampler, prediction_type, n, i, case, ev)


def test_ddim10_threshold_at_t90_is_the_issues_number():
    """Issue 13: one DDIM-10 step at t = 90 contracts iff lambda_max < 0.217, not alpha_t = 0.140."""
    from cdp_plugin.samplers import alpha_sigma, step_contraction_bounds

    b = {x.t: x for x in step_contraction_bounds(ScheduleConfig(T), "ddim", 10)}
    assert b[90].s == 80 and b[90].upper == pytest.approx(0.217, abs=5e-4)
    assert alpha_sigma(training_scheduler(ScheduleConfig(T)), torch.tensor([90]))[0].item() == pytest.approx(
        0.140, abs=5e-4
    )

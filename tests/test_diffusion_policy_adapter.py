"""Always-run tests of the diffusion_policy adapter (no upstream diffusion_policy needed).

* the package is lazy and the error without upstream says how to install it;
* the opt-in diffusers compat helper does exactly what it says and nothing at import time;
* the contraction penalty is wired into a loss with upstream's tensor conventions ((B, T, Da) action
  trajectories, global conditioning, epsilon / sample targets, inpainting ``cat([action, obs])``), through
  the adapter's own code path (``ContractiveMixin`` hooks) on a small real UNet (LeRobot's
  ``DiffusionConditionalUnet1d``), with the correct (x0-Jacobian) sign checked in closed form on a linear
  denoiser;
* the example / snippet configs only use keys the adapter accepts.

The proof against upstream itself is in ``test_diffusion_policy_upstream.py``.
"""

from __future__ import annotations

import copy
import math
import pathlib
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdp_plugin.diffusion_policy import ContractiveMixin  # no upstream needed

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "policy_configs" / "diffusion_policy"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )


# ------------------------------------------------------------------------------------------------------
# lazy import and the clear error
# ------------------------------------------------------------------------------------------------------

_BLOCK_UPSTREAM = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    # makes diffusion_policy unimportable even when a checkout is on PYTHONPATH
    def find_spec(self, name, path=None, target=None):
        if name == "diffusion_policy" or name.startswith("diffusion_policy."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
"""


def test_import_is_lazy_and_error_says_how_to_install():
    r = _run(
        _BLOCK_UPSTREAM
        + """
import cdp_plugin, cdp_plugin.diffusion_policy as d
assert "diffusion_policy" not in sys.modules
assert "torch" not in sys.modules, "the package import must stay light"
assert set(d.POLICY_CLASSES) <= set(dir(d))
for name in d.POLICY_CLASSES:
    try:
        getattr(d, name)
    except ImportError as e:
        msg = str(e)
        assert isinstance(e, d.UpstreamNotFoundError), (name, type(e))
        for needle in ("github.com/real-stanford/diffusion_policy", "PYTHONPATH", "pip install -e"):
            assert needle in msg, (name, needle, msg)
    else:
        raise AssertionError(f"{name} imported without diffusion_policy")
# hydra's locate (what `policy._target_` goes through) shows the same hint
import hydra.utils
try:
    hydra.utils.get_class("cdp_plugin.diffusion_policy.ContractiveDiffusionUnetLowdimPolicy")
except Exception as e:
    assert "pip install -e" in str(e) or "pip install -e" in str(e.__cause__), repr(e)
else:
    raise AssertionError("hydra located the class without upstream")
# pieces that need no upstream stay usable
assert d.ContractiveMixin.__name__ == "ContractiveMixin"
assert callable(d.patch_diffusers_optimization)
try:
    d.NoSuchThing
except AttributeError:
    pass
else:
    raise AssertionError
assert not any(m == "diffusion_policy" or m.startswith("diffusion_policy.") for m in sys.modules)
print("LAZY-OK")
"""
    )
    assert r.returncode == 0 and "LAZY-OK" in r.stdout, r.stdout + r.stderr


def test_compat_helper_is_opt_in_and_idempotent():
    r = _run(
        """
import diffusers.optimization as opt
had = {n: hasattr(opt, n) for n in ("Union", "Optional")}
import cdp_plugin.diffusion_policy as d
d.ContractiveMixin  # touching the package patches nothing
assert {n: hasattr(opt, n) for n in ("Union", "Optional")} == had
added = d.patch_diffusers_optimization()
assert sorted(added) == sorted(n for n, h in had.items() if not h), added
from diffusers.optimization import Union, SchedulerType, Optional, Optimizer, TYPE_TO_SCHEDULER_FUNCTION
import typing
assert Union is typing.Union and Optional is typing.Optional
assert d.patch_diffusers_optimization() == []
print("COMPAT-OK", added)
"""
    )
    assert r.returncode == 0 and "COMPAT-OK" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------------
# a policy with upstream's compute_loss / conditional_sample conventions around a real UNet
# ------------------------------------------------------------------------------------------------------

T_H, DA, DO, TO, B = 8, 2, 3, 2, 6


class DPConventionPolicy(nn.Module):
    """Upstream's ``compute_loss`` / ``conditional_sample`` conventions (not a stand-in for upstream: the
    adapter's behaviour against the real classes is tested in test_diffusion_policy_upstream.py).

    Trajectory (B, T, Da) with global conditioning ``obs[:, :To]`` flattened, or, with ``inpaint``,
    ``cat([action, obs], -1)`` and no conditioning; ``randn`` then ``randint``; epsilon / sample target;
    per-sample mean then batch mean; ``self.kwargs`` forwarded to ``scheduler.step``.
    """

    def __init__(
        self,
        model,
        noise_scheduler,
        action_dim,
        obs_dim,
        n_obs_steps,
        inpaint=False,
        num_inference_steps=None,
        **kwargs,
    ):
        super().__init__()
        self.model = model
        self.noise_scheduler = noise_scheduler
        self.action_dim, self.obs_dim, self.n_obs_steps, self.inpaint = (
            action_dim,
            obs_dim,
            n_obs_steps,
            inpaint,
        )
        self.kwargs = kwargs
        self.num_inference_steps = num_inference_steps or noise_scheduler.config.num_train_timesteps

    def _call(self, x, t, gc):
        return self.model(x, t) if self.inpaint else self.model(x, t, global_cond=gc)

    def compute_loss(self, batch):
        obs, action = batch["obs"], batch["action"]
        gc = None
        traj = action
        if self.inpaint:
            traj = torch.cat([action, obs], dim=-1)
        else:
            gc = obs[:, : self.n_obs_steps].reshape(obs.shape[0], -1)
        noise = torch.randn(traj.shape)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (traj.shape[0],)).long()
        noisy = self.noise_scheduler.add_noise(traj, noise, t)
        pred = self._call(noisy, t, gc)
        target = noise if self.noise_scheduler.config.prediction_type == "epsilon" else traj
        loss = F.mse_loss(pred, target, reduction="none")
        return loss.reshape(loss.shape[0], -1).mean(1).mean()

    def conditional_sample(self, condition_data, condition_mask, global_cond=None, generator=None, **kwargs):
        scheduler = self.noise_scheduler
        traj = torch.randn(condition_data.shape, generator=generator)
        scheduler.set_timesteps(self.num_inference_steps)
        for t in scheduler.timesteps:
            traj[condition_mask] = condition_data[condition_mask]
            # upstream's ConditionalUnet1D broadcasts a scalar t itself; LeRobot's UNet wants (B,)
            out = self._call(traj, t.expand(traj.shape[0]), global_cond)
            traj = scheduler.step(out, t, traj, generator=generator, **kwargs).prev_sample
        traj[condition_mask] = condition_data[condition_mask]
        return traj


class ContractiveDPConventionPolicy(ContractiveMixin, DPConventionPolicy):
    pass


def _contractive_cls():
    return ContractiveDPConventionPolicy


def _scheduler(pred="epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True, prediction_type=pred
    )


def _unet(input_dim=DA, global_cond_dim=DO * TO):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionConditionalUnet1d

    cfg = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(DO,))},
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(input_dim,))},
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
        n_groups=4,
        kernel_size=3,
        horizon=T_H,
        n_action_steps=4,
        device="cpu",
    )
    torch.manual_seed(0)
    return DiffusionConditionalUnet1d(cfg, global_cond_dim=global_cond_dim)


def _batch(seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(B, T_H, DO, generator=g), "action": torch.randn(B, T_H, DA, generator=g)}


def _pair(pred="epsilon", **kw):
    """(stock, contractive) policies sharing the same UNet weights (penalty on the whole batch unless given:
    the shipped default batch fraction 0.25 would leave 2 of the 6 rows)."""
    kw.setdefault("contraction_batch_fraction", 1.0)
    base = DPConventionPolicy(_unet(), _scheduler(pred), DA, DO, TO)
    cdp = _contractive_cls()(_unet(), _scheduler(pred), DA, DO, TO, **kw)
    cdp.load_state_dict(base.state_dict(), strict=True)
    return base, cdp


@pytest.mark.parametrize("pred", ["epsilon", "sample"])
def test_penalty_in_loss_on_real_unet(pred):
    base, cdp = _pair(pred, contraction_weight=0.5)
    batch = _batch()
    torch.manual_seed(7)
    l0 = base.compute_loss(batch)
    torch.manual_seed(7)
    loss = cdp.compute_loss(batch)
    st = cdp.last_contraction
    assert st["penalty"] > 0 and math.isfinite(st["penalty"]) and st["penalty_samples"] == B
    assert loss.item() == pytest.approx(st["diffusion_loss"] + 0.5 * st["penalty"], rel=1e-6)
    # same parent loss (same RNG draws; only float noise from the larger fused batch)
    assert st["diffusion_loss"] == pytest.approx(l0.item(), rel=1e-5, abs=1e-6)
    # gradients: finite, and the penalty changes them
    loss.backward()
    g_cdp = [p.grad.clone() for p in cdp.parameters()]
    assert all(torch.isfinite(g).all() for g in g_cdp)
    l0.backward()
    diff = sum((p.grad - g).abs().sum() for p, g in zip(base.parameters(), g_cdp))
    assert diff > 0
    # the hooks are gone (EMA deepcopy, dill snapshots)
    assert not cdp.model._forward_pre_hooks and not cdp.model._forward_hooks
    copy.deepcopy(cdp)
    pickle.dumps(cdp)


def test_fused_probe_runs_one_forward_pass():
    """The probe rows ride in the denoising call. The default adaptive gamma adds its no-grad prepass (on the
    penalised rows) on every 10th step only; the other steps are one call."""
    _, cdp = _pair()
    assert cdp.contraction.adaptive and cdp.contraction.share_every == 10
    per_step = []
    h = cdp.model.register_forward_hook(lambda m, a, o: per_step[-1].append(a[0].shape[0]))
    for _ in range(11):
        per_step.append([])
        cdp.compute_loss(_batch())
    h.remove()
    assert all(calls == [2 * B] for calls in per_step[1:10])  # base rows + probe rows in a single call
    assert per_step[0][-1] == per_step[10][-1] == 2 * B and len(per_step[0]) == len(per_step[10]) > 1


def test_no_penalty_under_no_grad_and_zero_weight_is_identical():
    base, cdp = _pair()
    batch = _batch()
    with torch.no_grad():
        torch.manual_seed(1)
        a = base.compute_loss(batch)
        torch.manual_seed(1)
        b = cdp.compute_loss(batch)
    assert a.item() == b.item() and cdp.last_contraction == {}
    _, zero = _pair(contraction_weight=0.0)
    torch.manual_seed(1)
    a = base.compute_loss(batch)
    torch.manual_seed(1)
    assert zero.compute_loss(batch).item() == a.item()


def test_state_dict_unchanged_and_kwargs_do_not_leak():
    base, cdp = _pair(contraction_weight=0.2, contraction_every=3, sampler="ddim")
    assert list(base.state_dict()) == list(cdp.state_dict())
    assert [p.shape for p in base.parameters()] == [p.shape for p in cdp.parameters()]
    assert list(dict(cdp.named_buffers())) == list(dict(base.named_buffers()))
    assert cdp.kwargs == {}  # nothing of ours reaches scheduler.step
    base.load_state_dict(cdp.state_dict(), strict=True)


def test_adaptive_weight_is_a_buffer_stepped_by_dual_ascent():
    """With ``contraction_adaptive_target`` gamma is the buffer ``cdp_contraction_weight``: each training step
    uses it and moves it by the core's dual-ascent recurrence; the state_dict carries it (a resumed workspace)."""
    from cdp_plugin.contraction import dual_ascent_weight

    kw = dict(
        contraction_loss="hinge",
        contraction_adaptive_target=0.2,
        contraction_adaptive_lr=0.5,
        contraction_adaptive_max=1.0,
        contraction_weight=0.0,
        contraction_batch_fraction=1.0,
    )
    cdp = _contractive_cls()(_unet(), _scheduler("sample"), DA, DO, TO, **kw)
    assert "cdp_contraction_weight" in cdp.state_dict()
    gamma = 0.0
    for seed in range(3):
        cdp.compute_loss(_batch(seed)).backward()
        info = cdp.last_contraction
        assert info["weight"] == pytest.approx(gamma)
        gamma = dual_ascent_weight(gamma, info["ritz_violation_frac"], cdp.contraction)
    assert float(cdp.cdp_contraction_weight) == pytest.approx(gamma)
    resumed = _contractive_cls()(_unet(), _scheduler("sample"), DA, DO, TO, **kw)
    resumed.load_state_dict(cdp.state_dict(), strict=True)
    assert resumed._cdp_weight() == pytest.approx(gamma)


def test_adaptive_frobenius_measures_on_its_prepass_cadence():
    """``contraction_adaptive_every=2`` with the Frobenius ``fd_probe``: the share is measured on steps 0 and 2
    only, and the buffer moves only then, by 2 lr (v - target)."""
    kw = dict(
        contraction_loss="frobenius",
        contraction_adaptive_target=0.2,
        contraction_adaptive_lr=0.5,
        contraction_weight=0.0,
        contraction_adaptive_every=2,
    )
    cdp = _contractive_cls()(_unet(), _scheduler("sample"), DA, DO, TO, **kw)
    gamma, measured = 0.0, []
    for seed in range(4):
        cdp.compute_loss(_batch(seed)).backward()
        v = cdp.last_contraction.get("ritz_violation_frac")
        measured.append(v is not None)
        if v is not None:
            gamma = min(max(gamma + 2 * 0.5 * (v - 0.2), 0.0), 10.0)
        assert float(cdp.cdp_contraction_weight) == pytest.approx(gamma)
    assert measured == [True, False, True, False]


def test_every_k_steps():
    _, cdp = _pair(contraction_every=2)
    pens = []
    for _ in range(4):
        cdp.compute_loss(_batch())
        pens.append(cdp.last_contraction["penalty"])
    assert pens[0] > 0 and pens[1] == 0 and pens[2] > 0 and pens[3] == 0


class LinearDenoiser(nn.Module):
    """y = k x on every channel (timesteps / conditioning ignored): J = k I in closed form."""

    def __init__(self, k):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(float(k)))
        self.seen_t = None

    def forward(self, x, t, global_cond=None):
        self.seen_t = t
        return self.k * x


@pytest.mark.parametrize("pred", ["epsilon", "sample"])
@pytest.mark.parametrize("inpaint", [False, True])
def test_penalty_is_formed_on_x0_jacobian_of_the_action_block(pred, inpaint):
    """fd_probe through the adapter equals ``w_t^2 (a + c k + beta)^2 / N`` with ``J_x0 = a I + c J_f``:
    epsilon ``(1 - sigma k + alpha beta)^2 / N`` (residual weight alpha), sample ``(k + beta)^2 / N``, where
    N = 1 (per-dimension default) or D (``paper_d2``), and D counts the action channels only, also when the
    trajectory is ``cat([action, obs])``."""
    from cdp_plugin.samplers import alpha_sigma

    k, beta = 0.3, 0.1
    model = LinearDenoiser(k)
    for norm, N in (("per_dim", 1), ("paper_d2", T_H * DA)):
        pol = _contractive_cls()(
            model,
            _scheduler(pred),
            DA,
            DO,
            TO,
            inpaint=inpaint,
            contraction_margin=beta,
            contraction_batch_fraction=1.0,
            contraction_normalization=norm,
        )
        pol.compute_loss(_batch())
        t = model.seen_t[:B]
        alpha, sigma = alpha_sigma(pol.noise_scheduler, t)
        if pred == "epsilon":
            expect = ((1 - sigma * k + alpha * beta) ** 2 / N).mean()
        else:
            expect = torch.full_like(alpha, (k + beta) ** 2 / N).mean()
        assert pol.last_contraction["penalty"] == pytest.approx(expect.item(), rel=2e-3), norm
    # the probe's Rayleigh quotient is the x0-Jacobian eigenvalue: (1 - sigma k)/alpha resp. k
    ray = ((1 - sigma * k) / alpha).mean().item() if pred == "epsilon" else k
    assert pol.last_contraction["probe_rayleigh"] == pytest.approx(ray, rel=2e-3)


def test_sign_penalty_vanishes_at_the_contractive_target():
    """epsilon network with J_eps = (1 + alpha beta)/sigma I has J_x0 = -beta I: zero penalty; pushing
    J_eps down (the expansive direction) raises it."""
    from cdp_plugin.samplers import alpha_sigma

    sched = _scheduler("epsilon")

    class TargetEps(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(scale))

        def forward(self, x, t, global_cond=None):
            a, s = alpha_sigma(sched, t)
            return self.scale * ((1 + 0.1 * a) / s).view(-1, 1, 1) * x

    pens = []
    for scale in (1.0, 0.5):
        pol = _contractive_cls()(
            TargetEps(scale), sched, DA, DO, TO, contraction_margin=0.1, contraction_batch_fraction=1.0
        )
        pol.compute_loss(_batch())
        pens.append(pol.last_contraction["penalty"])
    assert pens[0] < 1e-6 < pens[1]


def test_non_fused_estimators_and_dropout_path():
    for est in ("hutchinson", "exact"):
        _, cdp = _pair(contraction_estimator=est)
        loss = cdp.compute_loss(_batch())
        loss.backward()
        assert cdp.last_contraction["penalty"] > 0
        assert all(torch.isfinite(p.grad).all() for p in cdp.parameters() if p.grad is not None)
    _, cdp = _pair(contraction_loss="hinge", contraction_estimator="lanczos", contraction_lanczos_iters=4)
    cdp.compute_loss(_batch()).backward()
    assert math.isfinite(cdp.last_contraction["penalty"]) and "lambda_max" in cdp.last_contraction

    # a denoiser with dropout (as upstream's transformer): separate dropout-free penalty passes
    class DropUnet(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.drop = _unet(), nn.Dropout(0.3)

        def forward(self, x, t, global_cond=None):
            return self.drop(self.unet(x, t, global_cond=global_cond))

    cdp = _contractive_cls()(DropUnet(), _scheduler(), DA, DO, TO)
    assert not cdp._cdp_fused()
    torch.manual_seed(0)
    cdp.compute_loss(_batch()).backward()
    p1 = cdp.last_contraction["penalty"]
    cdp.eval()  # no active dropout -> fused path; the penalty has the same scale (not dropout noise / h)
    assert cdp._cdp_fused()
    torch.manual_seed(0)
    cdp.compute_loss(_batch())
    p2 = cdp.last_contraction["penalty"]
    assert 0 < p1 < 10 * p2 and p2 < 10 * p1
    assert cdp.model.drop.training is False and cdp.train().model.drop.training is True

    # the adaptive Frobenius penalty measures its share on the dropout path too (its prepass and its probe rows
    # run dropout-free), so gamma moves there as on the fused path
    cdp = _contractive_cls()(
        DropUnet(), _scheduler("sample"), DA, DO, TO, contraction_adaptive_target=0.5, contraction_weight=0.5
    )
    assert not cdp._cdp_fused()
    cdp.compute_loss(_batch()).backward()
    v = cdp.last_contraction["ritz_violation_frac"]
    assert v != 0.5 and float(cdp.cdp_contraction_weight) == pytest.approx(0.5 + 0.05 * (v - 0.5))


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "ddpm"])
def test_ode_sampler_runs_in_the_upstream_loop(sampler):
    _, cdp = _pair(sampler=sampler)
    cdp.num_inference_steps = 6
    orig = cdp.noise_scheduler
    cond = torch.zeros(2, T_H, DA)
    mask = torch.zeros_like(cond, dtype=torch.bool)
    gc = torch.randn(2, DO * TO)
    with torch.no_grad():
        a = cdp.conditional_sample(cond, mask, global_cond=gc, generator=torch.Generator().manual_seed(0))
        b = cdp.conditional_sample(cond, mask, global_cond=gc, generator=torch.Generator().manual_seed(0))
    assert cdp.noise_scheduler is orig  # restored after sampling
    assert a.shape == cond.shape and torch.isfinite(a).all() and a.abs().max() <= 1.0 + 1e-5
    assert torch.equal(a, b)
    expected = {
        "ddim": "DDIMScheduler",
        "dpmsolver++": "DPMSolverMultistepScheduler",
        "ddpm": "DDPMScheduler",
    }
    assert type(cdp.sampling_scheduler()).__name__ == expected[sampler]
    assert len(cdp.sampling_scheduler().timesteps) == 6
    if sampler == "dpmsolver++":  # a step kwarg the solver lacks is dropped with a warning
        with pytest.warns(UserWarning, match="eta"), torch.no_grad():
            cdp.conditional_sample(cond, mask, global_cond=gc, eta=0.0)
    # a solver whose step() has no `generator` (upstream's loop always passes one) still works
    from cdp_plugin.diffusion_policy._mixin import _StepKwargFilter

    class NoGenerator:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, k):
            return getattr(self.inner, k)

        def step(self, model_output, timestep, sample, return_dict=True):
            return self.inner.step(model_output, timestep, sample, return_dict=return_dict)

    f = _StepKwargFilter(NoGenerator(cdp.sampling_scheduler()), sampler)
    f.set_timesteps(4)
    out = f.step(
        torch.zeros(1, T_H, DA), f.timesteps[0], torch.zeros(1, T_H, DA), generator=torch.Generator()
    )
    assert out.prev_sample.shape == (1, T_H, DA)


def test_invalid_settings_fail_at_construction():
    cls = _contractive_cls()
    with pytest.raises(ValueError, match="sampler"):
        cls(_unet(), _scheduler(), DA, DO, TO, sampler="euler")
    with pytest.raises(ValueError, match="estimator"):
        cls(_unet(), _scheduler(), DA, DO, TO, contraction_estimator="lanczos")
    with pytest.raises(ValueError, match="weight"):
        cls(_unet(), _scheduler(), DA, DO, TO, contraction_weight=-1)
    # hydra hands lists as ListConfig
    from omegaconf import OmegaConf

    pol = cls(_unet(), _scheduler(), DA, DO, TO, contraction_noise_window=OmegaConf.create([0.0, 0.5]))
    assert pol.contraction.noise_window == (0.0, 0.5)


# ------------------------------------------------------------------------------------------------------
# configs shipped in policy_configs/diffusion_policy
# ------------------------------------------------------------------------------------------------------


def _config_files():
    return sorted(CONFIG_DIR.rglob("*.yaml"))


def test_shipped_configs_use_valid_adapter_keys():
    import inspect

    from omegaconf import OmegaConf

    import cdp_plugin.diffusion_policy as d
    from cdp_plugin.diffusion_policy._mixin import CONTRACTION_KWARGS

    files = _config_files()
    assert len(files) >= 6, files
    accepted = set(inspect.signature(d.ContractiveMixin.__init__).parameters) - {"self", "args", "kwargs"}
    assert accepted == set(CONTRACTION_KWARGS) | {"sampler"}
    seen_targets = set()
    for f in files:
        cfg = OmegaConf.load(f)
        pol = cfg.get("policy")
        assert pol is not None, f"{f.name}: no policy block"
        target = pol["_target_"]
        assert target.startswith("cdp_plugin.diffusion_policy."), (f.name, target)
        name = target.rsplit(".", 1)[1]
        assert name in d.POLICY_CLASSES, (f.name, target)
        seen_targets.add(name)
        mine = {k: pol[k] for k in pol if k.startswith("contraction_") or k == "sampler"}
        assert set(mine) <= accepted, (f.name, set(mine) - accepted)
        # the values construct a valid ContractionConfig
        cls = _contractive_cls()
        cls(_unet(), _scheduler(), DA, DO, TO, **OmegaConf.to_container(OmegaConf.create(mine)))
    assert {
        "ContractiveDiffusionUnetLowdimPolicy",
        "ContractiveDiffusionUnetImagePolicy",
        "ContractiveDiffusionUnetHybridImagePolicy",
    } <= seen_targets

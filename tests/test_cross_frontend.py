"""One penalty, three doors: the core, the LeRobot policy and the diffusion_policy adapter agree.

For fixed noise, timesteps and probes (one seeded global RNG stream, drawn in the same order by every front
end: noise, timesteps, then the core's own row / probe draws) and the same UNet weights, the penalty value and
its gradient w.r.t. the UNet's parameters are the same for every registered estimator, whether computed by
:func:`cdp_plugin.contraction.contraction_penalty` on a denoiser callable, by
``ContractiveDiffusionModel.compute_loss`` (LeRobot; fd_probe rows ride in its forward pass) or by
``ContractiveMixin.compute_loss`` around a policy with diffusion_policy's conventions (its hooks).
Float64 throughout: the forward difference of fd_probe divides rounding by h.
"""

from __future__ import annotations

import copy

import pytest
import torch

from cdp_plugin.contraction import ESTIMATOR_REGISTRY, ContractionConfig, contraction_penalty
from cdp_plugin.samplers import alpha_sigma

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, H, DA, DS, DE, TO = 6, 8, 2, 3, 2, 2  # batch, horizon, action / state / env-state dims, observation steps
SEED = 11


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _lerobot_model(pred: str, ccfg: ContractionConfig):
    from lerobot.configs.types import FeatureType, PolicyFeature

    import lerobot_policy_cdp  # noqa: F401
    from cdp_plugin.policy import ContractiveDiffusionConfig
    from cdp_plugin.policy.modeling_cdp import ContractiveDiffusionModel

    cfg = ContractiveDiffusionConfig(
        input_features={
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(DS,)),
            "observation.environment_state": PolicyFeature(type=FeatureType.ENV, shape=(DE,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(DA,))},
        horizon=H,
        n_obs_steps=TO,
        n_action_steps=4,
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
        n_groups=4,
        kernel_size=3,
        prediction_type=pred,
        device="cpu",
        contraction_diag_every=0,
        **{f"contraction_{k}": v for k, v in vars(ccfg).items()},
    )
    torch.manual_seed(0)
    return ContractiveDiffusionModel(cfg).double().train()


def _batch():
    g = torch.Generator().manual_seed(3)
    return {
        "observation.state": torch.randn(B, TO, DS, generator=g),
        "observation.environment_state": torch.randn(B, TO, DE, generator=g),
        "action": torch.randn(B, H, DA, generator=g),
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
    }


def _adapter(unet, scheduler, ccfg: ContractionConfig, **kw):
    from test_diffusion_policy_adapter import DPConventionPolicy

    from cdp_plugin.diffusion_policy import ContractiveMixin

    class Policy(ContractiveMixin, DPConventionPolicy):
        pass

    return Policy(
        unet, scheduler, DA, DS + DE, TO, **{f"contraction_{k}": v for k, v in vars(ccfg).items()}, **kw
    )


def _grads(loss, params):
    return [g.detach().clone() for g in torch.autograd.grad(loss, params)]


def _penalty_and_grad(run, params):
    """(penalty, d penalty / d params): the total loss with weight 1 minus the same draws with weight 0."""
    torch.manual_seed(SEED)
    total, pen = run(1.0)
    torch.manual_seed(SEED)
    base, _ = run(0.0)
    g1, g0 = _grads(total, params), _grads(base, params)
    return pen, [a - b for a, b in zip(g1, g0)]


SAMPLER_GRID = dict(threshold="sampler", step_window=(0.0, 0.5))  # per-step bounds of the deployed grid


@pytest.mark.parametrize("pred", ["sample", "epsilon"])
@pytest.mark.parametrize(
    "loss,estimator,grid",
    [(*k, False) for k in ESTIMATOR_REGISTRY] + [("hinge", "exact", True), ("frobenius", "fd_probe", True)],
)
def test_core_lerobot_and_diffusion_policy_agree(pred, loss, estimator, grid):
    """``grid``: the penalty restricted to the late half of the deployed DPM-Solver++ 10-step grid, the hinge
    on that grid's exact per-step bounds; each front end builds the grid from its own sampler settings."""
    from cdp_plugin.contraction import StepGrid

    ccfg = ContractionConfig(
        loss=loss,
        estimator=estimator,
        weight=1.0,  # fixed: each run sets it (the adaptive gamma has its own tests)
        batch_fraction=0.5,
        margin=0.5,
        lanczos_iters=4,
        **(SAMPLER_GRID if grid else {"threshold": "alpha"}),
    )
    model = _lerobot_model(pred, ccfg)
    assert (model.config.sampler, model.config.num_inference_steps) == ("dpmsolver++", 10)
    sched = model.noise_scheduler
    batch = _batch()
    obs = torch.cat([batch["observation.state"], batch["observation.environment_state"]], -1)
    T = sched.config.num_train_timesteps

    # the core on a denoiser callable: the same draws, in the same order, as the front ends
    unet_core = copy.deepcopy(model.unet)
    gc = obs.flatten(1)
    step_grid = StepGrid.from_sampler(sched, "dpmsolver++", 10) if grid else None

    def run_core(w):
        noise = torch.randn(batch["action"].shape)
        t = torch.randint(0, T, (B,)).long()
        x_t = sched.add_noise(batch["action"], noise, t)
        a, s = alpha_sigma(sched, t)
        pred_out = unet_core(x_t, t, global_cond=gc)
        target = batch["action"] if pred == "sample" else noise
        diff = (pred_out - target).pow(2).mean()
        if w == 0:
            return diff, 0.0
        pen, _ = contraction_penalty(
            lambda x, i: unet_core(x, t[i], global_cond=gc[i]),
            x_t,
            a,
            s,
            pred,
            ccfg,
            t_frac=t.double() / T,
            timesteps=t,
            grid=step_grid,
        )
        return diff + w * pen, pen.item()

    def run_lerobot(w):
        model.contraction.weight = w
        out = model.compute_loss(batch, return_info=True)
        return out[0], out[1]["contraction_loss"]

    pol = _adapter(
        copy.deepcopy(model.unet), copy.deepcopy(sched), ccfg, sampler="dpmsolver++", num_inference_steps=10
    )

    def run_adapter(w):
        pol.contraction.weight = w
        lo = pol.compute_loss({"obs": obs, "action": batch["action"]})
        return lo, pol.last_contraction.get("penalty", 0.0)

    p_core, g_core = _penalty_and_grad(run_core, list(unet_core.parameters()))
    p_lr, g_lr = _penalty_and_grad(run_lerobot, list(model.unet.parameters()))
    p_dp, g_dp = _penalty_and_grad(run_adapter, list(pol.model.parameters()))

    # every estimator is active on the whole range (hinge: margin 0.5 puts lambda_max above its threshold);
    # on a part of the grid the hinge may be satisfied
    assert p_core > 0 or (grid and loss == "hinge")
    for name, p, g in (("lerobot", p_lr, g_lr), ("diffusion_policy", p_dp, g_dp)):
        assert p == pytest.approx(p_core, rel=1e-6, abs=1e-12), (name, p, p_core)
        for a, b in zip(g, g_core):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9, msg=lambda m: f"{name}: {m}")  # noqa: B023
    assert any(x.abs().sum() > 0 for x in g_core) or p_core == 0


def test_import_rules_of_docs_architecture():
    """The import arrows of docs/architecture.md: the core imports no front end / task / bench code, and the
    two front ends do not import each other (module-level and function-level imports alike)."""
    import ast
    import pathlib

    pkg = pathlib.Path(__file__).resolve().parents[1] / "cdp_plugin"

    def imports(path):
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
        return out

    rules = {
        ("contraction.py", "samplers.py", "toy.py"): (
            "cdp_plugin.policy",
            "cdp_plugin.diffusion_policy",
            "cdp_plugin.envs",
            "cdp_plugin.data",
            "cdp_plugin.bench",
            "lerobot",
            "diffusion_policy",
        ),
        ("policy",): (
            "cdp_plugin.diffusion_policy",
            "cdp_plugin.envs",
            "cdp_plugin.data",
            "cdp_plugin.bench",
        ),
        ("diffusion_policy",): ("cdp_plugin.policy", "lerobot", "cdp_plugin.envs", "cdp_plugin.bench"),
    }
    bad = []
    for parts, banned in rules.items():
        files = [
            p
            for part in parts
            for p in ([pkg / part] if part.endswith(".py") else sorted((pkg / part).glob("*.py")))
        ]
        for f in files:
            for mod in imports(f):
                if any(mod == b or mod.startswith(b + ".") for b in banned):
                    bad.append(f"{f.relative_to(pkg)} imports {mod}")
    assert not bad, bad

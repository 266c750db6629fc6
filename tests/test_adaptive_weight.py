"""The adaptive contraction weight (issue 13, item 2): gamma by dual ascent on the share of violating samples.

Core: the update rule and its validation; on the exact Gaussian model with learnable per-step gains it buys
contraction where the data force expansion and stays at exactly 0 (the plain diffusion loss, bit for bit) where
the sampler already contracts. Front ends: the LeRobot policy and the diffusion_policy adapter step the same
recurrence, keep gamma in one scalar buffer, and ``save_pretrained`` / ``--resume=true`` continue it (the
adapter's test is in ``test_diffusion_policy_adapter.py``).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from test_contraction_sampler import PerStepGain, T, _sep
from test_reliability import tiny_policy

import lerobot_policy_cdp  # noqa: F401  (registers cdp)
from cdp_plugin.bench.metrics import parse_train_log
from cdp_plugin.contraction import (
    ContractionConfig,
    StepGrid,
    contraction_penalty,
    dual_ascent_weight,
    steering_violation_share,
)
from cdp_plugin.samplers import ScheduleConfig, alpha_sigma, make_scheduler

ADAPTIVE = dict(loss="hinge", adaptive_target=0.2, adaptive_lr=0.5, adaptive_max=1.0, weight=0.0)


def tiny_batch() -> dict:
    """A training batch for ``tiny_policy`` (8 windows)."""
    return {
        "observation.state": torch.randn(8, 2, 2),
        "observation.environment_state": torch.randn(8, 2, 16),
        "action": torch.rand(8, 16, 2) * 2 - 1,
        "action_is_pad": torch.zeros(8, 16, dtype=torch.bool),
    }


def test_dual_ascent_rises_with_violations_falls_without_and_is_clipped():
    cfg = ContractionConfig(**ADAPTIVE)
    assert cfg.adaptive and cfg.active  # active from gamma 0: it may have to rise
    assert dual_ascent_weight(0.0, 1.0, cfg) == pytest.approx(0.4)  # 0 + 0.5 (1 - 0.2)
    assert dual_ascent_weight(0.5, 0.2, cfg) == pytest.approx(0.5)  # on target: unchanged
    assert dual_ascent_weight(0.05, 0.0, cfg) == 0.0  # clipped at 0
    assert dual_ascent_weight(0.9, 1.0, cfg) == 1.0  # clipped at adaptive_max
    assert not ContractionConfig(loss="hinge").adaptive
    with pytest.raises(ValueError, match="no adaptive_target"):
        dual_ascent_weight(0.1, 0.5, ContractionConfig(loss="hinge"))
    with pytest.raises(ValueError, match="violation_frac"):
        dual_ascent_weight(0.1, float("nan"), cfg)


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(loss="frobenius", estimator="hutchinson", adaptive_target=0.2), "measures violations"),
        (dict(loss="none", adaptive_target=0.2), "measures violations"),
        (dict(loss="hinge", adaptive_target=1.0), "adaptive_target must be in"),
        (dict(loss="hinge", adaptive_target=0.1, adaptive_lr=0.0), "adaptive_lr"),
        (dict(loss="hinge", adaptive_target=0.1, weight=2.0, adaptive_max=1.0), "adaptive_max"),
    ],
)
def test_bad_adaptive_settings_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        ContractionConfig(**kw)


def _train_gains(s: float, cfg: ContractionConfig | None, steps: int = 300):
    """Fit per-step x0 gains to data N(0, s^2 I) (diffusion loss), plus gamma * hinge with the adaptive gamma;
    returns the model and the gamma trajectory. Data and penalty draw from separate generators."""
    sched = make_scheduler("ddim", ScheduleConfig(T, prediction_type="sample", clip_sample=False))
    model = PerStepGain(s, "sample", sched)  # start at the exact model of the data
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gd, gp = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    grid = StepGrid.from_sampler(sched, "ddim", 20)  # the deployed DDIM-20 grid's exact per-step bounds
    gamma, gammas = (cfg.weight if cfg else 0.0), []
    for _ in range(steps):
        t = torch.randint(0, T, (64,), generator=gd)
        a, sg = alpha_sigma(sched, t)
        a, sg = a.double().view(-1, 1), sg.double().view(-1, 1)
        x0 = s * torch.randn(64, 3, generator=gd, dtype=torch.float64)
        xt = a * x0 + sg * torch.randn(64, 3, generator=gd, dtype=torch.float64)
        loss = (model(xt, t) - x0).pow(2).mean()
        if cfg is not None:
            pen, diag = contraction_penalty(
                lambda z, i, t=t: model(z, t[i]),
                xt,
                a.view(-1),
                sg.view(-1),
                "sample",
                cfg,
                generator=gp,
                timesteps=t,
                grid=grid,
            )
            loss = loss + gamma * pen
            if (v := steering_violation_share(diag)) is not None:
                gamma = dual_ascent_weight(gamma, v, cfg)
        gammas.append(gamma)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, sched, gammas


def test_adaptive_frobenius_keeps_its_random_probe_and_measures_with_the_ritz_prepass():
    """The adaptive ``fd_probe`` penalty is the fixed one (same random probe, same value); its violation share
    comes from the ``fd_ritz`` Krylov prepass (a random direction's quotient misses the largest eigenvalue)."""
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = torch.linspace(0.2, 1.8, 6, dtype=torch.float64)  # J_x0 = diag(scale): one direction expands
    net = lambda z, i: z * scale  # noqa: E731
    a, s = torch.full((8,), 0.8, dtype=torch.float64), torch.full((8,), 0.6, dtype=torch.float64)
    fixed = ContractionConfig(loss="frobenius", batch_fraction=1.0, weight=0.1)
    adaptive = ContractionConfig(loss="frobenius", batch_fraction=1.0, adaptive_target=0.2)
    p0, d0 = contraction_penalty(net, x, a, s, "sample", fixed, generator=torch.Generator().manual_seed(1))
    p1, d1 = contraction_penalty(net, x, a, s, "sample", adaptive, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(p0, p1)
    assert "ritz_violation_frac" not in d0 and d1["ritz_violation_frac"] == 1.0  # lambda_max 1.8 >= 0.8
    assert d1["probe_rayleigh"] < 1.8 * 0.9  # the random probe alone sees about the mean eigenvalue


def test_prepass_cadence_measures_every_kth_penalised_step_at_the_same_mean_rate():
    """``adaptive_every = k``: the adaptive ``fd_probe`` runs its measuring prepass on every k-th penalised step
    only (the penalty is unchanged, the prepass's denoiser calls skipped), and one dual-ascent step then covers
    k steps; ``fd_ritz`` needs its prepass every step (it chooses the probe), so k does not apply to it."""
    cfg = ContractionConfig(
        loss="frobenius", batch_fraction=1.0, adaptive_target=0.2, adaptive_every=3, every=2
    )
    assert cfg.share_every == 3
    assert [s for s in range(14) if cfg.applies_at_step(s) and cfg.measures_share_at_step(s)] == [0, 6, 12]
    assert dual_ascent_weight(0.0, 1.0, cfg) == pytest.approx(3 * 0.05 * 0.8)
    ritz = ContractionConfig(loss="hinge", adaptive_target=0.2, adaptive_every=3)
    assert ritz.share_every == 1 and dual_ascent_weight(0.0, 1.0, ritz) == pytest.approx(0.05 * 0.8)
    fixed = ContractionConfig(loss="frobenius", weight=0.1, adaptive_every=3)
    assert fixed.share_every == 1  # fixed gamma: no prepass

    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = torch.linspace(0.2, 1.8, 6, dtype=torch.float64)
    calls = []

    def net(z, i):
        calls.append(z.shape[0])
        return z * scale

    a, s = torch.full((8,), 0.8, dtype=torch.float64), torch.full((8,), 0.6, dtype=torch.float64)
    out = {}
    for measure in (True, False):
        calls.clear()
        g = torch.Generator().manual_seed(1)
        out[measure] = contraction_penalty(net, x, a, s, "sample", cfg, generator=g, measure=measure)
        out[measure] += (len(calls),)
    torch.testing.assert_close(out[True][0], out[False][0])  # the same random probe, the same penalty
    assert out[True][1]["ritz_violation_frac"] == 1.0 and "ritz_violation_frac" not in out[False][1]
    assert steering_violation_share(out[False][1]) is None  # no share: gamma holds
    assert out[False][2] < out[True][2]  # the prepass's denoiser calls are skipped
    with pytest.raises(ValueError, match="adaptive_every"):
        ContractionConfig(loss="frobenius", adaptive_target=0.2, adaptive_every=0)


@pytest.mark.parametrize("loss", ["hinge", "frobenius"])
def test_adaptive_gamma_buys_contraction_only_where_the_data_force_expansion(loss):
    """Data wider than the noise (s = 1.5): the exact sampler expands; gamma rises and the trained sampler
    contracts where the no-penalty fit expands. Data narrower (s = 0.5): the sampler already contracts, gamma
    stays about 0 (1 % of the wide case's) and the sampler is the no-penalty fit's."""
    cfg = ContractionConfig(loss=loss, adaptive_target=0.05, adaptive_lr=0.2, adaptive_max=10.0, weight=0.0)
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    plain, sched, _ = _train_gains(1.5, None)
    tuned, _, wide = _train_gains(1.5, cfg)
    mean = lambda g: sum(g) / len(g)  # noqa: E731
    assert mean(wide) > 1.0, wide[-10:]
    assert _sep(plain, sched, noise) > 1 > _sep(tuned, sched, noise)  # measured 1.34 -> 0.76

    plain, _, _ = _train_gains(0.5, None)
    tuned, _, narrow = _train_gains(0.5, cfg)
    # only the marginal lowest-noise steps (x0 gain ~ 1/alpha_t there for any data) ever tip it above 0
    assert mean(narrow) < 0.01 * mean(wide) and min(narrow[-20:]) == 0.0, (mean(narrow), narrow[-20:])
    assert _sep(tuned, sched, noise) == pytest.approx(_sep(plain, sched, noise), rel=0.05)


# ---------------------------------------------------------------------------------------------- LeRobot


def test_lerobot_policy_steps_the_recurrence_and_saves_gamma(tmp_path):
    from cdp_plugin.policy import ContractiveDiffusionPolicy

    torch.manual_seed(0)
    kw = {f"contraction_{k}": v for k, v in ADAPTIVE.items()}
    policy = tiny_policy(**kw).train()
    assert "diffusion.contraction_weight" in policy.state_dict()
    assert "diffusion.contraction_weight" in tiny_policy().state_dict()  # the shipped default is adaptive
    assert "diffusion.contraction_weight" not in tiny_policy(contraction_weight=0.1).state_dict()  # fixed
    cfg = policy.diffusion.contraction
    batch = tiny_batch()
    gamma = 0.0
    for _ in range(4):
        loss, info = policy.forward(batch)
        loss.backward()
        assert info["contraction_weight"] == pytest.approx(gamma)  # the gamma this step trained with
        gamma = dual_ascent_weight(gamma, info["contraction_ritz_violation_frac"], cfg)
        assert policy.diffusion.current_weight() == pytest.approx(gamma)
    policy.diffusion.contraction_weight.fill_(0.37)
    policy.save_pretrained(tmp_path)
    assert load_file(tmp_path / "model.safetensors")["diffusion.contraction_weight"].item() == pytest.approx(
        0.37
    )
    again = ContractiveDiffusionPolicy.from_pretrained(tmp_path)
    assert again.diffusion.current_weight() == pytest.approx(0.37)
    # a checkpoint trained without the adaptive weight loads into a policy that turns it on: gamma starts at
    # contraction_weight (the buffer is optional in the weights file, every other tensor is not)
    plain = tmp_path / "plain"
    tiny_policy(contraction_weight=0.1).save_pretrained(plain)  # fixed gamma: no buffer
    cfg_on = again.config
    cfg_on.contraction_weight = 0.25
    turned_on = ContractiveDiffusionPolicy.from_pretrained(plain, config=cfg_on)
    assert turned_on.diffusion.current_weight() == pytest.approx(0.25)
    # cdp-bench records the gamma reached (its reports show it beside the target)
    from cdp_plugin.bench.aggregate import cell_gamma
    from cdp_plugin.bench.matrix import trained_contraction

    trained = trained_contraction(tmp_path)
    assert trained["contraction_adaptive_target"] == 0.2
    assert cell_gamma({"contraction": trained}) == pytest.approx(0.37)


def test_lerobot_policy_measures_on_the_cadence():
    """LeRobot's policy with ``contraction_adaptive_every=2``: the share is logged (measured) on steps 0 and 2
    only, and gamma moves only after them, by 2 lr (v - target)."""
    torch.manual_seed(0)
    policy = tiny_policy(
        contraction_loss="frobenius",
        contraction_adaptive_target=0.2,
        contraction_adaptive_lr=0.5,
        contraction_weight=0.0,
        contraction_adaptive_every=2,
    ).train()
    cfg = policy.diffusion.contraction
    batch = tiny_batch()
    gamma, measured = 0.0, []
    for _ in range(4):
        loss, info = policy.forward(batch)
        loss.backward()
        assert info["contraction_weight"] == pytest.approx(gamma)
        v = info.get("contraction_ritz_violation_frac")
        measured.append(v is not None)
        if v is not None:
            gamma = min(max(gamma + 2 * 0.5 * (v - 0.2), 0.0), cfg.adaptive_max)
        assert policy.diffusion.current_weight() == pytest.approx(gamma)
    assert measured == [True, False, True, False]


def test_lerobot_train_resume_continues_gamma(pusht_like_dataset, tmp_path):
    """lerobot-train with the adaptive hinge; ``--resume=true`` trains its first step with the gamma the
    checkpoint saved (not the initial weight)."""
    from test_policy_lerobot import TRAIN_FLAGS

    out = tmp_path / "adaptive"
    run_cli(
        "lerobot-train",
        *TRAIN_FLAGS,
        "--policy.contraction_loss=hinge",
        "--policy.contraction_weight=0.5",
        "--policy.contraction_adaptive_target=0.5",
        "--policy.contraction_adaptive_lr=1.0",
        f"--dataset.root={pusht_like_dataset}",
        f"--output_dir={out}",
        "--steps=8",
        "--save_freq=8",
        "--log_freq=1",
    )
    ckpt = out / "checkpoints" / "last"
    saved = load_file(ckpt / "pretrained_model" / "model.safetensors")["diffusion.contraction_weight"].item()
    assert saved != 0.5  # gamma moved (by violation_frac - 0.5 per step)
    cfg = json.loads((ckpt / "pretrained_model" / "config.json").read_text())
    assert cfg["contraction_adaptive_target"] == 0.5
    proc = run_cli(
        "lerobot-train",
        f"--config_path={ckpt / 'pretrained_model' / 'train_config.json'}",
        "--resume=true",
        "--steps=10",
        "--log_freq=1",
    )
    rows = parse_train_log(proc.stdout + proc.stderr)
    assert rows[0]["step"] == 9 and rows[0]["contraction_weight"] == pytest.approx(saved, abs=1e-3), rows[:2]

    # benchmarks/adaptive_share.py: the share that steers gamma, measured on every checkpoint of the run (the
    # checkpoint's own hinge switched to the adaptive Frobenius penalty's prepass), and its table
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("adaptive_share", bench / "adaptive_share.py")
        share = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(share)
    finally:
        sys.path.remove(str(bench))
    ckpts = share.checkpoints(out)
    assert [s for s, _ in ckpts] == [8, 10]
    v = share.steering_share(ckpts[0][1], pusht_like_dataset, 0.5, batches=1, batch_size=8)
    assert 0.0 <= v <= 1.0 and v * 8 == round(v * 8)  # a share of the 8 rows
    row = {"task": "t", "fraction": 0.1, "policy": "p", "seed": 0, "shares": {8: v, 10: 0.9}}
    table = share.markdown([row], 0.5, "", 1.0)
    assert "| t | 10 % | p | 0 |" in table and table.rstrip().endswith("| 0.900 | **no** |")

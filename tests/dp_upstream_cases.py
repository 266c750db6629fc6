"""The diffusion_policy adapter against upstream itself (real-stanford/diffusion_policy, tested at 5ba07ac).

Run by ``tests/test_diffusion_policy_upstream.py`` (part of ``make test``) in a child pytest whose
PYTHONPATH puts a side directory (zarr 2.18.7, numcodecs 0.15, robomimic 0.2.0; never the project's own
dependency set) and ``../shared/upstream/diffusion_policy-5ba07ac`` in front. By hand, with any checkout::

    PYTHONPATH=.cache/dp_side:/path/to/diffusion_policy python -m pytest -p no:zarr tests/dp_upstream_cases.py

Skipped (with the reason printed by ``-ra``) unless upstream is importable.

What runs here is upstream's code: its policy classes as parents, its hydra configs (from its own config
directory, with only ``policy._target_`` changed plus test-infrastructure overrides: CPU, debug loop,
wandb disabled, no workers, a tiny network, the test's dataset path and a no-op env runner, since the
gym-0.21 simulators do not install on Python 3.12), its workspaces' ``run()`` loops, its ReplayBuffer /
PushT datasets, its checkpoint format (dill) and its ``eval.py`` reload recipe.

Data: a tiny PushT-layout zarr (3 episodes x 40 steps: keypoint, state, action, img) is written by the
test through upstream's ``ReplayBuffer.add_episode`` and read back by upstream's zarr-2 path. Should only
zarr 3 be importable, the same on-disk layout is written with zarr 3 and ``ReplayBuffer.copy_from_path``
is replaced for the test by a loader into upstream's numpy-backed ReplayBuffer.

The workspaces need :func:`cdp_plugin.diffusion_policy.compat.patch_diffusers_optimization` on
diffusers >= 0.3x; the tests apply it explicitly (it is opt-in, never automatic).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib

import numpy as np
import pytest
import torch

_REASON = (
    "diffusion_policy (github.com/real-stanford/diffusion_policy, tested at 5ba07ac) is not importable; "
    "put a checkout on PYTHONPATH (e.g. PYTHONPATH=/tmp/dp_upstream) to run the upstream adapter tests"
)
pytest.importorskip("diffusion_policy.policy.diffusion_unet_lowdim_policy", reason=_REASON)

import diffusion_policy  # noqa: E402
import hydra  # noqa: E402
import zarr  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

from cdp_plugin.diffusion_policy.compat import patch_diffusers_optimization  # noqa: E402

patch_diffusers_optimization()  # opt-in helper, applied explicitly by the tests
OmegaConf.register_new_resolver("eval", eval, replace=True)  # as upstream's train.py does

from diffusion_policy.common.replay_buffer import ReplayBuffer  # noqa: E402
from diffusion_policy.env_runner.base_image_runner import BaseImageRunner  # noqa: E402
from diffusion_policy.env_runner.base_lowdim_runner import BaseLowdimRunner  # noqa: E402
from diffusion_policy.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy  # noqa: E402
from diffusion_policy.policy.diffusion_unet_lowdim_policy import DiffusionUnetLowdimPolicy  # noqa: E402

import cdp_plugin.diffusion_policy as cdp_dp  # noqa: E402
from cdp_plugin.contraction import ContractionConfig  # noqa: E402

UPSTREAM_CFG = next(
    pathlib.Path(p) / "config" for p in diffusion_policy.__path__ if (pathlib.Path(p) / "config").is_dir()
)
REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "policy_configs" / "diffusion_policy"
LOWDIM = "cdp_plugin.diffusion_policy.ContractiveDiffusionUnetLowdimPolicy"
IMAGE = "cdp_plugin.diffusion_policy.ContractiveDiffusionUnetImagePolicy"
HYBRID = "cdp_plugin.diffusion_policy.ContractiveDiffusionUnetHybridImagePolicy"
TRANSFORMER = "cdp_plugin.diffusion_policy.ContractiveDiffusionTransformerLowdimPolicy"
ZARR3 = int(zarr.__version__.split(".")[0]) >= 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _upstream_sha() -> str | None:
    root = pathlib.Path(UPSTREAM_CFG).parents[1]
    head = root / ".git" / "HEAD"
    if not head.is_file():
        return None
    ref = head.read_text().strip()
    if ref.startswith("ref:"):
        p = root / ".git" / ref.split(" ", 1)[1]
        return p.read_text().strip() if p.is_file() else None
    return ref


# ------------------------------------------------------------------------------------------------------
# test infrastructure: runners, data
# ------------------------------------------------------------------------------------------------------


class NoopLowdimRunner(BaseLowdimRunner):
    """Stands in for PushTKeypointsRunner (gym 0.21 does not install on Python 3.12); top-k needs the key."""

    def __init__(self, output_dir, **kwargs):
        super().__init__(output_dir)
        self.calls = 0

    def run(self, policy):
        assert not policy.training
        return {"test/mean_score": 0.0}


class NoopImageRunner(BaseImageRunner):
    def __init__(self, output_dir, **kwargs):
        super().__init__(output_dir)

    def run(self, policy):
        return {"test/mean_score": 0.0}


def _episodes(n_eps=3, T=40, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n_eps):
        walk = np.cumsum(rng.normal(size=(T, 2)), 0).astype(np.float32)
        yield {
            "keypoint": (walk[:, None, :] + rng.normal(size=(T, 9, 2))).astype(np.float32),
            "state": np.concatenate([walk, rng.normal(size=(T, 3))], 1).astype(np.float32),
            "action": (walk + rng.normal(scale=0.1, size=(T, 2))).astype(np.float32),
            "img": rng.integers(0, 255, size=(T, 96, 96, 3), dtype=np.uint8),
        }


@pytest.fixture(scope="module")
def tiny_zarr(tmp_path_factory) -> str:
    """A PushT-layout replay buffer written with upstream's ReplayBuffer.add_episode."""
    rb = ReplayBuffer.create_empty_numpy()
    for ep in _episodes():
        rb.add_episode(ep)
    assert rb.n_episodes == 3
    path = str(tmp_path_factory.mktemp("data") / "pusht_tiny.zarr")
    if not ZARR3:
        rb.save_to_path(path)
    else:  # the same on-disk layout (zarr format 2: data/<key>, meta/episode_ends), written by zarr 3
        root = zarr.open_group(path, mode="w", zarr_format=2)
        root.create_group("data")
        root.create_group("meta")
        for k, v in rb.data.items():
            root["data"].create_array(k, data=np.asarray(v), chunks=(rb.n_steps,) + np.asarray(v).shape[1:])
        root["meta"].create_array("episode_ends", data=np.asarray(rb.episode_ends))
    return path


@pytest.fixture()
def zarr_reader(monkeypatch):
    """With zarr 3, load into upstream's numpy-backed ReplayBuffer (upstream's own path needs zarr 2)."""
    if ZARR3:

        def copy_from_path(cls, zarr_path, backend=None, store=None, keys=None, **kwargs):
            g = zarr.open_group(os.path.expanduser(zarr_path), mode="r")
            keys = list(g["data"].keys()) if keys is None else keys
            root = {
                "meta": {"episode_ends": g["meta"]["episode_ends"][:]},
                "data": {k: g["data"][k][:] for k in keys},
            }
            return cls(root=root)

        monkeypatch.setattr(ReplayBuffer, "copy_from_path", classmethod(copy_from_path))
    yield


def _infra(tmp_zarr: str, runner: type, batch: int = 8) -> list[str]:
    return [
        "training.device=cpu",
        "training.debug=true",
        "training.seed=0",
        "logging.mode=disabled",
        "dataloader.num_workers=0",
        "val_dataloader.num_workers=0",
        f"dataloader.batch_size={batch}",
        f"val_dataloader.batch_size={batch}",
        "dataloader.pin_memory=false",
        "val_dataloader.pin_memory=false",
        f"task.dataset.zarr_path={tmp_zarr}",
        "task.dataset.val_ratio=0.34",
        f"task.env_runner._target_={__name__}.{runner.__name__}",
        "checkpoint.topk.k=0",  # only latest.ckpt (saves time; top-k copies are upstream's business)
    ]


TINY_LOWDIM = [
    "policy.model.down_dims=[16,32,64]",
    "policy.model.diffusion_step_embed_dim=16",
    "policy.num_inference_steps=10",
]
TINY_IMAGE = ["policy.down_dims=[16,32,64]", "policy.diffusion_step_embed_dim=16"]


def _compose(
    config_name: str, overrides: list[str], config_dir: pathlib.Path = UPSTREAM_CFG, resolve: bool = True
):
    with hydra.initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = hydra.compose(config_name=config_name, overrides=overrides)
    if resolve:
        OmegaConf.resolve(cfg)  # as upstream's train.py does before instantiating the workspace
    return cfg


def _workspace(cfg, out: pathlib.Path):
    import inspect

    out.mkdir(parents=True, exist_ok=True)  # hydra's run dir exists before train.py starts
    cls = hydra.utils.get_class(cfg._target_)
    if "output_dir" in inspect.signature(cls.__init__).parameters:
        return cls(cfg, output_dir=str(out))
    ws = cls(cfg)  # upstream's transformer workspaces take no output_dir (they read hydra's run dir)
    ws._output_dir = str(out)
    return ws


def _wait_saves(ws):
    t = getattr(ws, "_saving_thread", None)
    if t is not None:
        t.join()


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _assert_only_target_differs(config_name: str, common: list[str], target: str):
    """The composed config with the swap differs from upstream's (same overrides) in policy._target_ only."""
    # unresolved: ${now:...} interpolations (run names) stay as written, everything else is as composed
    base = _flat(OmegaConf.to_container(_compose(config_name, common, resolve=False)))
    swapped = _flat(
        OmegaConf.to_container(_compose(config_name, common + [f"policy._target_={target}"], resolve=False))
    )
    diff = {
        k: (base.get(k), swapped.get(k)) for k in set(base) | set(swapped) if base.get(k) != swapped.get(k)
    }
    assert list(diff) == ["policy._target_"], diff
    assert diff["policy._target_"][1] == target and diff["policy._target_"][0].startswith(
        "diffusion_policy.policy."
    )
    return diff


def _record_losses(policy) -> list[dict]:
    """Record ``last_contraction`` after every training ``compute_loss`` (an instance attribute: del it)."""
    records: list[dict] = []
    orig = policy.compute_loss

    def compute_loss(batch):
        out = orig(batch)
        if torch.is_grad_enabled():
            records.append(dict(policy.last_contraction, returned=out.item()))
        return out

    policy.compute_loss = compute_loss
    return records


def _assert_logged_loss_has_penalty(log_file: pathlib.Path, records: list[dict], fixed: bool = True):
    """upstream's JsonLogger lines: per-step ``train_loss`` is the loss with the contraction term in it.
    ``fixed=False``: the default adaptive gamma, which starts at 0 (then the term may be 0)."""
    logs = [json.loads(line) for line in log_file.read_text().splitlines()]
    steps = [r["train_loss"] for r in logs if "train_loss" in r and "val_loss" not in r]
    assert len(records) == 6 and len(steps) == 6, (len(records), len(steps))  # debug: 2 epochs x 3 steps
    for logged, rec in zip(steps, records):
        assert rec["penalty"] > 0 and (rec["weight"] > 0 if fixed else rec["weight"] >= 0)
        assert logged == pytest.approx(rec["returned"], rel=1e-6)
        assert logged == pytest.approx(rec["diffusion_loss"] + rec["weight"] * rec["penalty"], rel=1e-6)
        if fixed:
            assert logged - rec["diffusion_loss"] > 0  # the logged loss is not the plain DDPM loss


def test_side_environment_versions():
    """Under the launcher: upstream really runs on zarr 2 and robomimic 0.2.0 from the side directory."""
    import robomimic

    print(
        f"zarr {zarr.__version__} robomimic {robomimic.__version__} "
        f"diffusion_policy {list(diffusion_policy.__path__)}"
    )
    if os.environ.get("CDP_DP_SIDE_ENV") == "1":
        assert zarr.__version__ == "2.18.7" and robomimic.__version__ == "0.2.0"
        assert not ZARR3


# ------------------------------------------------------------------------------------------------------
# 1. identity
# ------------------------------------------------------------------------------------------------------


def test_subclasses_are_in_upstream_mro():
    from diffusion_policy.policy.diffusion_transformer_lowdim_policy import DiffusionTransformerLowdimPolicy

    assert DiffusionUnetLowdimPolicy in cdp_dp.ContractiveDiffusionUnetLowdimPolicy.__mro__
    assert DiffusionUnetImagePolicy in cdp_dp.ContractiveDiffusionUnetImagePolicy.__mro__
    assert DiffusionTransformerLowdimPolicy in cdp_dp.ContractiveDiffusionTransformerLowdimPolicy.__mro__
    assert cdp_dp.ContractiveDiffusionUnetLowdimPolicy.__mro__[1] is cdp_dp.ContractiveMixin
    import inspect

    for cls in (
        cdp_dp.ContractiveDiffusionUnetLowdimPolicy,
        cdp_dp.ContractiveDiffusionUnetImagePolicy,
        cdp_dp.ContractiveDiffusionTransformerLowdimPolicy,
    ):
        up = inspect.signature(cls.upstream_class.__init__).parameters
        mine = inspect.signature(cls.__init__).parameters
        for name, p in up.items():  # the upstream signature is kept, defaults included
            assert name in mine and mine[name].default == p.default, (cls, name)
        assert all(mine[n].default is not inspect.Parameter.empty for n in mine if n not in up)
    sha = _upstream_sha()
    print(f"diffusion_policy from {list(diffusion_policy.__path__)} at {sha}")
    if sha is not None and os.environ.get("CDP_DP_STRICT_SHA"):
        assert sha.startswith("5ba07ac")


def test_hybrid_subclass_in_mro_when_robomimic_installed():
    pytest.importorskip(
        "robomimic", reason="robomimic is not installed (needed by upstream's hybrid image policies)"
    )
    from diffusion_policy.policy.diffusion_unet_hybrid_image_policy import DiffusionUnetHybridImagePolicy

    assert DiffusionUnetHybridImagePolicy in cdp_dp.ContractiveDiffusionUnetHybridImagePolicy.__mro__


# ------------------------------------------------------------------------------------------------------
# 2.-4. upstream config with only _target_ changed -> upstream workspace loop -> checkpoint -> eval reload
# ------------------------------------------------------------------------------------------------------


def test_lowdim_workspace_trains_checkpoints_and_reloads(tiny_zarr, zarr_reader, tmp_path):
    from diffusion_policy.workspace.train_diffusion_unet_lowdim_workspace import (
        TrainDiffusionUnetLowdimWorkspace,
    )

    common = ["task=pusht_lowdim"] + _infra(tiny_zarr, NoopLowdimRunner) + TINY_LOWDIM
    _assert_only_target_differs("train_diffusion_unet_lowdim_workspace", common, LOWDIM)
    # a fixed gamma, so that the logged loss provably carries the term (the default adaptive one starts at 0)
    cfg = _compose(
        "train_diffusion_unet_lowdim_workspace",
        common + [f"policy._target_={LOWDIM}", "+policy.contraction_weight=0.1"],
    )
    ws = _workspace(cfg, tmp_path / "run")
    assert isinstance(ws, TrainDiffusionUnetLowdimWorkspace)
    Cls = cdp_dp.ContractiveDiffusionUnetLowdimPolicy
    assert type(ws.model) is Cls and type(ws.ema_model) is Cls
    assert isinstance(ws.model, DiffusionUnetLowdimPolicy)
    # the optimiser holds exactly the policy's parameters (nothing added)
    opt_params = [p for g in ws.optimizer.param_groups for p in g["params"]]
    assert len(opt_params) == len(list(ws.model.parameters()))
    assert all(a is b for a, b in zip(opt_params, ws.model.parameters()))
    assert ws.model.kwargs == {}  # our keyword arguments never reach scheduler.step

    records = _record_losses(ws.model)
    ws.run()
    _wait_saves(ws)
    del ws.model.compute_loss
    _assert_logged_loss_has_penalty(tmp_path / "run" / "logs.json.txt", records)

    st = ws.model.last_contraction
    n_train_steps = 2 * 3  # debug mode: 2 epochs x 3 steps
    assert ws.model._cdp_step == n_train_steps  # validation (no_grad) added no penalty
    assert st["penalty"] > 0 and st["weight"] == pytest.approx(0.1)  # the fixed gamma this run set
    assert st["loss"] == pytest.approx(st["diffusion_loss"] + st["weight"] * st["penalty"], rel=1e-6)
    logs = [json.loads(line) for line in (tmp_path / "run" / "logs.json.txt").read_text().splitlines()]
    assert any("train_loss" in r for r in logs) and any("val_loss" in r for r in logs)
    assert all(np.isfinite(r["train_loss"]) for r in logs if "train_loss" in r)

    # reload exactly like upstream's eval.py
    import dill

    ckpt = tmp_path / "run" / "checkpoints" / "latest.ckpt"
    assert ckpt.is_file()
    payload = torch.load(open(ckpt, "rb"), pickle_module=dill, weights_only=False)
    cfg2 = payload["cfg"]
    assert cfg2.policy._target_ == LOWDIM
    ws2 = _workspace(cfg2, tmp_path / "eval")
    ws2.load_payload(payload, exclude_keys=None, include_keys=None)
    policy = ws2.ema_model if cfg2.training.use_ema else ws2.model
    assert type(policy) is Cls
    policy.eval()
    ds = hydra.utils.instantiate(cfg2.task.dataset)  # a real observation window from upstream's dataset
    obs = torch.stack([ds[i]["obs"][: cfg2.n_obs_steps] for i in (0, 5, 10, 15)])
    with torch.no_grad():
        res = policy.predict_action({"obs": obs, "obs_mask": torch.ones_like(obs, dtype=torch.bool)})
    assert res["action"].shape == (4, cfg2.n_action_steps, cfg2.action_dim)
    assert res["action_pred"].shape == (4, cfg2.horizon, cfg2.action_dim)
    # deterministic ODE sampling inside upstream's conditional_sample loop, steps set after loading
    policy.sampler, policy.num_inference_steps = "dpmsolver++", 8
    with torch.no_grad():
        torch.manual_seed(0)
        a = policy.predict_action({"obs": obs})
        torch.manual_seed(0)
        b = policy.predict_action({"obs": obs})
    assert (
        a["action"].shape == (4, cfg2.n_action_steps, cfg2.action_dim)
        and torch.isfinite(a["action_pred"]).all()
    )
    assert torch.equal(a["action"], b["action"])

    # dill snapshot of the whole workspace (upstream's save_snapshot) round-trips
    ws._saving_thread = None  # a finished Thread (holds pytest's captured stderr) -- not ours to pickle
    snap = ws.save_snapshot()
    ws_snap = torch.load(open(snap, "rb"), pickle_module=dill, weights_only=False)
    assert type(ws_snap.model) is Cls and ws_snap.model.contraction == ws.model.contraction

    # the contractive checkpoint loads into the stock upstream workspace (strict, optimiser included)
    stock_cfg = copy.deepcopy(cfg2)
    stock_cfg.policy._target_ = (
        "diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy"
    )
    with open_dict(stock_cfg.policy):  # keys added with `+policy.<key>=` are struct-locked
        for k in [k for k in stock_cfg.policy if k.startswith("contraction_") or k == "sampler"]:
            del stock_cfg.policy[k]
    ws3 = _workspace(stock_cfg, tmp_path / "stock")
    ws3.load_payload(payload)
    assert type(ws3.model) is DiffusionUnetLowdimPolicy


def test_image_workspace_trains_and_predicts(tiny_zarr, zarr_reader, tmp_path):
    """train_diffusion_unet_image_workspace (torchvision encoder, no robomimic) with task=pusht_image."""
    overrides = (
        ["task=pusht_image", f"policy._target_={IMAGE}"]
        + _infra(tiny_zarr, NoopImageRunner, batch=4)
        + TINY_IMAGE
        + ["policy.num_inference_steps=10", "checkpoint.save_last_ckpt=false"]
    )
    cfg = _compose("train_diffusion_unet_image_workspace", overrides)
    ws = _workspace(cfg, tmp_path / "run")
    assert type(ws.model) is cdp_dp.ContractiveDiffusionUnetImagePolicy and isinstance(
        ws.model, DiffusionUnetImagePolicy
    )
    opt_params = [p for g in ws.optimizer.param_groups for p in g["params"]]
    assert all(a is b for a, b in zip(opt_params, ws.model.parameters()))
    enc_before = [p.detach().clone() for p in ws.model.obs_encoder.parameters()]
    ws.run()
    _wait_saves(ws)
    st = ws.model.last_contraction
    assert ws.model._cdp_step == 6 and st["penalty"] > 0
    assert st["loss"] == pytest.approx(st["diffusion_loss"] + st["weight"] * st["penalty"], rel=1e-6)
    # the obs encoder is trained end to end (the penalty's conditioning keeps its graph)
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, ws.model.obs_encoder.parameters()))
    policy = ws.ema_model
    policy.eval()
    obs = {
        "image": torch.rand(2, cfg.n_obs_steps, 3, 96, 96),
        "agent_pos": torch.randn(2, cfg.n_obs_steps, 2),
    }
    with torch.no_grad():
        res = policy.predict_action(obs)
    assert res["action"].shape == (2, cfg.n_action_steps, 2) and res["action_pred"].shape == (
        2,
        cfg.horizon,
        2,
    )


def test_hybrid_workspace_trains_and_predicts(tiny_zarr, zarr_reader, tmp_path):
    """train_diffusion_unet_hybrid_workspace (robomimic encoder built in __init__), task=pusht_image."""
    pytest.importorskip(
        "robomimic", reason="robomimic is not installed (needed by upstream's hybrid image policies)"
    )
    common = (
        ["task=pusht_image"]
        + _infra(tiny_zarr, NoopImageRunner, batch=4)
        + TINY_IMAGE
        + ["policy.num_inference_steps=10", "checkpoint.save_last_ckpt=false"]
    )
    _assert_only_target_differs("train_diffusion_unet_hybrid_workspace", common, HYBRID)
    cfg = _compose("train_diffusion_unet_hybrid_workspace", common + [f"policy._target_={HYBRID}"])
    ws = _workspace(cfg, tmp_path / "run")
    from diffusion_policy.policy.diffusion_unet_hybrid_image_policy import DiffusionUnetHybridImagePolicy

    assert type(ws.model) is cdp_dp.ContractiveDiffusionUnetHybridImagePolicy
    assert isinstance(ws.model, DiffusionUnetHybridImagePolicy)
    records = _record_losses(ws.model)
    ws.run()
    _wait_saves(ws)
    del ws.model.compute_loss
    _assert_logged_loss_has_penalty(tmp_path / "run" / "logs.json.txt", records, fixed=False)
    st = ws.model.last_contraction
    assert ws.model._cdp_step == 6 and st["penalty"] > 0
    assert st["loss"] == pytest.approx(st["diffusion_loss"] + st["weight"] * st["penalty"], rel=1e-6)
    policy = ws.ema_model
    policy.eval()
    ds = hydra.utils.instantiate(
        cfg.task.dataset
    )  # real observations (image, agent_pos) from upstream's dataset
    items = [ds[i]["obs"] for i in (0, 7)]
    obs = {k: torch.stack([it[k][: cfg.n_obs_steps] for it in items]) for k in ("image", "agent_pos")}
    with torch.no_grad():
        res = policy.predict_action(obs)
    assert res["action"].shape == (2, cfg.n_action_steps, 2) and res["action_pred"].shape == (
        2,
        cfg.horizon,
        2,
    )
    assert torch.isfinite(res["action_pred"]).all()
    # an upstream-class state_dict loads strictly
    stock_cfg = copy.deepcopy(cfg.policy)
    stock_cfg._target_ = (
        "diffusion_policy.policy.diffusion_unet_hybrid_image_policy.DiffusionUnetHybridImagePolicy"
    )
    stock = hydra.utils.instantiate(stock_cfg)
    ws.model.load_state_dict(stock.state_dict(), strict=True)
    # the default adaptive gamma adds its one scalar; upstream's class loads the rest strictly
    res = stock.load_state_dict(ws.ema_model.state_dict(), strict=False)
    assert res.missing_keys == [] and res.unexpected_keys == ["cdp_contraction_weight"]


def test_transformer_lowdim_workspace_runs(tiny_zarr, zarr_reader, tmp_path):
    """Transformer variant: dropout -> the penalty uses separate dropout-free passes; get_optimizer kept."""
    overrides = (
        ["task=pusht_lowdim", f"policy._target_={TRANSFORMER}"]
        + _infra(tiny_zarr, NoopLowdimRunner)
        + [
            "policy.model.n_layer=2",
            "policy.model.n_emb=32",
            "policy.model.n_head=2",
            "policy.num_inference_steps=10",
        ]
    )
    cfg = _compose("train_diffusion_transformer_lowdim_workspace", overrides)
    ws = _workspace(cfg, tmp_path / "run")
    assert type(ws.model) is cdp_dp.ContractiveDiffusionTransformerLowdimPolicy
    assert not ws.model._cdp_fused()  # transformer dropout is active in training
    ws.run()
    _wait_saves(ws)
    st = ws.model.last_contraction
    assert ws.model._cdp_step == 6 and st["penalty"] > 0 and np.isfinite(st["loss"])


# ------------------------------------------------------------------------------------------------------
# 5. equivalence with the parent; 6. checkpoint interop
# ------------------------------------------------------------------------------------------------------


def _lowdim_policies(tiny_zarr, **extra):
    """(stock, contractive) policies instantiated by hydra from upstream's config, same initial weights."""
    overrides = ["task=pusht_lowdim"] + _infra(tiny_zarr, NoopLowdimRunner) + TINY_LOWDIM
    cfg = _compose("train_diffusion_unet_lowdim_workspace", overrides)
    torch.manual_seed(0)
    stock = hydra.utils.instantiate(cfg.policy)
    c2 = copy.deepcopy(cfg.policy)
    c2._target_ = LOWDIM
    with open_dict(c2):  # new keys, like `+policy.contraction_weight=...` on the command line
        for k, v in extra.items():
            c2[k] = v
    torch.manual_seed(0)
    cdp = hydra.utils.instantiate(c2)
    return cfg, stock, cdp


def _lowdim_batch(tiny_zarr, cfg, stock, cdp):
    from diffusion_policy.dataset.pusht_dataset import PushTLowdimDataset

    ds = hydra.utils.instantiate(cfg.task.dataset)
    assert isinstance(ds, PushTLowdimDataset)
    norm = ds.get_normalizer()
    stock.set_normalizer(norm)
    cdp.set_normalizer(norm)
    items = [ds[i] for i in range(8)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_equivalence_with_upstream_and_penalty(tiny_zarr, zarr_reader):
    cfg, stock, zero = _lowdim_policies(tiny_zarr, contraction_weight=0.0)
    batch = _lowdim_batch(tiny_zarr, cfg, stock, zero)
    assert list(stock.state_dict()) == list(zero.state_dict())
    for a, b in zip(stock.state_dict().values(), zero.state_dict().values()):
        assert torch.equal(a, b)
    # weight 0: bit-identical loss and sampling
    torch.manual_seed(5)
    l_stock = stock.compute_loss(batch)
    torch.manual_seed(5)
    l_zero = zero.compute_loss(batch)
    assert l_stock.item() == l_zero.item()
    obs = {"obs": batch["obs"][:, : cfg.n_obs_steps]}
    with torch.no_grad():
        torch.manual_seed(9)
        p_stock = stock.predict_action(obs)
        torch.manual_seed(9)
        p_zero = zero.predict_action(obs)
    assert torch.equal(p_stock["action"], p_zero["action"])

    # weight > 0: the penalty is in the loss, gradients finite; no_grad validation skips it
    _, stock, cdp = _lowdim_policies(tiny_zarr, contraction_weight=0.1)
    batch = _lowdim_batch(tiny_zarr, cfg, stock, cdp)
    torch.manual_seed(5)
    l_stock = stock.compute_loss(batch)
    torch.manual_seed(5)
    l_cdp = cdp.compute_loss(batch)
    st = cdp.last_contraction
    assert st["penalty"] > 0
    assert st["diffusion_loss"] == pytest.approx(l_stock.item(), rel=1e-5)
    assert l_cdp.item() == pytest.approx(l_stock.item() + 0.1 * st["penalty"], rel=1e-5)
    l_cdp.backward()
    grads = [p.grad for p in cdp.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        torch.manual_seed(5)
        v_stock = stock.compute_loss(batch)
        torch.manual_seed(5)
        v_cdp = cdp.compute_loss(batch)
    assert v_stock.item() == v_cdp.item()


@pytest.mark.parametrize("pred", ["epsilon", "sample"])
def test_prediction_types_and_conditioning_modes(tiny_zarr, zarr_reader, pred):
    """global / local conditioning, inpainting (trajectory = [action, obs]) and pred_action_steps_only."""
    modes = {
        "global": {},
        "local": {"obs_as_local_cond": True, "obs_as_global_cond": False},
        "inpaint": {"obs_as_local_cond": False, "obs_as_global_cond": False},
        "steps_only": {"pred_action_steps_only": True},
    }
    for name, flags in modes.items():
        overrides = (
            [
                "task=pusht_lowdim",
                f"policy._target_={LOWDIM}",
                f"policy.noise_scheduler.prediction_type={pred}",
                "policy.num_inference_steps=8",
            ]
            + [f"{k}={v}" for k, v in flags.items()]
            + _infra(tiny_zarr, NoopLowdimRunner)
            + TINY_LOWDIM
        )
        cfg = _compose("train_diffusion_unet_lowdim_workspace", overrides)
        torch.manual_seed(0)
        pol = hydra.utils.instantiate(cfg.policy)
        batch = _lowdim_batch(tiny_zarr, cfg, pol, pol)
        loss = pol.compute_loss(batch)
        loss.backward()
        st = pol.last_contraction
        assert st["penalty"] > 0 and np.isfinite(st["loss"]), (name, st)
        with torch.no_grad():
            res = pol.predict_action({"obs": batch["obs"][:, : cfg.n_obs_steps]})
        assert res["action"].shape == (8, cfg.n_action_steps, 2), name


def test_upstream_state_dict_loads_strictly(tiny_zarr, zarr_reader, tmp_path):
    _, stock, cdp = _lowdim_policies(tiny_zarr)
    with torch.no_grad():
        for p in stock.parameters():
            p.add_(0.01)
    cdp.load_state_dict(stock.state_dict(), strict=True)  # no gamma in it: the adaptive gamma starts at 0
    theirs = cdp.state_dict()
    assert theirs.pop("cdp_contraction_weight").item() == 0.0
    for a, b in zip(stock.state_dict().values(), theirs.values(), strict=True):
        assert torch.equal(a, b)
    stock.load_state_dict(theirs, strict=True)  # without that one scalar, upstream's state_dict
    # a full stock workspace checkpoint (model, ema_model, optimizer) loads into the contractive workspace
    base = ["task=pusht_lowdim"] + _infra(tiny_zarr, NoopLowdimRunner) + TINY_LOWDIM
    stock_ws = _workspace(_compose("train_diffusion_unet_lowdim_workspace", base), tmp_path / "stock")
    stock_ws.save_checkpoint()
    _wait_saves(stock_ws)
    import dill

    payload = torch.load(
        open(tmp_path / "stock" / "checkpoints" / "latest.ckpt", "rb"), pickle_module=dill, weights_only=False
    )
    cdp_ws = _workspace(
        _compose("train_diffusion_unet_lowdim_workspace", base + [f"policy._target_={LOWDIM}"]),
        tmp_path / "cdp",
    )
    cdp_ws.load_payload(payload)
    assert type(cdp_ws.model) is cdp_dp.ContractiveDiffusionUnetLowdimPolicy
    stock_sd, cdp_sd = stock_ws.model.state_dict(), cdp_ws.ema_model.state_dict()
    assert set(cdp_sd) - set(stock_sd) == {"cdp_contraction_weight"}  # the default adaptive gamma
    for k, a in stock_sd.items():
        assert a.shape == cdp_sd[k].shape, k


# ------------------------------------------------------------------------------------------------------
# shipped example configs: same as upstream except policy._target_ and CDP keys; they compose and build
# ------------------------------------------------------------------------------------------------------

_UP = "diffusion_policy/config/"
_EXAMPLES = {
    "train_cdp_unet_lowdim_workspace.yaml": _UP + "train_diffusion_unet_lowdim_workspace.yaml",
    "train_cdp_unet_ddim_lowdim_workspace.yaml": _UP + "train_diffusion_unet_ddim_lowdim_workspace.yaml",
    "train_cdp_unet_hybrid_workspace.yaml": _UP + "train_diffusion_unet_hybrid_workspace.yaml",
    "train_cdp_unet_image_workspace.yaml": _UP + "train_diffusion_unet_image_workspace.yaml",
    "image_pusht_cdp_cnn.yaml": "image_pusht_diffusion_policy_cnn.yaml",
}


@pytest.mark.parametrize("mine,theirs", sorted(_EXAMPLES.items()))
def test_example_configs_differ_from_upstream_only_by_target(mine, theirs):
    root = UPSTREAM_CFG.parents[1]
    if not (root / theirs).is_file():
        pytest.skip(f"upstream file {theirs} not in this checkout")
    a = OmegaConf.to_container(OmegaConf.load(EXAMPLES / mine), resolve=False)
    b = OmegaConf.to_container(OmegaConf.load(root / theirs), resolve=False)
    pa, pb = a.pop("policy"), b.pop("policy")
    assert a == b
    target = pa.pop("_target_")
    old = pb.pop("_target_")
    assert target.startswith("cdp_plugin.diffusion_policy.Contractive") and old.endswith(
        target.rsplit(".Contractive", 1)[1]
    )
    extra = {k: pa.pop(k) for k in list(pa) if k.startswith("contraction_") or k == "sampler"}
    assert extra and pa == pb


def test_example_lowdim_config_composes_with_upstream_tasks(tiny_zarr, zarr_reader, tmp_path):
    """``--config-dir=policy_configs/diffusion_policy``: our config, upstream's task group."""
    overrides = (
        [f"hydra.searchpath=[file://{UPSTREAM_CFG}]"] + _infra(tiny_zarr, NoopLowdimRunner) + TINY_LOWDIM
    )
    cfg = _compose("train_cdp_unet_lowdim_workspace", overrides, config_dir=EXAMPLES)
    assert cfg.task.name == "pusht_lowdim"
    ws = _workspace(cfg, tmp_path)
    assert type(ws.model) is cdp_dp.ContractiveDiffusionUnetLowdimPolicy
    assert (
        ws.model.contraction.weight == pytest.approx(ContractionConfig().weight) and ws.model.sampler is None
    )


def test_launcher_composes_upstream_config_with_the_one_line_override(tmp_path):
    """``python -m cdp_plugin.diffusion_policy.train`` = upstream's train.py (+ opt-in compat)."""
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdp_plugin.diffusion_policy.train",
            "--config-name=train_diffusion_unet_lowdim_workspace",
            "task=pusht_lowdim",
            f"policy._target_={LOWDIM}",
            "--cfg",
            "job",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = OmegaConf.create(r.stdout)
    assert cfg.policy._target_ == LOWDIM and cfg.task.name == "pusht_lowdim"

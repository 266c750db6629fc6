"""The benchmark matrix {DP, CDP-frobenius, CDP-hinge} x tasks x data fractions x seeds, through LeRobot's CLIs.

Every cell trains with ``lerobot-train`` and evaluates with ``lerobot-eval`` (subprocesses, offline), then probes
the checkpoint in-process (:mod:`cdp_plugin.bench.probe`). A finished cell leaves ``<out>/cells/<cell>.json``;
a cell whose JSON exists is never rerun, so an interrupted matrix continues where it stopped (inside a cell, a
finished training run and a finished evaluation are reused too).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cdp_plugin.bench.metrics import mean_update_seconds, parse_train_log
from cdp_plugin.envs.tasks import (  # the one task table (env type, dataset, bench defaults)
    TASKS,
    TaskSpec,
)

BIN = Path(sys.executable).parent


def lerobot_cli(name: str) -> Path:
    """A LeRobot console script (``lerobot-train``, ``lerobot-eval``): beside this interpreter (a venv), else on
    ``PATH`` (``pip install --user`` / ``--prefix`` put scripts elsewhere)."""
    here = BIN / name
    if here.is_file():
        return here
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} is neither beside {sys.executable} nor on PATH: is lerobot installed?"
        )
    return Path(found)


# policy name -> lerobot-train flags
POLICIES: dict[str, list[str]] = {
    "dp": ["--policy.type=diffusion"],
    "cdp_frobenius": ["--policy.type=cdp"],
    "cdp_hinge": [
        "--policy.type=cdp",
        "--policy.contraction_loss=hinge",
        "--policy.contraction_estimator=lanczos",
    ],
    # control: cdp's x0 ("sample") parameterisation without the penalty, to separate the penalty's effect from
    # the parameterisation change (DP is LeRobot's epsilon network)
    "dp_x0": ["--policy.type=cdp", "--policy.contraction_loss=none"],
}
POLICY_LABELS = {
    "dp": "DP (diffusion)",
    "cdp_frobenius": "CDP-frobenius",
    "cdp_hinge": "CDP-hinge",
    "dp_x0": "DP-x0 (cdp, no penalty)",
}
DEFAULT_POLICIES = ["dp", "cdp_frobenius", "cdp_hinge"]
# a variant's base: its policy type (further flags follow it), or any name of POLICIES
VARIANT_BASES = {"dp": ["--policy.type=diffusion"], "cdp": ["--policy.type=cdp"]}
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _split_flags(text: str) -> list[str]:
    """``--a=1,--b=[0,0.1]`` -> ``["--a=1", "--b=[0,0.1]"]`` (commas inside a value stay)."""
    return [f.strip() for f in re.split(r",(?=\s*--)", text) if f.strip()]


def _variant(name: str, spec) -> tuple[str, list[str]]:
    if not _VARIANT_NAME.match(name) or "__" in name:
        raise ValueError(f"variant name {name!r}: use letters, digits, '_', '.', '+', '-' (no '__')")
    if isinstance(spec, dict):
        base, flags = spec.get("base", "cdp"), list(spec.get("flags", []))
    elif isinstance(spec, str):
        base, _, rest = spec.partition(":")
        flags = _split_flags(rest)
    else:  # a list of flags, base cdp unless a --policy.type is among them
        base, flags = None, list(spec)
    if base is None:
        head = [] if any(f.startswith("--policy.type=") for f in flags) else VARIANT_BASES["cdp"]
    elif base in VARIANT_BASES:
        head = VARIANT_BASES[base]
    elif base in POLICIES:
        head = POLICIES[base]
    else:
        raise ValueError(f"variant {name!r}: base {base!r} is not one of {sorted(VARIANT_BASES | POLICIES)}")
    bad = [f for f in flags if not f.startswith("--")]
    if bad:
        raise ValueError(f"variant {name!r}: flags must start with '--' (lerobot-train flags), got {bad}")
    return name, [*head, *flags]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=base:--flag=v,--flag2=[a,b]`` (base ``dp``, ``cdp`` or a built-in policy name) -> (name, flags)."""
    name, eq, spec = text.partition("=")
    if not eq:
        raise ValueError(
            f"--variant {text!r}: expected name=base:--flag=value,... (e.g. g3=cdp:--policy.contraction_weight=3)"
        )
    return _variant(name.strip(), spec.strip())


def load_variants(path: str | Path) -> dict[str, list[str]]:
    """Variants from a JSON or YAML file: ``{name: "base:--f=v,...", name2: [flags], name3: {base, flags}}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"variants file {path} not found")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError(f"variants file {path}: expected a mapping name -> spec, got {type(data).__name__}")
    return dict(_variant(str(k), v) for k, v in data.items())


def flags_of(
    name: str, variants: dict[str, list[str]], builtins: dict[str, list[str]] = POLICIES
) -> list[str]:
    """The lerobot-train flags of a variant (first) or a built-in policy; a clear error naming both lists."""
    if name in variants:
        return list(variants[name])
    if name in builtins:
        return list(builtins[name])
    raise ValueError(f"unknown policy {name!r}; built-in: {sorted(builtins)}; variants: {sorted(variants)}")


def policy_flags(profile: Profile, name: str) -> list[str]:
    """The lerobot-train flags of a policy or variant of ``profile``."""
    return flags_of(name, profile.variants)


def is_dp(flags: list[str]) -> bool:
    """Whether the flags train LeRobot's ``diffusion`` (DDIM at evaluation via ``noise_scheduler_type``)."""
    return "--policy.type=diffusion" in flags


@dataclass
class Profile:
    """Sizes of one matrix run (``--quick`` for a 2-core CPU, ``--full`` for a GPU)."""

    name: str
    tasks: list[str]
    policies: list[str]
    fractions: list[float]
    seeds: list[int]
    dataset_episodes: dict[str, int]
    steps: int
    batch_size: int
    down_dims: list[int]
    embed_dim: int
    lr: float
    eval_episodes: dict[str, int]
    env_episode_length: dict[str, int]
    device: str = "cpu"
    n_checkpoints: int = 4  # checkpoints along training (separation ratio over training)
    horizon: int = 16
    n_action_steps: int = 8
    num_inference_steps: int = 10
    subset: str = "episodes"  # how a data fraction is drawn: "episodes" (--dataset.episodes)
    threads: int = 1
    num_workers: int = 0  # lerobot-train data workers (the CPU profile keeps 0)
    variants: dict[str, list[str]] = field(default_factory=dict)  # name -> lerobot-train flags (--variant)
    eval_steps: list[int] = field(
        default_factory=list
    )  # extra sampling-step counts evaluated (success vs steps)
    mode_episodes: int = 0  # in-process rollouts per cell for mode coverage (tasks with a mode classifier)
    plateau_evals: bool = False  # evaluate DP at every checkpoint: did its success stop rising?
    probe_n_lambda: int = 16  # observations of the per-step lambda profile
    step_time_repeats: int = 8  # interleaved in-process train steps (policy vs same-size DP)
    eval_jobs: int = 1  # lerobot-eval processes of a cell run side by side (a machine with spare cores)

    def train_flags(self) -> list[str]:
        return [
            "--policy.push_to_hub=false",
            f"--policy.device={self.device}",
            "--policy.pretrained_backbone_weights=null",
            f"--policy.horizon={self.horizon}",
            f"--policy.n_action_steps={self.n_action_steps}",
            f"--policy.down_dims=[{','.join(map(str, self.down_dims))}]",
            f"--policy.diffusion_step_embed_dim={self.embed_dim}",
            f"--policy.optimizer_lr={self.lr}",
            "--policy.scheduler_warmup_steps=0",
            f"--batch_size={self.batch_size}",
            f"--num_workers={self.num_workers}",
            "--wandb.enable=false",
            f"--steps={self.steps}",
            f"--log_freq={max(1, self.steps // 10)}",
            f"--save_freq={max(1, self.steps // self.n_checkpoints)}",
        ]


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        tasks=["pointmaze", "lift", "pusht"],
        policies=list(DEFAULT_POLICIES),
        fractions=[1.0, 0.1],
        seeds=[0, 1],
        dataset_episodes={"pointmaze": 50, "lift": 20, "can": 20},
        steps=150,
        batch_size=32,
        down_dims=[32, 64],
        embed_dim=32,
        lr=1e-3,
        eval_episodes={"pointmaze": 10, "lift": 5, "can": 5},
        env_episode_length={"pointmaze": 200, "lift": 100, "can": 200},
        n_checkpoints=3,
    ),
    "full": Profile(
        name="full",
        tasks=["pointmaze", "lift", "can", "pusht"],
        policies=list(POLICIES),
        fractions=[1.0, 0.1],
        seeds=[0, 1, 2],
        dataset_episodes={"pointmaze": 200, "lift": 100, "can": 100},
        steps=20000,
        batch_size=64,
        down_dims=[128, 256, 512],
        embed_dim=128,
        lr=1e-4,
        eval_episodes={"pointmaze": 50, "lift": 50, "can": 50},
        env_episode_length={"pointmaze": 200, "lift": 200, "can": 400},
        device="cuda",
        n_checkpoints=8,
        threads=4,
        num_workers=4,
        eval_steps=[1, 2, 4, 10],
        mode_episodes=50,
        plateau_evals=True,
    ),
    # CPU profile of issue 13: DP (LeRobot `diffusion`) trains long enough for its success to stop rising -- every
    # DP checkpoint is evaluated (`success_over_training`) and the report says whether the last one is still
    # above the earlier ones beyond the intervals --, >= 50 evaluation episodes per cell, 3 seeds, success vs
    # 1 / 2 / 4 / 10 sampling steps, mode coverage from 50 in-process rollouts.
    "standard": Profile(
        name="standard",
        tasks=["pointmaze", "lift", "pusht"],
        policies=["dp", "dp_x0", "cdp_frobenius"],
        fractions=[1.0, 0.1],
        seeds=[0, 1, 2],
        dataset_episodes={"pointmaze": 100, "lift": 50},
        steps=3000,
        batch_size=64,
        down_dims=[64, 128],
        embed_dim=64,
        lr=1e-3,
        eval_episodes={"pointmaze": 50, "lift": 50, "pusht": 50},
        env_episode_length={"pointmaze": 200, "lift": 150, "pusht": 300},
        n_checkpoints=6,
        eval_steps=[1, 2, 4, 10],
        mode_episodes=50,
        plateau_evals=True,
    ),
}


@dataclass
class Cell:
    task: str
    policy: str
    fraction: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.task}__{self.policy}__f{round(self.fraction * 100):03d}__s{self.seed}"


def dataset_root(task: TaskSpec, profile: Profile, out: Path) -> Path:
    """Where a matrix directory keeps a task's dataset (made once, seed 0)."""
    n_episodes = profile.dataset_episodes.get(task.name, task.bench.dataset_episodes)
    return Path(out) / "data" / f"{task.name}_{n_episodes}ep"


def task_skip_reason(task: TaskSpec, profile: Profile, out: Path | None = None) -> str | None:
    """Why ``task`` cannot run: its recorded source data are missing *and* ``out`` holds no dataset made from
    them (a matrix directory carried to another machine keeps its converted Push-T data)."""
    reason = task.skip_reason
    if reason is None or out is None:
        return reason
    return None if (dataset_root(task, profile, out) / "meta" / "info.json").is_file() else reason


def cells_of(profile: Profile, out: Path | None = None) -> list[Cell]:
    return [
        Cell(t, p, f, s)
        for t in profile.tasks
        if task_skip_reason(TASKS[t], profile, out) is None
        for f in profile.fractions
        for s in profile.seeds
        for p in profile.policies
    ]


def subprocess_env(profile: Profile) -> dict[str, str]:
    """Environment of the lerobot-train / -eval subprocesses: offline, no wandb, ``profile.threads`` threads
    (anything with a ``threads`` field will do, e.g. ``benchmarks/pusht_study.py``'s ``Study``)."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(profile.threads),
        MKL_NUM_THREADS=str(profile.threads),
    )
    env.setdefault("MUJOCO_GL", "egl")
    return env


def _run(cmd: list[str], log: Path, env: dict[str, str], timeout: float | None = None) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(map(str, cmd)) + "\n")
        fh.flush()
        proc = subprocess.run(
            [str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False
        )
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed ({proc.returncode}); log {log}:\n{text[-3000:]}")
    return text


def ensure_dataset(task: TaskSpec, profile: Profile, out: Path, env: dict[str, str]) -> Path:
    """The task's dataset (generated or converted once per matrix directory, seed 0)."""
    n_episodes = profile.dataset_episodes.get(task.name, task.bench.dataset_episodes)
    root = dataset_root(task, profile, out)
    if not (root / "meta" / "info.json").is_file():
        _run(
            [
                sys.executable,
                "-m",
                "cdp_plugin.data.generate",
                task.name,
                "--episodes",
                n_episodes,
                "--out",
                root,
                "--seed",
                0,
                "--overwrite",
            ],
            out / "logs" / f"generate_{task.name}.log",
            env,
        )
    return root


def fraction_episodes(root: Path, fraction: float, seed: int) -> list[int] | None:
    """Episode subset of a data fraction (None: all). Drawn with seed ``42 + seed``, shared by all policies."""
    if fraction >= 1.0:
        return None
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from cdp_plugin.data.subsets import episode_subset

    meta = LeRobotDatasetMetadata("local/bench", root=root)
    return episode_subset(meta.total_episodes, fraction, seed=42 + seed)


def trained_contraction(ckpt: Path) -> dict:
    """The ``contraction_*`` settings a checkpoint was trained with (empty for ``diffusion``); with the adaptive
    weight also ``contraction_weight_reached``, the gamma its buffer held at the end of training."""
    cfg = json.loads((Path(ckpt) / "config.json").read_text())
    out = {k: v for k, v in cfg.items() if k.startswith("contraction_")}
    if out.get("contraction_adaptive_target") is not None:
        from safetensors import safe_open

        with safe_open(str(Path(ckpt) / "model.safetensors"), "pt") as fh:
            out["contraction_weight_reached"] = fh.get_tensor("diffusion.contraction_weight").item()
    return out


def _final_checkpoint(train_dir: Path, steps: int) -> Path | None:
    ck = train_dir / "checkpoints" / f"{steps:06d}" / "pretrained_model"
    return ck if (ck / "model.safetensors").is_file() else None


def run_cell(cell: Cell, profile: Profile, out: Path, probe_settings=None) -> dict:
    """Train, evaluate and probe one cell; returns the cell record (not yet written)."""
    from cdp_plugin.bench.probe import ProbeSettings, probe_checkpoint

    env = subprocess_env(profile)
    task = TASKS[cell.task]
    root = ensure_dataset(task, profile, out, env)
    episodes = fraction_episodes(root, cell.fraction, cell.seed)
    run_dir = out / "runs" / cell.id
    train_dir = run_dir / "train"
    record: dict = {
        "cell": asdict(cell),
        "id": cell.id,
        "profile": profile.name,
        "dataset": str(root),
        "episodes": episodes,
        "policy_flags": policy_flags(profile, cell.policy),
    }
    train_cmd = [
        lerobot_cli("lerobot-train"),
        *policy_flags(profile, cell.policy),
        *profile.train_flags(),
        *task.bench.train_args,
        f"--dataset.repo_id=local/{root.name}",
        f"--dataset.root={root}",
        f"--output_dir={train_dir}",
        f"--seed={1000 + cell.seed}",
    ]
    if episodes is not None:
        train_cmd.append(f"--dataset.episodes=[{','.join(map(str, episodes))}]")
    train_log = run_dir / "train.log"
    ckpt = _final_checkpoint(train_dir, profile.steps)
    t0 = time.time()
    if ckpt is None:
        shutil.rmtree(train_dir, ignore_errors=True)  # an interrupted run restarts from scratch
        _run(train_cmd, train_log, env)
        ckpt = _final_checkpoint(train_dir, profile.steps)
        if ckpt is None:
            raise RuntimeError(
                f"lerobot-train finished without a step-{profile.steps} checkpoint in {train_dir}"
            )
    record["train_wall_s"] = time.time() - t0
    record["contraction"] = trained_contraction(ckpt)
    rows = parse_train_log(train_log.read_text(errors="replace"))
    record["train_log"] = rows
    record["update_s"] = mean_update_seconds(rows)
    record["final_loss"] = rows[-1].get("loss") if rows else None
    record["train_cmd"] = " ".join(map(str, train_cmd))

    n_eval = profile.eval_episodes.get(cell.task, task.bench.eval_episodes)
    t0 = time.time()
    # every evaluation of the cell: the main one (DDIM-num_inference_steps), success vs sampling steps, and
    # for DP under plateau_evals every earlier checkpoint (the last one is the main evaluation itself)
    jobs: dict[str, tuple[Path, Path, int]] = {"main": (ckpt, run_dir / "eval", profile.num_inference_steps)}
    for k in sorted(set(profile.eval_steps) - {profile.num_inference_steps}):
        jobs[f"k{k}"] = (ckpt, run_dir / f"eval_k{k}", k)
    plateau = profile.plateau_evals and is_dp(policy_flags(profile, cell.policy))
    ckpt_steps = sorted(int(ck.name) for ck in (train_dir / "checkpoints").glob("[0-9]*"))
    if plateau:
        for step in ckpt_steps:
            if step != profile.steps:
                jobs[f"at{step}"] = (
                    train_dir / "checkpoints" / f"{step:06d}" / "pretrained_model",
                    run_dir / f"eval_at_{step:06d}",
                    profile.num_inference_steps,
                )
    results = run_evaluations(jobs, cell, profile, n_eval, env)
    record["eval"], record["eval_cmd"] = results["main"]
    record["eval_by_steps"] = {str(profile.num_inference_steps): record["eval"]}
    for k in sorted(set(profile.eval_steps) - {profile.num_inference_steps}):
        record["eval_by_steps"][str(k)] = results[f"k{k}"][0]
    if plateau:
        record["success_over_training"] = [
            {
                "step": step,
                "successes": results["main" if step == profile.steps else f"at{step}"][0]["successes"],
            }
            for step in ckpt_steps
        ]
    record["eval_wall_s"] = time.time() - t0
    if profile.mode_episodes:
        from cdp_plugin.bench.modes import MODE_CLASSIFIERS, mode_coverage

        if cell.task in MODE_CLASSIFIERS:
            t0 = time.time()
            record["modes"] = mode_coverage(
                ckpt,
                cell.task,
                profile.mode_episodes,
                profile.num_inference_steps,
                seed=200000 + 1000 * cell.seed,
                episode_length=profile.env_episode_length.get(cell.task, task.bench.env_episode_length),
            )
            record["modes_wall_s"] = time.time() - t0

    t0 = time.time()
    ps = probe_settings or ProbeSettings(
        num_inference_steps=profile.num_inference_steps,
        seed=cell.seed,
        n_lambda=profile.probe_n_lambda,
        step_time_repeats=profile.step_time_repeats,
        step_time_batch=profile.batch_size,
    )
    record["probe"] = probe_checkpoint(ckpt, root, ps, full=True)
    along = []
    for ck in sorted((train_dir / "checkpoints").glob("[0-9]*")):
        step = int(ck.name)
        r = (
            record["probe"]
            if step == profile.steps
            else probe_checkpoint(ck / "pretrained_model", root, ps, full=False)
        )
        along.append({"step": step, **r["sep_ratio"]})
    record["sep_over_training"] = along
    record["probe_wall_s"] = time.time() - t0
    return record


def run_evaluations(
    jobs: dict[str, tuple[Path, Path, int]], cell: Cell, profile: Profile, n_eval: int, env: dict[str, str]
) -> dict[str, tuple[dict, str]]:
    """``evaluate`` every ``name -> (checkpoint, eval_dir, sampling steps)``, ``profile.eval_jobs`` at a time.

    Each evaluation is its own ``lerobot-eval`` process (one simulator thread), so on a machine with cores to
    spare (a GPU box) they run side by side; the first failure is raised once all have ended.
    """
    from concurrent.futures import ThreadPoolExecutor

    run = lambda job: evaluate(job[0], cell, profile, job[1], n_eval, job[2], env)
    if profile.eval_jobs <= 1 or len(jobs) <= 1:
        return {name: run(job) for name, job in jobs.items()}
    with ThreadPoolExecutor(max_workers=profile.eval_jobs) as pool:
        futures = {name: pool.submit(run, job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def evaluate(
    ckpt: Path, cell: Cell, profile: Profile, eval_dir: Path, n_eval: int, steps: int, env: dict[str, str]
) -> tuple[dict, str]:
    """``lerobot-eval`` of ``ckpt`` with DDIM-``steps`` (reused when ``eval_dir`` holds a finished run)."""
    task = TASKS[cell.task]
    dp = is_dp(policy_flags(profile, cell.policy))
    eval_cmd = [
        lerobot_cli("lerobot-eval"),
        f"--policy.path={ckpt}",
        f"--policy.device={profile.device}",
        f"--policy.num_inference_steps={steps}",
        *(["--policy.noise_scheduler_type=DDIM"] if dp else ["--policy.sampler=ddim"]),
        f"--env.type={task.env_type}",
        f"--env.episode_length={profile.env_episode_length.get(cell.task, task.bench.env_episode_length)}",
        *task.bench.env_args,
        f"--eval.n_episodes={n_eval}",
        f"--eval.batch_size={n_eval}",
        "--eval.use_async_envs=false",
        f"--output_dir={eval_dir}",
        f"--seed={100000 + 1000 * cell.seed}",
    ]
    if not (eval_dir / "eval_info.json").is_file():
        shutil.rmtree(eval_dir, ignore_errors=True)
        _run(eval_cmd, eval_dir.parent / f"{eval_dir.name}.log", env)
    shutil.rmtree(eval_dir / "videos", ignore_errors=True)
    info = json.loads((eval_dir / "eval_info.json").read_text())
    per_task = info["per_task"][0]["metrics"]
    return {
        "num_inference_steps": steps,
        "successes": [bool(s) for s in per_task["successes"]],
        "sum_rewards": [float(r) for r in per_task["sum_rewards"]],
        "max_rewards": [float(r) for r in per_task["max_rewards"]],  # pusht: min(max coverage / 0.95, 1)
        "pc_success": float(info["overall"]["pc_success"]),
        "avg_sum_reward": float(info["overall"]["avg_sum_reward"]),
        "avg_max_reward": float(info["overall"]["avg_max_reward"]),
    }, " ".join(map(str, eval_cmd))


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def run_matrix(
    profile: Profile,
    out: Path,
    runner: Callable[[Cell, Profile, Path], dict] = run_cell,
    progress: bool = True,
    keep_going: bool = True,
) -> dict[str, list[str]]:
    """Run every cell without a JSON yet; returns ``{"done": [...], "skipped": [...], "failed": [...]}``."""
    from tqdm.auto import tqdm

    out = Path(out)
    cells = cells_of(profile, out)
    status: dict[str, list[str]] = {"done": [], "skipped": [], "failed": []}
    write_json_atomic(out / "profile.json", asdict(profile))
    bar = tqdm(cells, desc=f"cdp-bench {profile.name}", disable=not progress, unit="cell")
    for cell in bar:
        path = out / "cells" / f"{cell.id}.json"
        if path.is_file():
            status["skipped"].append(cell.id)
            continue
        bar.set_postfix_str(cell.id)
        t0 = time.time()
        try:
            record = runner(cell, profile, out)
        except Exception as e:
            status["failed"].append(cell.id)
            (out / "logs").mkdir(parents=True, exist_ok=True)
            (out / "logs" / f"{cell.id}.error.txt").write_text(f"{type(e).__name__}: {e}\n")
            bar.write(f"cell {cell.id} failed: {type(e).__name__}: {str(e)[:500]}")
            if not keep_going:
                raise
            continue
        record["cell_wall_s"] = time.time() - t0
        write_json_atomic(path, record)
        status["done"].append(cell.id)
    return status


def load_cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))]


def profile_with(profile: Profile, **overrides) -> Profile:
    return replace(profile, **{k: v for k, v in overrides.items() if v is not None})

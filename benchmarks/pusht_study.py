"""Push-T (real human demonstrations), keypoints: DP vs DP-x0 vs CDP at 100 % and 10 % of the episodes.

Every cell trains with ``lerobot-train`` on the converted ``pusht_cchi_v7_replay.zarr`` (keypoints flavour)
and evaluates *every saved checkpoint* with ``lerobot-eval --env.type=pusht
--env.obs_type=environment_state_agent_pos`` (LeRobot's own metrics: success = coverage > 0.95 at some step,
``avg_max_reward`` = mean over episodes of ``max_t min(coverage_t / 0.95, 1)``), so each cell leaves a
learning curve. Resumable: an interrupted training resumes from its last checkpoint (``--resume=true``),
evaluations and cells already written are reused. Run it at low priority on a shared machine::

    nice -n 19 .venv/bin/python benchmarks/pusht_study.py --out outputs/pusht_study          # run / resume
    .venv/bin/python benchmarks/pusht_study.py --out outputs/pusht_study --report \\
        --results benchmarks/RESULTS.md                                                        # tables only

Cells run seed-major (all policies and fractions of seed 0 first), so a stopped study has complete seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cdp_plugin.bench.matrix import flags_of, fraction_episodes, is_dp, lerobot_cli, subprocess_env
from cdp_plugin.envs.tasks import ENV_MIN_MAX

REPO = Path(__file__).resolve().parents[1]
PUSHT_TAG = "bench:pusht"  # the RESULTS.md section this study owns

ENV_NORMALIZATION = ENV_MIN_MAX  # the task table's: keypoints (FeatureType.ENV) min-max normalised
POLICIES = {
    "dp": ["--policy.type=diffusion"],
    "dp_x0": ["--policy.type=cdp", "--policy.contraction_loss=none"],
    # pinned: this study's CDP cells train at gamma 0.2, whatever cdp's default
    "cdp": ["--policy.type=cdp", "--policy.contraction_weight=0.2"],
}
LABELS = {
    "dp": "DP (LeRobot `diffusion`, epsilon)",
    "dp_x0": "DP-x0 (`cdp`, no penalty)",
    "cdp": "CDP (`cdp`, Frobenius penalty, per-dimension γ 0.2)",
}
# evaluation sampler: DDIM, 10 steps, for all three (LeRobot's DDPM-100 is 10x slower on CPU)
EVAL_SAMPLER = {
    "dp": ["--policy.noise_scheduler_type=DDIM"],
    "dp_x0": ["--policy.sampler=ddim"],
    "cdp": ["--policy.sampler=ddim"],
}


@dataclass
class Study:
    """Sizes of the study (defaults: a 2-core CPU shared with other work)."""

    policies: list[str] = field(default_factory=lambda: ["dp", "dp_x0", "cdp"])
    fractions: list[float] = field(default_factory=lambda: [1.0, 0.1])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    steps: int = 3000
    save_every: int = 500
    batch_size: int = 64
    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    embed_dim: int = 64
    lr: float = 1e-3
    warmup: int = 100
    horizon: int = 16
    n_action_steps: int = 8
    n_obs_steps: int = 2
    num_inference_steps: int = 10
    eval_episodes: int = 50
    episode_length: int = 300
    threads: int = 1
    num_workers: int = 1  # a data-loading process beside the update (LeRobot's loader dominates on CPU)
    # LeRobot's diffusion maps only VISUAL / STATE / ACTION by default, so the keypoints (FeatureType.ENV, in
    # pixels 0..512) would reach the network unnormalised; min-max them like the agent state
    normalize_env_state: bool = True
    # policies whose every checkpoint is evaluated (the learning curve); the others only at the last one
    curve_policies: list[str] = field(default_factory=lambda: ["dp", "dp_x0", "cdp"])
    # extra policies: name -> lerobot-train flags (``--variant g0.1=cdp:--policy.contraction_weight=0.1``)
    variants: dict[str, list[str]] = field(default_factory=dict)
    device: str = "cpu"

    def train_flags(self) -> list[str]:
        return [
            "--policy.push_to_hub=false",
            f"--policy.device={self.device}",
            "--policy.pretrained_backbone_weights=null",
            f"--policy.horizon={self.horizon}",
            f"--policy.n_action_steps={self.n_action_steps}",
            f"--policy.n_obs_steps={self.n_obs_steps}",
            f"--policy.down_dims=[{','.join(map(str, self.down_dims))}]",
            f"--policy.diffusion_step_embed_dim={self.embed_dim}",
            f"--policy.optimizer_lr={self.lr}",
            f"--policy.scheduler_warmup_steps={self.warmup}",
            f"--batch_size={self.batch_size}",
            f"--num_workers={self.num_workers}",
            *([ENV_NORMALIZATION] if self.normalize_env_state else []),
            "--wandb.enable=false",
            f"--steps={self.steps}",
            f"--log_freq={max(1, self.save_every // 5)}",
            f"--save_freq={self.save_every}",
        ]


def policy_flags(study: Study, policy: str) -> list[str]:
    """lerobot-train flags of a built-in policy or a ``--variant``."""
    return flags_of(policy, study.variants, POLICIES)


def eval_sampler(study: Study, policy: str) -> list[str]:
    """DDIM at evaluation: LeRobot's ``diffusion`` through its scheduler type, ``cdp`` through its sampler."""
    return EVAL_SAMPLER["dp" if is_dp(policy_flags(study, policy)) else "cdp"]


def label(study: dict, policy: str) -> str:
    """The report's name of a policy; a variant that only sets cdp's default gamma says so."""
    if policy in LABELS:
        return LABELS[policy]
    extra = [f for f in study.get("variants", {}).get(policy, []) if not f.startswith("--policy.type=")]
    from cdp_plugin.contraction import ContractionConfig

    default = ContractionConfig().weight
    is_default = len(extra) == 1 and re.fullmatch(r"--policy\.contraction_weight=([0-9.eE+-]+)", extra[0])
    if is_default and float(is_default.group(1)) == default:
        return f"CDP at cdp's default, {policy} (`cdp` {extra[0]})"
    return f"{policy} (`cdp` {' '.join(extra)})"


def cell_id(policy: str, fraction: float, seed: int) -> str:
    return f"pusht__{policy}__f{round(fraction * 100):03d}__s{seed}"


def run(cmd: list, log: Path, env: dict[str, str]) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(map(str, cmd)) + "\n")
        fh.flush()
        rc = subprocess.run([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if rc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed ({rc.returncode}); log {log}:\n{tail}")


def dataset_root(out: Path) -> Path:
    """Where a study directory keeps its converted keypoints dataset (``gradient_share.py`` reads it too)."""
    return out / "data" / "pusht_keypoints"


def ensure_dataset(out: Path, env: dict[str, str]) -> Path:
    root = dataset_root(out)
    if not (root / "meta" / "info.json").is_file():
        run(
            [
                sys.executable,
                "-m",
                "cdp_plugin.data.generate",
                "pusht",
                "--episodes",
                206,
                "--out",
                root,
                "--overwrite",
            ],
            out / "logs" / "dataset.log",
            env,
        )
    return root


def checkpoints(train_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for ck in sorted((train_dir / "checkpoints").glob("[0-9]*")):
        if (ck / "pretrained_model" / "model.safetensors").is_file():
            out.append((int(ck.name), ck / "pretrained_model"))
    return out


def train(study: Study, policy: str, root: Path, episodes, seed: int, run_dir: Path, env) -> None:
    train_dir = run_dir / "train"
    done = [s for s, _ in checkpoints(train_dir)]
    if study.steps in done:
        return
    last_cfg = train_dir / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    if last_cfg.is_file():
        cmd = [lerobot_cli("lerobot-train"), f"--config_path={last_cfg}", "--resume=true"]
    else:
        shutil.rmtree(train_dir, ignore_errors=True)
        cmd = [
            lerobot_cli("lerobot-train"),
            *policy_flags(study, policy),
            *study.train_flags(),
            f"--dataset.repo_id=local/{root.name}",
            f"--dataset.root={root}",
            f"--output_dir={train_dir}",
            f"--seed={1000 + seed}",
        ]
        if episodes is not None:
            cmd.append(f"--dataset.episodes=[{','.join(map(str, episodes))}]")
    run(cmd, run_dir / "train.log", env)


def evaluate(study: Study, policy: str, ckpt: Path, seed: int, eval_dir: Path, env) -> dict:
    info_path = eval_dir / "eval_info.json"
    if not info_path.is_file():
        shutil.rmtree(eval_dir, ignore_errors=True)
        run(
            [
                lerobot_cli("lerobot-eval"),
                f"--policy.path={ckpt}",
                f"--policy.device={study.device}",
                f"--policy.num_inference_steps={study.num_inference_steps}",
                *eval_sampler(study, policy),
                "--env.type=pusht",
                "--env.obs_type=environment_state_agent_pos",
                f"--env.episode_length={study.episode_length}",
                f"--eval.n_episodes={study.eval_episodes}",
                f"--eval.batch_size={study.eval_episodes}",
                "--eval.use_async_envs=false",
                f"--output_dir={eval_dir}",
                f"--seed={100000 + 1000 * seed}",
            ],
            eval_dir.parent / "eval.log",
            env,
        )
        shutil.rmtree(eval_dir / "videos", ignore_errors=True)
    info = json.loads(info_path.read_text())
    m = info["per_task"][0]["metrics"]
    return {
        "successes": [bool(s) for s in m["successes"]],
        "max_rewards": [float(r) for r in m["max_rewards"]],
        "pc_success": float(info["overall"]["pc_success"]),
        "avg_max_reward": float(info["overall"]["avg_max_reward"]),
    }


def probe(study: Study, ckpt: Path, root: Path) -> dict:
    """cdp-bench's probe of a final checkpoint on 16 dataset windows (``cdp_plugin.bench.probe``): per-observation
    action variance, separation ratio and the per-step lambda profile of the deployed DDIM grid, whose
    ``violation_frac`` is the share of windows where the step's exact contraction condition fails."""
    from cdp_plugin.bench.aggregate import LOW_NOISE, violation_share
    from cdp_plugin.bench.probe import ProbeSettings, probe_checkpoint

    settings = ProbeSettings(
        num_inference_steps=study.num_inference_steps, step_time_repeats=0, latency_repeats=1
    )
    out = probe_checkpoint(ckpt, root, settings)
    prof = out["lambda_profile"]
    return {
        "action_var": out["action_var"]["mean"],
        "sep_median": out["sep_ratio"]["median"],
        "viol_all": violation_share(prof),
        "viol_low": violation_share(prof, 0.0, LOW_NOISE),
        "lambda_profile": prof,
        "n_obs": out["action_var"]["n_obs"],
    }


def probe_cells(study: Study, out: Path) -> list[str]:
    """Probe the last checkpoint of every finished cell that has no probe yet (``--probe``)."""
    root = dataset_root(out)
    done = []
    for path in sorted((out / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        if "probe" in cell:
            continue
        cks = checkpoints(out / "runs" / cell["id"] / "train")
        if not cks or cks[-1][0] != cell["final"]["step"]:
            print(f"  {cell['id']}: no checkpoint at step {cell['final']['step']}, not probed", flush=True)
            continue
        cell["probe"] = probe(study, cks[-1][1], root)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cell, indent=1))
        tmp.replace(path)
        done.append(cell["id"])
        print(
            f"  {cell['id']}: λ-viol {cell['probe']['viol_all']:.2f}, var {cell['probe']['action_var']:.3g}"
        )
    return done


def train_seconds_per_step(log: Path) -> float | None:
    vals = (
        [float(x) for x in re.findall(r"updt_s:([0-9.]+)", log.read_text(errors="replace"))]
        if log.is_file()
        else []
    )
    return sum(vals) / len(vals) if vals else None


def run_study(study: Study, out: Path) -> dict[str, list[str]]:
    env = subprocess_env(study)  # cdp-bench's: offline, no wandb, study.threads threads
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(asdict(study), indent=1))
    root = ensure_dataset(out, env)
    status = {"done": [], "skipped": [], "failed": []}
    for seed in study.seeds:
        for fraction in study.fractions:
            for policy in study.policies:
                cid = cell_id(policy, fraction, seed)
                path = out / "cells" / f"{cid}.json"
                if path.is_file():
                    status["skipped"].append(cid)
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {cid}", flush=True)
                run_dir = out / "runs" / cid
                try:
                    episodes = fraction_episodes(root, fraction, seed)  # the same subset for every policy
                    t0 = time.time()
                    train(study, policy, root, episodes, seed, run_dir, env)
                    train_s = time.time() - t0
                    curve = []
                    cks = checkpoints(run_dir / "train")
                    if policy not in study.curve_policies:
                        cks = cks[-1:]
                    for step, ck in cks:
                        curve.append(
                            {
                                "step": step,
                                **evaluate(study, policy, ck, seed, run_dir / f"eval_{step:06d}", env),
                            }
                        )
                        print(
                            f"  step {step}: success {curve[-1]['pc_success']:.0f} %, avg max reward "
                            f"{curve[-1]['avg_max_reward']:.3f}",
                            flush=True,
                        )
                    probed = probe(study, cks[-1][1], root)
                except Exception as e:  # noqa: BLE001 - keep going; the cell reruns next time
                    status["failed"].append(cid)
                    (out / "logs").mkdir(parents=True, exist_ok=True)
                    (out / "logs" / f"{cid}.error.txt").write_text(f"{type(e).__name__}: {e}\n")
                    print(f"  failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                record = {
                    "id": cid,
                    "policy": policy,
                    "fraction": fraction,
                    "seed": seed,
                    "episodes": episodes,
                    "curve": curve,
                    "final": curve[-1],
                    "probe": probed,
                    "train_wall_s_this_run": train_s,
                    "updt_s": train_seconds_per_step(run_dir / "train.log"),
                    "study": asdict(study),
                }
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(record, indent=1))
                tmp.replace(path)
                status["done"].append(cid)
    return status


# -- report --------------------------------------------------------------------------------------------------


def _pct(k: int, n: int) -> str:
    from cdp_plugin.bench.metrics import wilson_interval

    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {100 * k / n:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"


def probe_table(study: dict, cells: list[dict]) -> list[str]:
    """Markdown: the contraction probe of the last checkpoints per policy and fraction, against DP-x0."""
    from cdp_plugin.bench.aggregate import LOW_NOISE
    from cdp_plugin.bench.markdown import _range_sep

    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        if "probe" in c:
            groups.setdefault((c["policy"], c["fraction"]), []).append(c)
    if not groups:
        return []
    lines = [
        "",
        (
            f"Contraction probe of the last checkpoint ({next(iter(groups.values()))[0]['probe']['n_obs']} "
            f"dataset windows per seed, the deployed DDIM-{study['num_inference_steps']} grid; "
            "`cdp_plugin.bench.probe`, as in cdp-bench): λ-viol = share of (window, sampler step) outside the "
            f"step's exact contraction window, over all steps and at the steps with t/T < {LOW_NOISE} (the last "
            "one); action variance = per-window variance of the sampled action chunk (normalised units), mean "
            "over windows; seed ranges against DP-x0 (`lower` / `higher` only where they do not overlap):"
        ),
        "",
        "| policy | episodes | seeds | λ-viol, all steps (per seed) | λ-viol, last step (per seed) | "
        "action variance (per seed) | variance / DP-x0 | vs DP-x0: all / last step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (pol, frac), cs in groups.items():
        cs = sorted(cs, key=lambda c: c["seed"])
        va = [c["probe"]["viol_all"] for c in cs]
        vl = [c["probe"]["viol_low"] for c in cs]
        var = [c["probe"]["action_var"] for c in cs]
        ref = groups.get(("dp_x0", frac), [])
        ratio, cmp = "–", "–"
        if ref and pol != "dp_x0":
            ref_var = sum(c["probe"]["action_var"] for c in ref) / len(ref)
            ratio = f"{sum(var) / len(var) / ref_var:.2f}×"
            cmp = (
                f"{_range_sep(va, [c['probe']['viol_all'] for c in ref])} / "
                f"{_range_sep(vl, [c['probe']['viol_low'] for c in ref])}"
            )
        lines.append(
            f"| {label(study, pol)} | {round(frac * 100)} % | {len(cs)} | {sum(va) / len(va):.2f} "
            f"({'/'.join(f'{v:.2f}' for v in va)}) | {sum(vl) / len(vl):.2f} ({'/'.join(f'{v:.2f}' for v in vl)}) | "
            f"{sum(var) / len(var):.3g} ({'/'.join(f'{v:.3g}' for v in var)}) | {ratio} | {cmp} |"
        )
    return lines


def trained_contraction(out: Path, cid: str) -> dict:
    """The ``contraction_*`` fields (and type) a cell's last checkpoint was trained with, from its own config."""
    cks = checkpoints(out / "runs" / cid / "train")
    if not cks:
        return {}
    cfg = json.loads((cks[-1][1] / "config.json").read_text())
    return {k: v for k, v in cfg.items() if k.startswith("contraction_") or k == "type"}


def load_cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def by_policy(cells: list[dict]) -> dict[tuple, list[dict]]:
    """Cells grouped by ``(policy, fraction)``, seeds in the order given."""
    groups: dict[tuple, list] = {}
    for c in cells:
        groups.setdefault((c["policy"], c["fraction"]), []).append(c)
    return groups


def penalty_agg(out: Path, task: str) -> dict[tuple, dict]:
    """``{(task, policy, fraction): row}`` of a study directory, in the form ``plot_penalty_strength`` draws:
    success pooled over seeds with its Wilson interval, per-window action variance per seed, and the penalty
    (loss, estimator, gamma, windows) read from each cell's trained config."""
    from cdp_plugin.bench.aggregate import success_stats

    agg = {}
    for (policy, fraction), cs in by_policy(load_cells(out)).items():
        variances = [c["probe"]["action_var"] for c in cs if c.get("probe")]
        if not variances:
            continue
        trained = trained_contraction(out, cs[0]["id"])
        loss = trained.get("contraction_loss", "none")
        agg[(task, policy, fraction)] = {
            "penalty": trained.get("type") == "cdp" and loss != "none",
            "gamma": trained.get("contraction_weight"),
            "loss": loss,
            "estimator": trained.get("contraction_estimator"),
            "noise_window": list(trained.get("contraction_noise_window") or [0.0, 1.0]),
            "step_window": list(trained.get("contraction_step_window") or [0.0, 1.0]),
            **success_stats([s for c in cs for s in c["final"]["successes"]]),
            "action_var": sum(variances) / len(variances),
            "action_var_per_seed": variances,
        }
    return agg


def plot_studies(studies: list[Path], path: Path) -> Path:
    """Success and action variance against gamma for one or more study directories (a column each, titled by
    its training length), DP-x0 as the band: ``cdp_plugin.bench.plots.plot_penalty_strength``."""
    from cdp_plugin.bench.plots import plot_penalty_strength

    agg, tasks, fractions = {}, [], set()
    for out in studies:
        steps = json.loads((out / "study.json").read_text())["steps"]
        task = f"Push-T, {steps} steps ({out.name})"
        rows = penalty_agg(out, task)
        if rows:
            agg.update(rows)
            tasks.append(task)
            fractions |= {f for _, _, f in rows}
    if not agg:
        raise SystemExit(f"pusht_study: no probed cells under {', '.join(str(s) for s in studies)}")
    return plot_penalty_strength(agg, {"tasks": tasks, "fractions": sorted(fractions)}, path)


def report(out: Path) -> str:
    """Markdown: final checkpoint per cell and seed (Wilson 95 % intervals), pooled seeds, and the curves."""
    cells = load_cells(out)
    if not cells:
        return "_no finished cells yet_"
    variants = {k: v for c in cells for k, v in c["study"].get("variants", {}).items()}
    study = {**cells[0]["study"], "variants": variants}
    order = {p: i for i, p in enumerate([*POLICIES, *study.get("variants", {})])}
    cells.sort(key=lambda c: (-c["fraction"], order[c["policy"]], c["seed"]))
    steps = sorted({r["step"] for c in cells for r in c["curve"]})
    lines = [
        (
            f"Sizes: UNet `down_dims={study['down_dims']}`, step embedding {study['embed_dim']}, horizon "
            f"{study['horizon']}, n_obs_steps {study['n_obs_steps']}, "
            f"n_action_steps {study['n_action_steps']}, "
            f"batch {study['batch_size']}, lr {study['lr']} (cosine, {study['warmup']} warm-up steps), "
            f"{study['steps']} steps, checkpoints every {study['save_every']}; evaluation: DDIM "
            f"{study['num_inference_steps']} steps, {study['eval_episodes']} episodes of at most "
            f"{study['episode_length']} steps per checkpoint (`lerobot-eval --env.type=pusht "
            "--env.obs_type=environment_state_agent_pos`, seed 100000 + 1000 * seed)."
        ),
        "",
        (
            "| policy | episodes | seed | success at the last checkpoint (Wilson 95 %) | avg max reward | "
            "best checkpoint: success / avg max reward |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        f = c["final"]
        k, n = sum(f["successes"]), len(f["successes"])
        best = max(c["curve"], key=lambda r: r["avg_max_reward"])
        lines.append(
            f"| {label(study, c['policy'])} | {round(c['fraction'] * 100)} % | {c['seed']} | {_pct(k, n)} | "
            f"{f['avg_max_reward']:.3f} | step {best['step']}: {best['pc_success']:.0f} % / "
            f"{best['avg_max_reward']:.3f} |"
        )
    lines += [
        "",
        "Seeds pooled (last checkpoint):",
        "",
        "| policy | episodes | seeds | success (Wilson 95 %) | avg max reward (mean over seeds) |",
        "|---|---|---|---|---|",
    ]
    for (pol, frac), cs in by_policy(cells).items():
        fs = [c["final"] for c in cs]
        k = sum(sum(f["successes"]) for f in fs)
        n = sum(len(f["successes"]) for f in fs)
        amr = sum(f["avg_max_reward"] for f in fs) / len(fs)
        lines.append(
            f"| {label(study, pol)} | {round(frac * 100)} % | {len(fs)} | {_pct(k, n)} | {amr:.3f} |"
        )
    lines += probe_table(study, cells)
    lines += [
        "",
        "Learning curves (success % / avg max reward at each evaluated checkpoint; – = not evaluated):",
        "",
        "| cell | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for c in cells:
        at = {r["step"]: r for r in c["curve"]}
        lines.append(
            f"| {c['policy']} {round(c['fraction'] * 100)} % s{c['seed']} | "
            + " | ".join(
                f"{at[s]['pc_success']:.0f} / {at[s]['avg_max_reward']:.2f}" if s in at else "–"
                for s in steps
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "pusht_study")
    p.add_argument("--report", action="store_true", help="only print (and with --results write) the tables")
    p.add_argument(
        "--results", type=Path, default=None, help="RESULTS.md whose pusht-study section to replace"
    )
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--seeds", default=None, help="e.g. 0,1,2")
    p.add_argument("--policies", default=None, help="subset of dp,dp_x0,cdp")
    p.add_argument("--fractions", default=None, help="e.g. 1.0,0.1")
    p.add_argument("--eval-episodes", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--embed-dim", type=int, default=None)
    p.add_argument("--down-dims", default=None, help="UNet widths, e.g. 32,64,128")
    p.add_argument(
        "--curve-policies", default=None, help="policies evaluated at every checkpoint (others: last only)"
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=BASE:FLAGS",
        help="an extra policy, e.g. g0.1=cdp:--policy.contraction_weight=0.1 (repeatable; added to the policies)",
    )
    p.add_argument("--device", default=None, help="cpu (default) | cuda")
    p.add_argument("--num-workers", type=int, default=None, help="lerobot-train data workers (default 1)")
    p.add_argument(
        "--probe",
        action="store_true",
        help="probe the last checkpoint of finished cells that have no probe yet (no training), then report",
    )
    p.add_argument(
        "--section",
        default=PUSHT_TAG,
        help=f"RESULTS.md section written with --results: {PUSHT_TAG} (default) or another bench:<name> "
        "(e.g. a longer study beside the first)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG of success and action variance against gamma (no training), e.g. benchmarks/plots/pusht_penalty_strength.png",
    )
    p.add_argument(
        "--plot-study",
        type=Path,
        action="append",
        default=None,
        help="study directories drawn by --plot, a column each (repeatable; default: --out)",
    )
    a = p.parse_args(argv)
    if a.plot:
        print(plot_studies(a.plot_study or [a.out], a.plot))
        return 0
    if not re.fullmatch(r"bench:[a-z0-9][a-z0-9_-]*", a.section):
        raise SystemExit(f"pusht_study: --section must look like bench:<name>, got {a.section!r}")
    study = Study()
    saved = a.out / "study.json"
    if saved.is_file():  # a resumed study keeps its sizes
        study = Study(**json.loads(saved.read_text()))
    sizes = {
        "steps": a.steps,
        "save_every": a.save_every,
        "eval_episodes": a.eval_episodes,
        "batch_size": a.batch_size,
        "embed_dim": a.embed_dim,
        "num_workers": a.num_workers,
    }
    for name, val in sizes.items():
        if val is not None:
            setattr(study, name, val)
    if a.down_dims:
        study.down_dims = [int(d) for d in a.down_dims.split(",")]
    if a.curve_policies:
        study.curve_policies = a.curve_policies.split(",")
    if a.seeds:
        study.seeds = [int(s) for s in a.seeds.split(",")]
    if a.policies:
        study.policies = a.policies.split(",")
    if a.fractions:
        study.fractions = [float(f) for f in a.fractions.split(",")]
    if a.device:
        study.device = a.device
    if a.variant:
        from cdp_plugin.bench.matrix import parse_variant

        try:
            variants = dict(parse_variant(v) for v in a.variant)
        except ValueError as e:
            raise SystemExit(f"pusht_study: {e}") from None
        study.variants = {**study.variants, **variants}
        if not a.policies:
            study.policies = [q for q in study.policies if q not in variants]
        study.policies += [v for v in variants if v not in study.policies]
    if a.probe:
        print(json.dumps({"probed": probe_cells(study, a.out)}))
    elif not a.report:
        sys.path.insert(0, str(REPO))
        status = run_study(study, a.out)
        print(json.dumps({k: len(v) for k, v in status.items()}))
    md = report(a.out)
    print(md)
    if a.results:
        from cdp_plugin.bench.results_file import replace_section

        replace_section(a.results, a.section, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

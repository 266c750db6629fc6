"""``cdp-bench``: the DP vs CDP benchmark matrix through LeRobot's train/eval CLIs, then tables and plots.

Examples::

    cdp-bench --quick                      # 2-core CPU, < 30 min; writes benchmarks/RESULTS.md + plots
    cdp-bench --full --out outputs/bench_full --card "NVIDIA H100 80GB"
    cdp-bench --quick --report-only        # rebuild tables/plots from finished cells

Interrupt and rerun the same command to continue: finished cells (``<out>/cells/*.json``) are not rerun.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from cdp_plugin.bench.matrix import (
    PROFILES,
    TASKS,
    load_cells,
    load_variants,
    parse_variant,
    policy_flags,
    profile_with,
    run_matrix,
    task_skip_reason,
)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cdp-bench", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU profile (default)")
    g.add_argument("--full", action="store_true", help="GPU profile")
    g.add_argument(
        "--profile", choices=sorted(PROFILES), default=None, help="named profile (quick, standard, full)"
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=BASE:FLAGS",
        help="a policy variant with arbitrary lerobot-train flags, e.g. "
        "g3=cdp:--policy.contraction_weight=3,--policy.contraction_noise_window=[0,0.1] "
        "(BASE: dp, cdp or a built-in policy); repeatable; added to the policies run",
    )
    p.add_argument(
        "--variants-file",
        type=Path,
        default=None,
        help="JSON/YAML mapping name -> 'base:flags' | [flags] | {base, flags}; added to the policies run",
    )
    p.add_argument(
        "--eval-steps", default=None, help="comma-separated extra sampling-step counts to evaluate"
    )
    p.add_argument(
        "--eval-episodes", type=int, default=None, help="evaluation episodes per cell (every task)"
    )
    p.add_argument("--dataset-episodes", type=int, default=None, help="dataset episodes (every task)")
    p.add_argument(
        "--mode-episodes", type=int, default=None, help="in-process rollouts per cell for mode coverage"
    )
    p.add_argument(
        "--section",
        default=None,
        help="RESULTS.md section to write: bench:matrix (default), "
        "bench:penalty (the penalty strength study: success and action variance vs gamma, success vs steps) "
        "or bench:<name> (the matrix report in a section of its own, e.g. a GPU run beside the CPU one)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="matrix directory (default outputs/bench_<profile>)"
    )
    p.add_argument("--tasks", default=None, help="comma-separated subset of tasks (pointmaze,lift,can,pusht)")
    p.add_argument("--policies", default=None, help="comma-separated subset of dp,cdp_frobenius,cdp_hinge")
    p.add_argument("--seeds", default=None, help="comma-separated seeds")
    p.add_argument("--fractions", default=None, help="comma-separated data fractions, e.g. 1.0,0.1")
    p.add_argument("--steps", type=int, default=None, help="training steps per cell")
    p.add_argument("--device", default=None, help="cpu | cuda")
    p.add_argument(
        "--num-workers", type=int, default=None, help="lerobot-train data-loading workers per cell"
    )
    p.add_argument(
        "--eval-jobs",
        type=int,
        default=None,
        help="evaluations of a cell run side by side (default 1; more on a machine with spare cores)",
    )
    p.add_argument(
        "--results", type=Path, default=None, help="RESULTS.md to update (default benchmarks/RESULTS.md)"
    )
    p.add_argument("--plots-dir", type=Path, default=None, help="default benchmarks/plots")
    p.add_argument("--card", default=None, help="hardware named in RESULTS.md (default: detected)")
    p.add_argument(
        "--report-only", action="store_true", help="only rebuild RESULTS.md and plots from finished cells"
    )
    p.add_argument("--no-report", action="store_true", help="run cells, do not touch RESULTS.md / plots")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def detect_card(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import torch

            return f"GPU: {torch.cuda.get_device_name(0)}"
        except Exception:  # noqa: BLE001
            return "GPU (unknown)"
    return f"CPU, {os.cpu_count()} cores, no GPU"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    name = a.profile or ("full" if a.full else "quick")
    csv = lambda s, f=str: None if s is None else [f(x) for x in s.split(",") if x]
    try:
        variants = dict(load_variants(a.variants_file)) if a.variants_file else {}
        variants.update(parse_variant(v) for v in a.variant)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise SystemExit(f"cdp-bench: {e}") from None
    base = PROFILES[name]
    policies = csv(a.policies) or (base.policies if not variants else [])
    policies = policies + [v for v in variants if v not in policies]
    tasks = csv(a.tasks) or base.tasks
    per_task = lambda n: None if n is None else dict.fromkeys(tasks, n)
    profile = profile_with(
        base,
        tasks=tasks,
        policies=policies,
        seeds=csv(a.seeds, int),
        fractions=csv(a.fractions, float),
        steps=a.steps,
        device=a.device,
        variants={**base.variants, **variants} if variants else None,
        eval_steps=csv(a.eval_steps, int),
        eval_episodes=per_task(a.eval_episodes),
        dataset_episodes=per_task(a.dataset_episodes),
        mode_episodes=a.mode_episodes,
        num_workers=a.num_workers,
        eval_jobs=a.eval_jobs,
    )
    for pol in profile.policies:
        try:
            policy_flags(profile, pol)
        except ValueError as e:
            raise SystemExit(f"cdp-bench: --policies: {e}") from None
    for t in profile.tasks:
        if t not in TASKS:
            raise SystemExit(f"cdp-bench: unknown task {t!r}; choose from {sorted(TASKS)}")
    out = a.out or Path("outputs") / f"bench_{name}"
    out.mkdir(parents=True, exist_ok=True)
    root = _repo_root()
    results = a.results or root / "benchmarks" / "RESULTS.md"
    plots = a.plots_dir or root / "benchmarks" / "plots"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")

    import torch

    torch.set_num_threads(profile.threads)
    status = {"done": [], "skipped": [], "failed": []}
    t0 = time.time()
    if not a.report_only:
        status = run_matrix(profile, out, progress=not a.no_progress)
        run_meta = {
            "command": "cdp-bench "
            + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])),
            "card": a.card or detect_card(profile.device),
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_s": time.time() - t0,
            "status": status,
        }
        hist = out / "runs.jsonl"
        with open(hist, "a") as fh:
            fh.write(json.dumps(run_meta) + "\n")
        print(json.dumps({k: len(v) for k, v in status.items()}))
        if status["failed"]:
            print("failed cells: " + ", ".join(status["failed"]), file=sys.stderr)
    if a.no_report:
        return 1 if status["failed"] else 0
    from cdp_plugin.bench.aggregate import aggregate
    from cdp_plugin.bench.markdown import (
        compact_table,
        matrix_markdown,
        penalty_markdown,
    )
    from cdp_plugin.bench.plots import PENALTY_PLOTS, make_plots
    from cdp_plugin.bench.results_file import MATRIX_TAG, PENALTY_TAG, replace_section

    cells = load_cells(out)
    if not cells:
        print("cdp-bench: no finished cells to report", file=sys.stderr)
        return 1
    agg = aggregate(cells)
    # metadata: the run(s) that produced the cells; wall time summed over resumed runs
    meta = {
        "command": "cdp-bench --profile " + name,
        "card": a.card or detect_card(profile.device),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    hist = out / "runs.jsonl"
    if hist.is_file():
        runs = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
        if runs:
            meta.update(card=a.card or runs[-1]["card"], date=runs[-1]["date"])
            meta["commands_md"] = "; then ".join(
                f"`{r['command']}` ({len(r['status']['done'])} cells run, {len(r['status']['skipped'])} skipped, "
                f"{len(r['status']['failed'])} failed; {r['wall_s'] / 60:.1f} min; finished {r['date']})"
                for r in runs
            )
            cell_s = sum(c.get("cell_wall_s", 0.0) for c in cells)
            meta["wall"] = (
                f"{sum(r['wall_s'] for r in runs) / 60:.1f} min over {len(runs)} invocation(s) "
                f"(cells: {cell_s / 60:.1f} min)"
            )
    failed = (
        sorted(
            {p.name[: -len(".error.txt")] for p in (out / "logs").glob("*.error.txt")}
            - {c["id"] for c in cells}
        )
        if (out / "logs").is_dir()
        else []
    )
    skipped = {t: r for t in profile.tasks if (r := task_skip_reason(TASKS[t], profile, out))}
    prof = asdict(profile)
    # report every policy / task / fraction / seed found among the finished cells (runs may add to a directory)
    from cdp_plugin.bench.matrix import POLICIES

    found = [c["cell"] for c in cells]
    prof["policies"] = [p for p in POLICIES if any(c["policy"] == p for c in found)] + list(
        dict.fromkeys(c["policy"] for c in found if c["policy"] not in POLICIES)
    )  # variants, in the order they were run
    prof["tasks"] = [t for t in TASKS if any(c["task"] == t for c in found)] + [
        t for t in profile.tasks if t not in {c["task"] for c in found}
    ]
    prof["fractions"] = sorted({c["fraction"] for c in found}, reverse=True)
    prof["seeds"] = sorted({c["seed"] for c in found})
    if (a.section or MATRIX_TAG) == PENALTY_TAG:
        prof["eval_steps"] = sorted({k for c in cells for k in map(int, (c.get("eval_by_steps") or {}))})
        paths = make_plots(agg, prof, plots, PENALTY_PLOTS)
        shown = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]
        replace_section(results, PENALTY_TAG, penalty_markdown(agg, prof, meta, failed, shown))
    elif re.fullmatch(r"bench:[a-z0-9][a-z0-9_-]*", a.section or MATRIX_TAG):
        # the matrix report; a section of its own (e.g. bench:standard-gpu) keeps another run's matrix intact
        tag = a.section or MATRIX_TAG
        paths = make_plots(agg, prof, plots)
        shown = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]
        replace_section(results, tag, matrix_markdown(agg, prof, meta, skipped, failed, shown))
    else:
        raise SystemExit(
            f"cdp-bench: --section must be {MATRIX_TAG}, {PENALTY_TAG} or another bench:<name>, got {a.section!r}"
        )
    print(compact_table(agg))
    print(f"wrote {results} and {', '.join(str(p) for p in paths)}")
    return 1 if status["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

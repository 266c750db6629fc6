"""Franka Slide on franky-sim: record expert data, evaluate trained policies (see docs/franka.md).

    python examples/franka_slide.py record --root outputs/franka_slide --episodes 30
    python examples/franka_slide.py expert --episodes 20
    python examples/franka_slide.py eval --policy outputs/train/dp/checkpoints/last/pretrained_model \
        --episodes 10 --seed 1000

Everything runs through the ``franka`` LeRobot robot: franky talks the libfranka protocol to a franky-sim
server started in this process on a free loopback address (use ``--host`` to pick one).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="record scripted-expert episodes into a LeRobotDataset")
    rec.add_argument("--root", required=True, help="dataset directory (must not exist)")
    rec.add_argument("--repo-id", default="local/franka_slide")
    rec.add_argument("--episodes", type=int, default=30)
    rec.add_argument("--keep-failures", action="store_true", help="also save episodes the expert failed")
    ex = sub.add_parser("expert", help="measure the expert's success rate (nothing saved)")
    ex.add_argument("--episodes", type=int, default=20)
    ev = sub.add_parser("eval", help="closed-loop success rate of a trained LeRobot policy")
    ev.add_argument("--policy", required=True, help="pretrained_model directory")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--device", default="cpu")
    for p in (rec, ex, ev):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--host", default=None, help="loopback address for franky-sim (default: a free one)")
        p.add_argument("--max-steps", type=int, default=80)
        p.add_argument("--json", default=None, help="also write the result to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("franky_sim").setLevel(logging.WARNING)

    from cdp_plugin.franka import slide

    host = args.host or slide.free_loopback_host()
    t0 = time.perf_counter()
    if args.cmd == "record":
        res = slide.record_dataset(
            args.root,
            args.episodes,
            repo_id=args.repo_id,
            host=host,
            seed=args.seed,
            max_steps=args.max_steps,
            only_success=not args.keep_failures,
        )
    elif args.cmd == "expert":
        res = slide.evaluate_expert(args.episodes, host=host, seed=args.seed, max_steps=args.max_steps)
    else:
        res = slide.evaluate_policy(
            args.policy,
            args.episodes,
            host=host,
            seed=args.seed,
            max_steps=args.max_steps,
            device=args.device,
        )
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    summary = {k: v for k, v in res.items() if k != "results"}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

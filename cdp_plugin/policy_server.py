"""``cdp-policy-server``: LeRobot's async gRPC policy server, able to serve ``cdp`` checkpoints.

LeRobot's ``python -m lerobot.async_inference.policy_server`` neither runs plugin discovery nor accepts
types outside its hard-coded ``SUPPORTED_POLICIES``. This launcher registers the ``cdp`` policy type,
appends it to that list (:func:`cdp_plugin.register.register_async_inference`, which is also what importing
the ``lerobot_policy_cdp`` shim does) and then runs LeRobot's own ``serve`` unchanged (same flags)::

    cdp-policy-server --host=127.0.0.1 --port=8080 --fps=30 --inference_latency=0.033 --obs_queue_timeout=1

The robot side is LeRobot's own client, which discovers plugins itself::

    python -m lerobot.async_inference.robot_client --server_address=127.0.0.1:8080 --policy_type=cdp \\
        --pretrained_name_or_path=<user>/<cdp repo or checkpoint dir> --actions_per_chunk=8 --robot.type=...

In Python (a server in your own process): ``import lerobot_policy_cdp`` before building
``lerobot.async_inference.policy_server.PolicyServer``. Needs ``pip install 'lerobot_policy_cdp[async]'``.
"""

from __future__ import annotations


def main() -> None:
    import cdp_plugin.policy  # noqa: F401  (registers the policy type cdp with LeRobot)
    from cdp_plugin.register import register_all, register_async_inference

    register_all()

    if not register_async_inference():
        raise SystemExit(
            "error: the async policy server needs grpcio: pip install 'lerobot_policy_cdp[async]'"
        )
    from lerobot.async_inference.policy_server import serve

    serve()


if __name__ == "__main__":
    main()

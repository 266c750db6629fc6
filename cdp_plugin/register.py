"""Registration of the plugin's LeRobot environments and robots (called by the ``lerobot_policy_cdp`` shim
and by ``cdp-policy-server``).

Each optional part registers its config classes only (cheap; simulators are imported lazily when an env
or robot is built). A part whose module is absent is skipped.

:func:`register_async_inference` adds ``cdp`` to LeRobot's async gRPC server's hard-coded list
(``lerobot.async_inference.constants.SUPPORTED_POLICIES``): the list is the only hook the server has (it
does not go through plugin discovery), and the server reads that same list object at request time.
"""

from __future__ import annotations

import importlib
import logging

_OPTIONAL_PARTS = ("cdp_plugin.envs", "cdp_plugin.franka")


POLICY_TYPE = "cdp"


def register_async_inference(policy_type: str = POLICY_TYPE) -> bool:
    """Append ``policy_type`` to ``lerobot.async_inference.constants.SUPPORTED_POLICIES`` (idempotent).

    A no-op returning False when grpcio (``lerobot[async]``) is not installed: the async server cannot run
    then, and importing ``lerobot.async_inference`` would raise.
    """
    import importlib.util

    if importlib.util.find_spec("grpc") is None:
        return False
    from lerobot.async_inference import constants

    if policy_type not in constants.SUPPORTED_POLICIES:
        constants.SUPPORTED_POLICIES.append(policy_type)  # in place: policy_server imported this list
    return True


def register_all() -> None:
    try:
        register_async_inference()
    except Exception as e:  # never let the optional server hook break the policy's registration
        logging.getLogger(__name__).warning("cdp: could not register with LeRobot's async server: %s", e)
    for name in _OPTIONAL_PARTS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                logging.getLogger(__name__).warning("cdp: could not register %s: %s", name, e)

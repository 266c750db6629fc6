"""Registration of the plugin's LeRobot environments and robots (called by the ``lerobot_policy_cdp`` shim).

Each optional part registers its config classes only (cheap; simulators are imported lazily when an env
or robot is built). A part whose module is absent is skipped.
"""

from __future__ import annotations

import importlib
import logging

_OPTIONAL_PARTS = ("cdp_plugin.envs", "cdp_plugin.franka")


def register_all() -> None:
    for name in _OPTIONAL_PARTS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                logging.getLogger(__name__).warning("cdp: could not register %s: %s", name, e)

"""``franky_sim`` camera: a schematic top-down image of the Slide scene simulated in this process."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from lerobot.cameras.camera import Camera

from .config_franka import FrankySimCameraConfig


class FrankySimCamera(Camera):
    def __init__(self, config: FrankySimCameraConfig):
        super().__init__(config)
        self.config = config
        self._sim = None
        self._last: np.ndarray | None = None
        self._last_t = 0.0

    @property
    def is_connected(self) -> bool:
        return self._sim is not None and self._sim.started

    @staticmethod
    def find_cameras() -> list[dict[str, Any]]:
        from .sim import RUNNING

        return [{"type": "franky_sim", "id": host} for host in RUNNING]

    def connect(self, warmup: bool = True) -> None:
        from .sim import RUNNING

        sim = RUNNING.get(self.config.host)
        if sim is None:
            raise ConnectionError(
                f"no franky-sim scene runs on {self.config.host} in this process "
                "(set --robot.sim=slide on the franka robot, which starts it)"
            )
        self._sim = sim
        if warmup:
            self.read()

    def read(self) -> np.ndarray:
        if not self.is_connected:
            raise ConnectionError("franky_sim camera is not connected")
        img = self._sim.render(self.config.height, self.config.width)
        self._last, self._last_t = img, time.perf_counter()
        return img

    def async_read(self, timeout_ms: float = 200) -> np.ndarray:
        return self.read()

    def read_latest(self, max_age_ms: int = 500) -> np.ndarray:
        return self.read()

    def disconnect(self) -> None:
        self._sim = None

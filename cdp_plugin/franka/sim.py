"""The simulated Franka "Slide" scene on franky-sim (MuJoCo), served over the real libfranka protocol.

:class:`SlideSim` builds franky-sim's FR3 scene, adds a table-top puck ("block") and a target marker,
and starts franky-sim's :class:`~franky_sim.SimulationServer` on a loopback address in a background
thread. Clients (``franky.Robot(host)``, and therefore the :class:`~cdp_plugin.franka.Franka` LeRobot
robot) connect to it exactly as to a real arm; nothing on the client side knows it is a simulator.

The scene object state (block position) is privileged simulator information: it is read through
:meth:`SlideSim.block_xy`, which copies the MuJoCo state between two physics steps (inside the
simulation thread) so reads never race with ``mj_step``.

:class:`SlideScene` hooks the scene into the ``franka`` robot from outside (``--robot.sim=slide``); the
robot driver itself talks to franky only. Imports of ``mujoco`` and ``franky_sim`` happen inside
:meth:`SlideSim.start`.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

# Running simulators by host, so a sim camera or a robot in the same process can find its scene.
RUNNING: dict[str, SlideSim] = {}


@dataclass
class SlideTaskConfig:
    """Geometry of the Slide task (robot base at the origin, table surface at z = 0, metres)."""

    block_radius: float = 0.03
    block_half_height: float = 0.02
    block_mass: float = 0.15
    target_xy: tuple[float, float] = (0.55, 0.12)
    # Initial block position is drawn uniformly in this box.
    block_x_range: tuple[float, float] = (0.48, 0.62)
    block_y_range: tuple[float, float] = (-0.10, -0.05)
    success_radius: float = 0.03
    # TCP start position of every episode (and of a robot connecting with sim="slide")
    start_xyz: tuple[float, float, float] = (0.50, 0.0, 0.15)
    # Pushing height of the TCP (closed fingers) and a safe travel height above the block.
    push_z: float = 0.025
    hover_z: float = 0.10
    # Extent of the top-down camera image (x range, y range) in metres.
    view_x: tuple[float, float] = (0.30, 0.80)
    view_y: tuple[float, float] = (-0.25, 0.25)


@dataclass
class _Request:
    kind: str
    payload: object = None
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None


class SlideSim:
    """franky-sim server with the Slide scene, run in a daemon thread of this process."""

    def __init__(self, host: str = "127.0.0.1", task: SlideTaskConfig | None = None, seed: int = 0):
        self.host = host
        self.task = task or SlideTaskConfig()
        self.rng = np.random.default_rng(seed)
        self._sim = None
        self._server = None
        self._requests: list[_Request] = []
        self._lock = threading.Lock()
        self._block_qpos = None
        self._block_qvel = None
        self.started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SlideSim:
        if self.host in RUNNING:
            raise RuntimeError(f"a franky-sim server is already running on {self.host} in this process")
        import xml.etree.ElementTree as ET

        import mujoco
        from franky_sim import SimulationServer
        from franky_sim.mujoco_simulator import MujocoSimulator

        logging.getLogger("franky_sim").setLevel(max(logging.WARNING, logging.getLogger("franky_sim").level))
        t = self.task
        sim = MujocoSimulator(enable_visualization=False)
        sim.init()
        sim.add_robot()
        wb = sim.worldbody
        bx, by = self._sample_block_xy()
        block = ET.SubElement(wb, "body", name="block", pos=f"{bx} {by} {t.block_half_height + 1e-3}")
        ET.SubElement(block, "freejoint", name="block_joint")
        ET.SubElement(
            block,
            "geom",
            name="block_geom",
            type="cylinder",
            size=f"{t.block_radius} {t.block_half_height}",
            mass=str(t.block_mass),
            friction="0.4 0.005 0.0001",
            rgba="0.85 0.2 0.2 1",
            condim="4",
        )
        ET.SubElement(
            wb,
            "geom",
            name="target_marker",
            type="cylinder",
            contype="0",
            conaffinity="0",
            size=f"{t.success_radius} 0.0005",
            pos=f"{t.target_xy[0]} {t.target_xy[1]} 0.0005",
            rgba="0.2 0.8 0.2 0.6",
        )
        server = SimulationServer(sim, hostname_candidates=[self.host])
        server.init()
        model = sim.model
        jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "block_joint")
        self._block_qpos = int(model.jnt_qposadr[jid])
        self._block_qvel = int(model.jnt_dofadr[jid])
        self._mujoco = mujoco
        sim.register_pre_step_callback(self._serve_requests)
        self._sim, self._server = sim, server
        server.run_async()
        RUNNING[self.host] = self
        self.started = True
        logger.info("franky-sim Slide scene serving on %s", self.host)
        return self

    def stop(self) -> None:
        """Stop the control loop and close the server sockets (idempotent)."""
        if self._server is not None:
            try:
                self._server.cleanup()
            finally:
                try:
                    self._sim.cleanup()
                except Exception:  # pragma: no cover - cleanup best effort
                    pass
                self._server = self._sim = None
        RUNNING.pop(self.host, None)
        self.started = False
        # unblock anybody still waiting
        with self._lock:
            for r in self._requests:
                r.done.set()
            self._requests.clear()

    def __enter__(self) -> SlideSim:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ sim-thread requests
    def _serve_requests(self, sim) -> None:
        if not self._requests:
            return
        with self._lock:
            reqs, self._requests = self._requests, []
        d = sim.data
        for r in reqs:
            try:
                if r.kind == "snapshot":
                    robot = sim.robots[0]
                    tcp = robot.kinematics(np.asarray(robot.inner_state.q)).translation.copy()
                    r.result = {
                        "block": d.qpos[self._block_qpos : self._block_qpos + 7].copy(),
                        "tcp": tcp,
                        "time": float(d.time),
                    }
                elif r.kind == "place_block":
                    x, y = r.payload
                    a = self._block_qpos
                    d.qpos[a : a + 7] = [x, y, self.task.block_half_height + 1e-3, 1.0, 0.0, 0.0, 0.0]
                    d.qvel[self._block_qvel : self._block_qvel + 6] = 0.0
                    self._mujoco.mj_forward(sim.model, d)
            finally:
                r.done.set()

    def _call(self, kind: str, payload=None, timeout: float = 5.0):
        if not self.started:
            raise RuntimeError("SlideSim is not running")
        r = _Request(kind, payload)
        with self._lock:
            self._requests.append(r)
        if not r.done.wait(timeout):
            raise TimeoutError(f"franky-sim did not serve '{kind}' within {timeout}s")
        return r.result

    # ------------------------------------------------------------------ task API
    def _sample_block_xy(self) -> tuple[float, float]:
        t = self.task
        return (float(self.rng.uniform(*t.block_x_range)), float(self.rng.uniform(*t.block_y_range)))

    def snapshot(self) -> dict:
        """Block pose (x,y,z,qw,qx,qy,qz), TCP position and sim time, copied between two physics steps."""
        return self._call("snapshot")

    def block_xy(self) -> np.ndarray:
        return np.asarray(self.snapshot()["block"][:2], dtype=np.float64)

    def render(self, height: int = 96, width: int = 96) -> np.ndarray:
        s = self.snapshot()
        return render_topdown(self.task, s["block"][:2], s["tcp"][:2], height, width)

    def place_block(self, xy: tuple[float, float] | None = None) -> tuple[float, float]:
        """Put the block at ``xy`` (a new random position when None), at rest."""
        xy = self._sample_block_xy() if xy is None else (float(xy[0]), float(xy[1]))
        self._call("place_block", xy)
        return xy

    def distance_to_target(self, block_xy: np.ndarray | None = None) -> float:
        b = self.block_xy() if block_xy is None else block_xy
        return float(math.hypot(b[0] - self.task.target_xy[0], b[1] - self.task.target_xy[1]))

    def is_success(self, block_xy: np.ndarray | None = None) -> bool:
        return self.distance_to_target(block_xy) <= self.task.success_radius


class SlideScene:
    """The Slide task hooked into a :class:`~cdp_plugin.franka.franka.Franka` robot (``--robot.sim=slide``).

    A :class:`~cdp_plugin.franka.franka.FrankaScene`: ``start`` runs the franky-sim Slide scene on the
    robot's address (or attaches to one already running there in this process, which it then leaves
    running), ``on_connect`` moves the arm to where the demonstrations start (TCP above the table, gripper
    closed), ``observe`` adds the puck position ``block_{x,y}.pos`` (privileged simulator state), ``stop``
    stops a simulator this scene started. ``sim`` is the :class:`SlideSim` while started.
    """

    observation_features: dict[str, type] = {"block_x.pos": float, "block_y.pos": float}

    def __init__(self, config):
        self.host, self.seed = config.ip, config.sim_seed
        self.sim: SlideSim | None = None
        self._owned = False

    def start(self) -> None:
        if self.sim is not None and self.sim.started:
            return
        running = RUNNING.get(self.host)
        self._owned = running is None
        self.sim = SlideSim(host=self.host, seed=self.seed).start() if running is None else running

    def on_connect(self, robot) -> None:
        robot.move_ee(self.sim.task.start_xyz)
        robot.gripper_move(0.0)

    def observe(self) -> dict[str, float]:
        bxy = self.sim.block_xy()
        return {"block_x.pos": float(bxy[0]), "block_y.pos": float(bxy[1])}

    def stop(self) -> None:
        if self._owned and self.sim is not None:
            self.sim.stop()
        self.sim, self._owned = None, False


def render_topdown(task: SlideTaskConfig, block_xy, ee_xy, height: int = 96, width: int = 96) -> np.ndarray:
    """A schematic top-down RGB view (uint8 HWC): table grey, target green, block red, gripper blue.

    Image rows run along +x (away from the robot), columns along +y. No OpenGL needed.
    """
    xs = np.linspace(task.view_x[0], task.view_x[1], height)[:, None]
    ys = np.linspace(task.view_y[0], task.view_y[1], width)[None, :]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[...] = (90, 90, 90)

    def disc(c, r, color):
        m = (xs - c[0]) ** 2 + (ys - c[1]) ** 2 <= r * r
        img[m] = color

    disc(task.target_xy, task.success_radius, (40, 200, 40))
    disc(block_xy, task.block_radius, (220, 40, 40))
    disc(ee_xy, 0.015, (40, 80, 230))
    return img

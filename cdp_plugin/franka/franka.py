"""LeRobot ``Robot`` for Franka Panda / FR3 arms, built on franky (libfranka).

Observation (floats, in this order): ``joint_{1..7}.pos`` (rad), ``joint_{1..7}.vel`` (rad/s), TCP pose
``ee_{x,y,z}.pos`` (m) and ``ee_{qx,qy,qz,qw}.pos`` (unit quaternion, sign fixed to the hemisphere of the
pointing-down orientation), ``gripper.pos`` (finger width, m), then the keys of the robot's scene (if any,
see below), then one ``(H, W, 3)`` image per configured camera.

Action (``action_space``): ``ee_pos`` -> ``ee_{x,y,z}.pos`` absolute TCP target (orientation held);
``ee_delta`` -> ``ee_{dx,dy,dz}.pos`` TCP displacement for this step; ``ee_pose`` -> absolute position and
quaternion; ``joint`` -> ``joint_{1..7}.pos``; each followed by ``gripper.pos`` when ``use_gripper``.
Every key ends in ``.pos``/``.vel`` because ``lerobot-rollout`` only forwards such keys.

Each ``send_action`` issues one asynchronous franky motion to the (safety-checked) target; the next
command takes over seamlessly, so the arm tracks a policy running at the LeRobot control rate.

Safety: targets are clamped into the workspace box and to per-step motion limits (with a warning). An
absolute target far from the measured pose is clamped, never aborted: how far the arm lags behind its
targets depends on how fast the control loop runs, so a slow (busy) machine must not turn into a safety
stop. A non-finite, malformed or grossly out-of-range action (beyond the workspace box by more than
``abort_margin``, outside the joint limits, an ``ee_delta`` step above ``abort_factor`` x the step limit)
stops the arm and raises :class:`FrankaSafetyError` (the robot then refuses actions until
:meth:`Franka.recover`). Any other exception, including ``KeyboardInterrupt``, inside ``send_action`` stops
the arm before propagating. Every franky/libfranka call the robot makes is wrapped: its errors (a lost
link included, which franky reports as a plain ``RuntimeError``) are re-raised as
:class:`FrankaControlError`. ``disconnect`` always stops the arm and closes the connection; ``connect``
again (or :meth:`Franka.recover`) resumes after an error.

Scenes: the driver talks to franky only. Whatever else a setup observes (a simulated scene, an object
tracker) hooks in from outside as a :class:`FrankaScene`: passed to ``Franka(config, scene=...)`` or named
by ``config.sim`` (``--robot.sim=slide``), which :data:`~cdp_plugin.franka.config_franka.SIM_SCENES`
resolves to a factory (the Slide task's is :class:`cdp_plugin.franka.sim.SlideScene`).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Protocol

import numpy as np
from lerobot.cameras import make_cameras_from_configs
from lerobot.robots import Robot
from lerobot.utils.errors import DeviceAlreadyConnectedError, DeviceNotConnectedError

from .config_franka import FR3_Q_MAX, FR3_Q_MIN, SIM_SCENES, FrankaConfig

logger = logging.getLogger(__name__)

JOINTS = [f"joint_{i}" for i in range(1, 8)]
EE_POS = ["ee_x.pos", "ee_y.pos", "ee_z.pos"]
EE_QUAT = ["ee_qx.pos", "ee_qy.pos", "ee_qz.pos", "ee_qw.pos"]
EE_DELTA = ["ee_dx.pos", "ee_dy.pos", "ee_dz.pos"]
GRIPPER = "gripper.pos"
_DEAD_CLIENTS: list = []  # franky clients of broken connections (see Franka._close)
# TCP pointing straight down (180 deg about x), quaternion (x, y, z, w)
_DOWN_QUAT = np.array([1.0, 0.0, 0.0, 0.0])


class FrankaSafetyError(RuntimeError):
    """An action was rejected by the safety layer; the arm has been stopped."""


class FrankaControlError(RuntimeError):
    """franky / libfranka reported an error; the arm has been stopped. Call ``recover()`` or reconnect."""


class FrankaScene(Protocol):
    """What a :class:`Franka` robot hosts besides the arm (e.g. a simulated scene); the driver calls only
    these.

    ``observation_features`` are added to the robot's observation (floats named ``*.pos``/``*.vel`` reach
    ``lerobot-rollout``). ``start`` runs before franky connects (a simulator starts serving the robot's
    address), ``on_connect`` once the robot is connected (e.g. move to the task's start pose), ``observe``
    with every observation, ``stop`` after the robot disconnected (not across :meth:`Franka.reconnect`).
    """

    observation_features: dict[str, type]

    def start(self) -> None: ...

    def on_connect(self, robot: Franka) -> None: ...

    def observe(self) -> dict[str, float]: ...

    def stop(self) -> None: ...


def make_scene(config: FrankaConfig) -> FrankaScene | None:
    """The scene ``config.sim`` names (:data:`~cdp_plugin.franka.config_franka.SIM_SCENES`), or None."""
    if config.sim is None:
        return None
    module, name = SIM_SCENES[config.sim].split(":")
    return getattr(importlib.import_module(module), name)(config)


def _is_link_error(franky, e: BaseException) -> bool:
    """A lost connection: franky's NetworkException, or libfranka's network errors that arrive as plain
    ``RuntimeError`` ("Net Exception", "UDP receive: Timeout", TCP errors)."""
    return isinstance(e, franky.NetworkException) or any(w in str(e) for w in ("Net", "UDP", "TCP"))


def _canonical_quat(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q)
    return -q if float(np.dot(q, _DOWN_QUAT)) < 0 else q


def _quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.arccos(np.clip(abs(float(np.dot(a, b))), 0.0, 1.0)))


def _slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    if float(np.dot(a, b)) < 0:
        b = -b
    omega = np.arccos(np.clip(float(np.dot(a, b)), -1.0, 1.0))
    if omega < 1e-8:
        return a
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


class Franka(Robot):
    config_class = FrankaConfig
    name = "franka"

    def __init__(self, config: FrankaConfig, scene: FrankaScene | None = None):
        super().__init__(config)
        self.config = config
        self.cameras = make_cameras_from_configs(config.cameras)
        self.scene = scene if scene is not None else make_scene(config)
        self._scene_started = False
        self._franky = None
        self._robot = None
        self._gripper = None
        self._hold_quat = _DOWN_QUAT.copy()
        self._gripper_cmd: float | None = None
        self._gripper_future = None
        self._link_broken = False  # a network error was seen: do not wait on the gripper when closing
        self._last_kind: str | None = None
        self.fault: str | None = None
        self.warnings: list[str] = []  # clamping notices of the last send_action (also logged)
        # telemetry since connect: actions sent, TCP path length seen by get_observation
        self.n_actions = 0
        self.tcp_path = 0.0
        self._last_obs_p: np.ndarray | None = None

    # ------------------------------------------------------------------ features
    @cached_property
    def observation_features(self) -> dict[str, type | tuple]:
        ft: dict[str, type | tuple] = {f"{j}.pos": float for j in JOINTS}
        ft.update({f"{j}.vel": float for j in JOINTS})
        ft.update(dict.fromkeys(EE_POS + EE_QUAT, float))
        if self.config.use_gripper:
            ft[GRIPPER] = float
        if self.scene is not None:
            ft.update(self.scene.observation_features)
        for name, cam in self.config.cameras.items():
            ft[name] = (cam.height, cam.width, 3)
        return ft

    @cached_property
    def action_features(self) -> dict[str, type]:
        keys = {
            "ee_pos": EE_POS,
            "ee_delta": EE_DELTA,
            "ee_pose": EE_POS + EE_QUAT,
            "joint": [f"{j}.pos" for j in JOINTS],
        }[self.config.action_space]
        ft = dict.fromkeys(keys, float)
        if self.config.use_gripper:
            ft[GRIPPER] = float
        return ft

    # ------------------------------------------------------------------ connection
    @property
    def is_connected(self) -> bool:
        return self._robot is not None and all(c.is_connected for c in self.cameras.values())

    @property
    def is_calibrated(self) -> bool:
        return True  # the arm is factory calibrated

    def calibrate(self) -> None:
        pass

    def connect(self, calibrate: bool = True) -> None:
        if self._robot is not None:
            raise DeviceAlreadyConnectedError(f"{self} already connected")
        import franky  # lazy: registration of the robot type must stay cheap

        self._franky = franky
        cfg = self.config
        try:
            if self.scene is not None and not self._scene_started:
                self.scene.start()
                self._scene_started = True
            rt = franky.RealtimeConfig.Enforce if cfg.realtime == "enforce" else franky.RealtimeConfig.Ignore
            with self._franky_calls(f"connecting to {cfg.ip}"):
                self._robot = franky.Robot(
                    cfg.ip,
                    relative_dynamics_factor=cfg.dynamics_factor,
                    default_torque_threshold=cfg.torque_threshold,
                    default_force_threshold=cfg.force_threshold,
                    realtime_config=rt,
                )
                if cfg.use_gripper:
                    self._gripper = franky.Gripper(cfg.ip)
            for cam in self.cameras.values():
                cam.connect()
            self.configure()
            if self.scene is not None:
                self.scene.on_connect(self)
        except BaseException:
            self._close()
            raise
        logger.info("%s connected to %s", self, cfg.ip)

    def configure(self) -> None:
        with self._franky_calls("configuring the robot"):
            if self.config.recover_on_connect and self._robot.has_errors:
                self._robot.recover_from_errors()
            self._robot.relative_dynamics_factor = self.config.dynamics_factor
        self._sync_targets()
        self.fault = None
        self.n_actions, self.tcp_path, self._last_obs_p = 0, 0.0, None

    def _sync_targets(self) -> None:
        with self._franky_calls("reading the robot state"):
            pose = self._robot.current_cartesian_state.pose.end_effector_pose
            self._hold_quat = _canonical_quat(np.asarray(pose.quaternion))
            self._gripper_cmd = float(self._gripper.width) if self._gripper is not None else None
        self._last_kind = None

    def disconnect(self) -> None:
        """Stop the arm and close the connection (never raises for an already broken link)."""
        if self._robot is None and not self._scene_started:
            raise DeviceNotConnectedError(f"{self} is not connected")
        self._stop_arm()
        self._close()
        logger.info("%s disconnected: %d actions sent, TCP path %.3f m", self, self.n_actions, self.tcp_path)

    def _close(self, keep_scene: bool = False) -> None:
        for cam in self.cameras.values():
            try:
                if cam.is_connected:
                    cam.disconnect()
            except Exception as e:  # pragma: no cover
                logger.warning("camera disconnect failed: %s", e)
        if self._gripper_future is not None and not self._link_broken:
            # a gripper move is short (< 2 s); let it finish before the client is destroyed
            deadline = time.monotonic() + 3.0
            try:
                while not self._gripper_future.wait(0.0) and time.monotonic() < deadline:
                    time.sleep(0.02)
            except BaseException:  # noqa: BLE001
                pass
        self._gripper_future = None
        if self._robot is not None:
            # let a (failing) motion thread end first: destroying the client joins it
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                try:
                    if not self._robot.is_in_control:
                        break
                    self._robot.join_motion(0.5)
                except BaseException:  # noqa: BLE001 - the motion's own error, already reported
                    pass
        if self._link_broken:
            # destroying a client whose control thread still waits on a dead link blocks (with the GIL)
            # until libfranka gives up; park it and let it go later instead of blocking disconnect()
            _DEAD_CLIENTS.append((self._robot, self._gripper))
        self._robot = None  # libfranka closes the connection when the object is destroyed
        self._gripper = None
        self._link_broken = False
        if self.scene is not None and self._scene_started and not keep_scene:
            self._scene_started = False
            self.scene.stop()

    def reconnect(self) -> None:
        """Close and reopen the connection (e.g. after a network or controller error); the scene stays."""
        if self._robot is not None:
            self._stop_arm()
        self._close(keep_scene=True)
        self.connect()

    def recover(self) -> None:
        """Run libfranka's automatic error recovery and re-arm after a safety stop."""
        self._check_connected()
        with self._franky_calls("libfranka error recovery"):
            self._robot.recover_from_errors()
        self._sync_targets()
        self.fault = None

    # ------------------------------------------------------------------ observation
    def _check_connected(self) -> None:
        if self._robot is None:
            raise DeviceNotConnectedError(f"{self} is not connected")
        if self._link_broken:  # nothing can be read or commanded over a dead link
            raise FrankaControlError(
                f"{self} ({self.config.ip}): the connection is lost (libfranka network "
                "error); call disconnect() and connect() again (or reconnect())"
            )

    @contextmanager
    def _franky_calls(self, what: str) -> Iterator[None]:
        """Re-raise any error of the franky calls in the block as :class:`FrankaControlError` naming ``what``.

        The plugin's own errors and ``KeyboardInterrupt`` pass through unchanged. A lost link (see
        :func:`_is_link_error`) is remembered, so that stopping and closing do not wait on a dead connection.
        """
        try:
            yield
        except (FrankaSafetyError, FrankaControlError, DeviceNotConnectedError):
            raise
        except Exception as e:
            if self._franky is not None and _is_link_error(self._franky, e):
                self._link_broken = True
                hint = "the connection is lost: call disconnect() and connect() again (or reconnect())"
            else:
                hint = "call recover() (libfranka's automatic error recovery) or reconnect()"
            raise FrankaControlError(
                f"{self} ({self.config.ip}): {what} failed: franky/libfranka reported "
                f"{type(e).__name__}: {e}; {hint}"
            ) from e

    def get_observation(self) -> dict[str, Any]:
        self._check_connected()
        with self._franky_calls("reading the robot state"):
            st = self._robot.state
            q, dq = np.asarray(st.q), np.asarray(st.dq)
            pose = st.O_T_EE
            pos, quat = np.asarray(pose.translation), _canonical_quat(np.asarray(pose.quaternion))
            width = float(self._gripper.width) if self._gripper is not None else None
        if self._last_obs_p is not None:
            self.tcp_path += float(np.linalg.norm(pos - self._last_obs_p))
        self._last_obs_p = pos.copy()
        obs: dict[str, Any] = {}
        for i, j in enumerate(JOINTS):
            obs[f"{j}.pos"] = float(q[i])
        for i, j in enumerate(JOINTS):
            obs[f"{j}.vel"] = float(dq[i])
        for k, v in zip(EE_POS, pos, strict=True):
            obs[k] = float(v)
        for k, v in zip(EE_QUAT, quat, strict=True):
            obs[k] = float(v)
        if self.config.use_gripper:
            obs[GRIPPER] = width
        if self.scene is not None:
            obs.update(self.scene.observe())
        for name, cam in self.cameras.items():
            obs[name] = cam.read_latest()
        return obs

    # ------------------------------------------------------------------ action
    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        self._check_connected()
        if self.fault is not None:
            raise FrankaSafetyError(
                f"{self} is stopped after a fault ({self.fault}); call recover() or reconnect() first"
            )
        self.warnings = []
        try:
            with self._franky_calls("sending the action"):
                sent = self._send(action)
            self.n_actions += 1
            return sent
        except (FrankaSafetyError, FrankaControlError) as e:
            self._stop_arm()
            self.fault = str(e)
            raise
        except BaseException:  # KeyboardInterrupt included: never leave a motion running
            self._stop_arm()
            raise

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        logger.warning("%s: %s", self, msg)

    def _values(self, action: dict[str, Any], keys: list[str]) -> np.ndarray:
        try:
            v = np.array([float(action[k]) for k in keys], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise FrankaSafetyError(f"malformed action (need keys {keys}): {e!r}") from e
        if not np.all(np.isfinite(v)):
            raise FrankaSafetyError(f"non-finite action {dict(zip(keys, v.tolist(), strict=True))}")
        return v

    def _send(self, action: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        keys = [k for k in self.action_features if k != GRIPPER]
        mode = cfg.action_space
        if not all(k in action for k in keys):
            # Absolute fallbacks (e.g. lerobot-rollout's return-to-initial-position sends observation keys)
            if all(k in action for k in EE_POS) and mode != "joint":
                mode, keys = "ee_pos", EE_POS
            elif all(f"{j}.pos" in action for j in JOINTS):
                mode, keys = "joint", [f"{j}.pos" for j in JOINTS]
        vals = self._values(action, keys)
        g = None
        if cfg.use_gripper and GRIPPER in action:
            g = float(self._values(action, [GRIPPER])[0])
            if not -0.02 <= g <= cfg.gripper_max_width + 0.02:
                raise FrankaSafetyError(f"gripper width {g:.4f} m outside [0, {cfg.gripper_max_width}]")

        # the previous asynchronous motion may have failed: surface its exception now
        self._robot.poll_motion()
        sent: dict[str, Any] = {}
        if mode == "joint":
            q = self._joint_target(vals)
            self._move("joint", self._franky.JointMotion(q.tolist()))
            sent.update({k: float(v) for k, v in zip(keys, q, strict=True)})
        else:
            cur = self._robot.current_cartesian_state.pose.end_effector_pose
            cur_p = np.asarray(cur.translation)
            if mode == "ee_delta":
                # the commanded displacement itself (not a lag behind the arm): a gross one is an error
                if float(np.linalg.norm(vals)) > cfg.abort_factor * cfg.max_step_pos:
                    raise FrankaSafetyError(
                        f"TCP displacement {float(np.linalg.norm(vals)):.3f} m in one step (limit for abort "
                        f"{cfg.abort_factor * cfg.max_step_pos:.3f} m = abort_factor x max_step_pos)"
                    )
                p_req, quat = cur_p + vals, self._hold_quat
            elif mode == "ee_pose":
                p_req, quat = vals[:3], self._quat_target(vals[3:], np.asarray(cur.quaternion))
            else:
                p_req, quat = vals, self._hold_quat
            p = self._position_target(p_req, cur_p)
            aff = self._franky.Affine(p.tolist(), quat.tolist())
            self._move("cart", self._franky.CartesianMotion(aff, self._franky.ReferenceType.Absolute))
            if mode == "ee_delta":
                sent.update({k: float(v) for k, v in zip(EE_DELTA, p - cur_p, strict=True)})
            else:
                sent.update({k: float(v) for k, v in zip(EE_POS, p, strict=True)})
                if mode == "ee_pose":
                    sent.update({k: float(v) for k, v in zip(EE_QUAT, quat, strict=True)})
        if g is not None:
            gc = float(np.clip(g, 0.0, cfg.gripper_max_width))
            if gc != g:
                self._warn(f"gripper width {g:.4f} clamped to {gc:.4f}")
            if (self._gripper_cmd is None or abs(gc - self._gripper_cmd) > cfg.gripper_deadband) and (
                self._gripper_future is None or self._gripper_future.wait(0.0)
            ):  # one gripper command at a time; a newer target is sent once the previous one finished
                self._gripper_future = self._gripper.move_async(gc, cfg.gripper_speed)
                self._gripper_cmd = gc
            sent[GRIPPER] = gc
        return sent

    def _position_target(self, p_req: np.ndarray, cur_p: np.ndarray) -> np.ndarray:
        cfg = self.config
        lo, hi = np.asarray(cfg.workspace_min), np.asarray(cfg.workspace_max)
        if np.any(p_req < lo - cfg.abort_margin) or np.any(p_req > hi + cfg.abort_margin):
            raise FrankaSafetyError(
                f"TCP target {np.round(p_req, 4).tolist()} is more than {cfg.abort_margin} m outside the "
                f"workspace box {cfg.workspace_min}..{cfg.workspace_max}"
            )
        # A target far from the measured TCP is clamped below, never aborted: the distance includes how far
        # the arm lags behind its targets, which grows when the control loop runs slowly (a busy machine).
        p = np.clip(p_req, lo, hi)
        if not np.allclose(p, p_req):
            self._warn(
                f"TCP target {np.round(p_req, 4).tolist()} clamped into workspace -> "
                f"{np.round(p, 4).tolist()}"
            )
        d = p - cur_p
        n = float(np.linalg.norm(d))
        if n > cfg.max_step_pos:
            p = cur_p + d * (cfg.max_step_pos / n)
            self._warn(f"TCP step {n:.4f} m clamped to {cfg.max_step_pos} m")
        return p

    def _quat_target(self, q_req: np.ndarray, cur_q: np.ndarray) -> np.ndarray:
        cfg = self.config
        n = float(np.linalg.norm(q_req))
        if not 0.9 <= n <= 1.1:
            raise FrankaSafetyError(f"orientation quaternion has norm {n:.3f} (expected 1)")
        q = _canonical_quat(q_req)
        cur = _canonical_quat(cur_q)
        ang = _quat_angle(cur, q)  # far from the measured orientation: clamped, never aborted (see above)
        if ang > cfg.max_step_rot:
            q = _slerp(cur, q, cfg.max_step_rot / ang)
            self._warn(f"rotation step {ang:.3f} rad clamped to {cfg.max_step_rot} rad")
        return q

    def _joint_target(self, q_req: np.ndarray) -> np.ndarray:
        cfg = self.config
        qmin, qmax = np.asarray(FR3_Q_MIN), np.asarray(FR3_Q_MAX)
        if np.any(q_req < qmin - 0.1) or np.any(q_req > qmax + 0.1):
            raise FrankaSafetyError(f"joint target {np.round(q_req, 3).tolist()} outside the joint limits")
        cur = np.asarray(self._robot.current_joint_positions)  # a far target is clamped, never aborted
        q = np.clip(q_req, qmin + cfg.joint_limit_margin, qmax - cfg.joint_limit_margin)
        if not np.allclose(q, q_req):
            self._warn("joint target clamped to the joint limits")
        d = np.clip(q - cur, -cfg.max_step_joint, cfg.max_step_joint)
        if not np.allclose(d, q - cur):
            self._warn(f"joint step clamped to {cfg.max_step_joint} rad")
        return cur + d

    def _move(self, kind: str, motion) -> None:
        if self._last_kind is not None and kind != self._last_kind and self._robot.poll_motion():
            # the control signal type may not change while a motion runs: let the previous one finish
            self._robot.join_motion(5.0)
        self._robot.move(motion, asynchronous=True)
        self._last_kind = kind

    # ------------------------------------------------------------------ helpers
    def _stop_arm(self) -> None:
        """Bring the arm to rest; swallow errors of an already broken connection."""
        if self._robot is None:
            return
        if self._link_broken:
            # nothing can be commanded over a dead link; the controller stops the arm on its own when
            # packets stop arriving (libfranka communication_constraints_violation reflex)
            logger.warning("%s: connection lost, the controller stops the arm by itself", self)
            return
        f = self._franky
        try:
            if self._robot.is_in_control:
                stop = f.JointStopMotion() if self._last_kind == "joint" else f.CartesianStopMotion()
                self._robot.move(stop, asynchronous=True)
                if not self._robot.join_motion(3.0):
                    self._robot.stop()
        except BaseException as e:  # noqa: BLE001 - stopping must not raise
            logger.warning("%s: stop motion failed (%s); calling libfranka stop()", self, e)
            try:
                self._robot.stop()
                self._robot.join_motion(1.0)
            except BaseException:  # noqa: BLE001
                pass

    def wait_until_still(self, timeout: float = 5.0) -> bool:
        """Block until the current motion finished (True) or the timeout passed (False)."""
        self._check_connected()
        with self._franky_calls("waiting for the motion"):
            return bool(self._robot.join_motion(timeout))

    def move_home(self, joints: list[float] | None = None, timeout: float = 20.0) -> None:
        """Move to ``home_joints`` (blocking, at the configured dynamics factor)."""
        self._check_connected()
        q = self.config.home_joints if joints is None else joints
        try:
            with self._franky_calls("move_home"):
                if self._robot.poll_motion():
                    self._robot.join_motion(5.0)
                self._robot.move(self._franky.JointMotion(list(q)), asynchronous=True)
                self._last_kind = "joint"
                if not self._robot.join_motion(timeout):
                    raise FrankaControlError(f"move_home did not finish within {timeout}s")
        except BaseException:
            self._stop_arm()
            raise
        self._sync_targets()

    def move_ee(self, xyz, timeout: float = 20.0) -> None:
        """Move the TCP to ``xyz`` with the held orientation (blocking), bypassing the per-step limit."""
        self._check_connected()
        lo, hi = np.asarray(self.config.workspace_min), np.asarray(self.config.workspace_max)
        p = np.clip(np.asarray(xyz, dtype=np.float64), lo, hi)
        try:
            with self._franky_calls("move_ee"):
                if self._robot.poll_motion():
                    self._robot.join_motion(5.0)
                aff = self._franky.Affine(p.tolist(), self._hold_quat.tolist())
                motion = self._franky.CartesianMotion(aff, self._franky.ReferenceType.Absolute)
                self._robot.move(motion, asynchronous=True)
                self._last_kind = "cart"
                if not self._robot.join_motion(timeout):
                    raise FrankaControlError(f"move_ee did not finish within {timeout}s")
        except BaseException:
            self._stop_arm()
            raise

    def _wait_gripper(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._gripper_future is not None and not self._gripper_future.wait(0.0):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def gripper_move(self, width: float, timeout: float = 5.0) -> None:
        """Move the gripper to ``width`` (blocking)."""
        self._check_connected()
        if self._gripper is None:
            return
        w = float(np.clip(width, 0.0, self.config.gripper_max_width))
        with self._franky_calls("gripper_move"):
            self._wait_gripper(timeout)
            self._gripper_future = self._gripper.move_async(w, self.config.gripper_speed)
            if not self._wait_gripper(timeout):
                raise FrankaControlError(f"gripper did not reach {w:.3f} m within {timeout}s")
        self._gripper_cmd = w

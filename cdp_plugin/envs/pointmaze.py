"""Goal-conditioned PointMaze (gymnasium-robotics) in LeRobot's observation format, and its D4RL-style expert.

The environment wraps :class:`gymnasium_robotics.envs.maze.point_maze.PointMazeEnv` with
``continuing_task=False`` (the episode terminates when the ball is within 0.45 of the goal) and exposes the
keys LeRobot's ``preprocess_observation`` understands:

- ``agent_pos`` -> ``observation.state``: ball ``[x, y, vx, vy]``,
- ``environment_state`` -> ``observation.environment_state``: the goal ``[gx, gy]``,
- ``pixels`` -> ``observation.image`` (optional): a top-down image drawn with numpy (no OpenGL needed).

The expert follows the D4RL maze2d recipe: a grid planner gives a path of cell-centre waypoints and a PD
controller tracks them. Where several shortest paths exist, the expert samples one uniformly per episode, so
demonstrations are multimodal (the default ``TwoRoutes`` map has two equally short routes around a central
wall for a third of its start/goal pairs).
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

R, G, C = "r", "g", "c"

# A 5x7 maze with a wall block in the middle: starts in the left column, goals in the right column.
# Middle-to-middle and corner-to-opposite-corner pairs have two equally short routes (over or under the wall).
TWO_ROUTES = [
    [1, 1, 1, 1, 1, 1, 1],
    [1, R, 0, 0, 0, G, 1],
    [1, R, 1, 1, 1, G, 1],
    [1, R, 0, 0, 0, G, 1],
    [1, 1, 1, 1, 1, 1, 1],
]


def maze_map(name: str) -> list[list]:
    """Return a maze layout by name: ``TwoRoutes`` or a gymnasium-robotics map (``UMaze``, ``Medium``, ``Large``,
    ``Open``; the goal-conditioned ``*_DIVERSE_GR`` variants where they exist)."""
    from gymnasium_robotics.envs.maze import maps

    table = {
        "TwoRoutes": TWO_ROUTES,
        "UMaze": maps.U_MAZE,
        "Open": maps.OPEN_DIVERSE_GR,
        "Medium": maps.MEDIUM_MAZE_DIVERSE_GR,
        "Large": maps.LARGE_MAZE_DIVERSE_GR,
    }
    if name not in table:
        raise ValueError(f"Unknown PointMaze map {name!r}; choose one of {sorted(table)}")
    return table[name]


class PointMazeEnv(gym.Env):
    """PointMaze with LeRobot observation keys, ``is_success`` in ``info``, and a numpy top-down renderer."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str = "TwoRoutes",
        obs_type: str = "state",
        frame_skip: int = 2,
        observation_height: int = 96,
        observation_width: int = 96,
        render_mode: str = "rgb_array",
        position_noise_range: float = 0.25,
    ):
        from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv as _GRPointMaze

        if obs_type not in ("state", "pixels_state"):
            raise ValueError(f"obs_type must be 'state' or 'pixels_state', got {obs_type!r}")
        self.task = task
        self.task_description = f"reach the goal in the {task} maze"
        self.obs_type = obs_type
        self.frame_skip = frame_skip
        self.render_mode = render_mode
        self.height, self.width = observation_height, observation_width
        self._map = maze_map(task)
        self._env = _GRPointMaze(
            maze_map=self._map,
            continuing_task=False,
            reset_target=False,
        )
        self._env.position_noise_range = position_noise_range
        self.metadata = {**self.metadata, "render_fps": round(1.0 / (self._env.point_env.dt * frame_skip))}
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        obs_spaces = {
            "agent_pos": spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64),
            "environment_state": spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64),
        }
        if obs_type == "pixels_state":
            obs_spaces["pixels"] = spaces.Box(0, 255, shape=(self.height, self.width, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self._last = None

    # -- geometry ---------------------------------------------------------------------------------------
    @property
    def maze(self):
        return self._env.maze

    @property
    def fps(self) -> int:
        return self.metadata["render_fps"]

    def _obs(self, d: dict) -> dict:
        self._last = d
        obs = {"agent_pos": d["observation"].copy(), "environment_state": d["desired_goal"].copy()}
        if self.obs_type == "pixels_state":
            obs["pixels"] = self.render()
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        opts = {k: v for k, v in (options or {}).items() if k in ("goal_cell", "reset_cell")} or None
        d, info = self._env.reset(seed=seed, options=opts)
        info = {"is_success": bool(info["success"])}
        return self._obs(d), info

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        reward, terminated, truncated = 0.0, False, False
        for _ in range(self.frame_skip):
            d, r, term, trunc, info = self._env.step(action)
            reward += float(r)
            terminated |= bool(term)
            truncated |= bool(trunc)
            if terminated:
                break
        return self._obs(d), reward, terminated, truncated, {"is_success": bool(info["success"])}

    def render(self) -> np.ndarray:
        """Top-down RGB image: walls dark, floor light, goal green, ball blue."""
        m = np.asarray([[1 if c == 1 else 0 for c in row] for row in self._map], dtype=bool)
        rows, cols = m.shape
        scale = min(self.height / rows, self.width / cols)
        off_y, off_x = (self.height - rows * scale) / 2, (self.width - cols * scale) / 2
        yy, xx = np.mgrid[0 : self.height, 0 : self.width] + 0.5
        r = np.floor((yy - off_y) / scale).astype(int)
        c = np.floor((xx - off_x) / scale).astype(int)
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        img = np.full((self.height, self.width, 3), 40, dtype=np.uint8)
        floor = inside & ~m[np.clip(r, 0, rows - 1), np.clip(c, 0, cols - 1)]
        img[floor] = (225, 225, 215)

        def to_px(xy):  # world (x, y) -> pixel (row, col); cell (i, j) centre is at x=(j+.5)-cx, y=cy-(i+.5)
            j = xy[0] + self.maze.x_map_center
            i = self.maze.y_map_center - xy[1]
            return off_y + i * scale, off_x + j * scale

        if self._last is not None:
            for xy, rad, color in (
                (self._last["desired_goal"], 0.45, (60, 180, 75)),
                (self._last["achieved_goal"], 0.1, (30, 80, 220)),
            ):
                pr, pc = to_px(xy)
                img[(yy - pr) ** 2 + (xx - pc) ** 2 <= (rad * scale) ** 2] = color
        return img

    def close(self):
        self._env.close()


class PointMazeExpert:
    """D4RL maze2d expert: BFS waypoint planner over maze cells plus a PD controller.

    ``reset`` plans a shortest cell path from the ball to the goal, breaking ties between equally short paths
    uniformly at random with ``rng`` (one route per episode). ``act`` returns
    ``clip(kp * (waypoint - pos) - kd * vel + noise, -1, 1)``; the waypoint advances when the ball is within
    ``switch_dist`` of it, and the last waypoint is the goal itself.
    """

    def __init__(
        self,
        env: PointMazeEnv,
        rng: np.random.Generator,
        noise: float = 0.0,
        kp: float = 10.0,
        kd: float = 1.0,
        switch_dist: float = 0.3,
    ):
        self.env, self.rng, self.noise = env, rng, noise
        self.kp, self.kd, self.switch_dist = kp, kd, switch_dist
        self.waypoints: list[np.ndarray] = []

    def _free(self, cell) -> bool:
        i, j = cell
        m = self.env.maze.maze_map
        return 0 <= i < len(m) and 0 <= j < len(m[0]) and m[i][j] != 1

    def plan(self, start_xy: np.ndarray, goal_xy: np.ndarray) -> list[tuple[int, int]]:
        """A shortest 4-connected cell path from start to goal, ties broken at random."""
        maze = self.env.maze
        start = tuple(int(v) for v in maze.cell_xy_to_rowcol(start_xy))
        goal = tuple(int(v) for v in maze.cell_xy_to_rowcol(goal_xy))
        dist = {goal: 0}
        queue = deque([goal])
        while queue:
            cur = queue.popleft()
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nxt = (cur[0] + di, cur[1] + dj)
                if self._free(nxt) and nxt not in dist:
                    dist[nxt] = dist[cur] + 1
                    queue.append(nxt)
        if start not in dist:
            raise RuntimeError(f"no path from cell {start} to goal cell {goal}")
        path = [start]
        while path[-1] != goal:
            i, j = path[-1]
            nexts = [
                (i + di, j + dj)
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if dist.get((i + di, j + dj), -1) == dist[path[-1]] - 1
            ]
            path.append(nexts[self.rng.integers(len(nexts))])
        return path

    def reset(self, obs: dict) -> None:
        pos, goal = obs["agent_pos"][:2], obs["environment_state"]
        cells = self.plan(pos, goal)
        self.waypoints = [self.env.maze.cell_rowcol_to_xy(np.array(c)) for c in cells[1:-1]] + [goal.copy()]

    def act(self, obs: dict) -> np.ndarray:
        pos, vel = obs["agent_pos"][:2], obs["agent_pos"][2:]
        while len(self.waypoints) > 1 and np.linalg.norm(self.waypoints[0] - pos) < self.switch_dist:
            self.waypoints.pop(0)
        action = self.kp * (self.waypoints[0] - pos) - self.kd * vel
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def make_env_and_expert(sim_task: str, obs_type: str, rng: np.random.Generator, noise: float):
    """The task table's expert entry (:mod:`cdp_plugin.envs.tasks`): a PointMaze env and its expert."""
    env = PointMazeEnv(task=sim_task, obs_type=obs_type)
    return env, PointMazeExpert(env, rng, noise=noise)

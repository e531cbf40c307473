"""BabyAI (MiniGrid) behind pistar's language interface.

The text observation follows BALROG's BabyAI-Text: the mission, then every object in the agent's 7x7
egocentric view with its position relative to the agent ("a red ball 2 steps forward, 1 step left"), the
nearest wall straight ahead and on each side, and what the agent carries. It is built from the same
occluded view the agent gets (`gen_obs()["image"]`), so the model never learns about cells it cannot see.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import re
from typing import Any

import gymnasium
import minigrid  # noqa: F401 - importing registers the BabyAI-* levels with gymnasium
import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT
from minigrid.envs.babyai.core.levelgen import OBJ_TYPES_NOT_DOOR, LevelGen
from minigrid.envs.babyai.core.verifier import AfterInstr, BeforeInstr, GoToInstr, PickupInstr
from minigrid.utils.baby_ai_bot import BabyAIBot

from pistar.envs.base import Env, StepResult, steps
from pistar.records import Action, Observation

# BALROG's action set; minigrid's "done" is left out because BabyAI ends episodes on its own.
ACTIONS: dict[str, Actions] = {
    "turn left": Actions.left,
    "turn right": Actions.right,
    "go forward": Actions.forward,
    "pick up": Actions.pickup,
    "drop": Actions.drop,
    "toggle": Actions.toggle,
}
_ACTION_NAMES: dict[int, str] = {int(v): k for k, v in ACTIONS.items()}
_VALID_ACTIONS: list[str] = list(ACTIONS)

_DOOR_STATES = {0: "open", 1: "closed", 2: "locked"}
# Object codes of the view encoding (minigrid.core.constants.OBJECT_TO_IDX).
_UNSEEN, _EMPTY, _WALL, _FLOOR, _DOOR, _GOAL, _LAVA = 0, 1, 2, 3, 4, 8, 9


# BALROG's BabyAI-Text tasks: one instruction kind each, on a mixed local level (one room of 8x8 with 8
# distractors; two rooms with a door for "open"). "MixedTrainLocal" alone draws a kind per seed.
MIXED_KINDS = ("goto", "pickup", "open", "putnext", "pick_up_seq_go_to")


class MixedTrainLocal(LevelGen):
    """BALROG's MixedTrainLocal level, built on minigrid's LevelGen, with the instruction kind fixed or drawn."""

    def __init__(self, kind: str | None = None, **kwargs: Any) -> None:
        self.kind = kind
        two_rooms = kind == "open"
        super().__init__(
            room_size=8,
            num_rows=1,
            num_cols=2 if two_rooms else 1,
            num_dists=8,
            locked_room_prob=0,
            locations=False,
            unblocking=False,
            action_kinds=(kind,) if kind in ("goto", "pickup", "open", "putnext") else ("goto",),
            instr_kinds=("action",),
            **kwargs,
        )

    def gen_mission(self) -> None:
        kind = self.kind or self._rand_elem(MIXED_KINDS)
        if kind == "open" and self.num_cols == 1:  # the union level draws "open" but has one room: add a door
            kind = self._rand_elem(MIXED_KINDS[:2])
        self.action_kinds = (kind,) if kind != "pick_up_seq_go_to" else ("goto",)
        super().gen_mission()
        if kind == "pick_up_seq_go_to":
            pick, goto = PickupInstr(self.rand_obj(types=OBJ_TYPES_NOT_DOOR)), GoToInstr(self.rand_obj())
            self.instrs = BeforeInstr(pick, goto) if self._rand_bool() else AfterInstr(goto, pick)


for _kind in (None, *MIXED_KINDS):
    _suffix = "" if _kind is None else "".join(w.title() for w in _kind.split("_"))
    gymnasium.register(f"BabyAI-MixedTrainLocal{_suffix}-v0", entry_point=MixedTrainLocal, kwargs={"kind": _kind})


def _levels() -> dict[str, str]:
    """Short level name ("GoToLocal") -> gymnasium id ("BabyAI-GoToLocal-v0") for every registered level."""
    levels: dict[str, str] = {}
    for env_id in sorted(gymnasium.registry):
        if env_id.startswith("BabyAI-"):
            levels[re.sub(r"-v\d+$", "", env_id.removeprefix("BabyAI-"))] = env_id
    return levels


LEVELS: dict[str, str] = _levels()


def resolve_level(level: str) -> tuple[str, str]:
    """Accept "GoToLocal", "BabyAI-GoToLocal", "GoToLocal-v0" (any case), and BALROG's task names
    "MixedTrainLocal/goto" … "MixedTrainLocal/pick_up_seq_go_to"; return (short name, gym id)."""
    base, _, kind = level.strip().partition("/")
    if kind:
        if kind not in MIXED_KINDS or base.lower().removeprefix("babyai-") != "mixedtrainlocal":
            raise ValueError(f"unknown BabyAI task {level!r}: expected MixedTrainLocal/<{'|'.join(MIXED_KINDS)}>")
        return level.strip(), LEVELS["MixedTrainLocal" + "".join(w.title() for w in kind.split("_"))]
    short = re.sub(r"-v\d+$", "", level.strip()).removeprefix("BabyAI-")
    by_lower = {name.lower(): name for name in LEVELS}
    name = by_lower.get(short.lower().removeprefix("babyai-"))
    if name is None:
        close = difflib.get_close_matches(short, LEVELS, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"e.g. {', '.join(list(LEVELS)[:5])}"
        raise ValueError(f"unknown BabyAI level {level!r} ({len(LEVELS)} levels registered; {hint})")
    return name, LEVELS[name]


def _where(forward: int, lateral: int) -> str:
    """Position relative to the agent: forward distance first, then the left (<0) or right (>0) offset."""
    parts = []
    if forward:
        parts.append(steps(forward, "forward"))
    if lateral:
        parts.append(steps(abs(lateral), "left" if lateral < 0 else "right"))
    return ", ".join(parts)


def _name(code: int, color: int, state: int) -> str:
    obj = IDX_TO_OBJECT[code]
    if code == _DOOR:
        door_state = _DOOR_STATES.get(state, "closed")
        return f"{'an' if door_state == 'open' else 'a'} {door_state} {IDX_TO_COLOR[color]} door"
    if code == _GOAL:
        return "the goal square"
    if code == _LAVA:
        return "lava"
    return f"a {IDX_TO_COLOR[color]} {obj}"


def describe_view(image: np.ndarray) -> list[str]:
    """Describe an egocentric view encoding, one phrase per thing seen.

    `image[i, j]` is (object, colour, state) of view column i, row j. The agent stands at column
    `width // 2` of the bottom row, facing up (towards row 0); its left is column < width // 2. Cells
    hidden by walls or closed doors are encoded as unseen (0) and so never described. The agent's own
    cell holds what it carries, which is reported separately.
    """
    width, height = image.shape[0], image.shape[1]
    ax, ay = width // 2, height - 1
    cells: list[list[list[int]]] = image.tolist()

    objects: list[tuple[int, int, int, str]] = []
    codes = image[:, :, 0]
    for i, j in zip(*np.nonzero(codes > _FLOOR), strict=True):
        if i == ax and j == ay:
            continue
        code, color, state = cells[i][j]
        forward, lateral = ay - int(j), int(i) - ax
        objects.append((forward + abs(lateral), forward, lateral, _name(code, color, state)))
    objects.sort()
    phrases = [f"{what} {_where(forward, lateral)}" for _, forward, lateral, what in objects]

    # Walls: only the nearest one in each straight line (ahead, left, right), and only if nothing else
    # stands in between, as in BabyAI-Text. Cells past the first non-empty one are not looked at.
    lines = (
        ([(ax, j) for j in range(ay - 1, -1, -1)], "forward"),
        ([(i, ay) for i in range(ax - 1, -1, -1)], "left"),
        ([(i, ay) for i in range(ax + 1, width)], "right"),
    )
    for line, word in lines:
        for distance, (i, j) in enumerate(line, start=1):
            code = cells[i][j][0]
            if code in (_EMPTY, _FLOOR):
                continue
            if code == _WALL:
                phrases.append(f"a wall {steps(distance, word)}")
            break
    return phrases


class BabyAIEnv(Env):
    """One BabyAI level: BALROG's six language actions in, text plus a rendered frame out."""

    def __init__(self, level: str = "GoToLocal", max_steps: int | None = None, render: bool = True) -> None:
        self.level, self.gym_id = resolve_level(level)
        self.id = f"babyai/{self.level}"
        self.render_images = render
        kwargs: dict[str, Any] = {} if max_steps is None else {"max_steps": max_steps}
        self._env = gymnasium.make(
            self.gym_id, render_mode="rgb_array" if render else None, disable_env_checker=True, **kwargs
        )
        self.core: Any = self._env.unwrapped  # the MiniGridEnv itself: grid, agent_pos, agent_dir, carrying
        self._success = False
        self._done = False
        self._bot: BabyAIBot | None = None
        self._bot_active = False  # replanning costs 2-4x a step, so the bot only follows episodes it advises
        self._bot_next: int | None = None
        self._bot_error: str | None = None

    # -- Env ---------------------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        # Level generation prints "Sampling rejected: ..." for every rejected layout; that is noise to us.
        with contextlib.redirect_stdout(io.StringIO()):
            obs, _ = self._env.reset(seed=seed)
        self._success = False
        self._done = False
        self._bot = BabyAIBot(self._env)  # reads the freshly generated instructions, so only after reset
        self._bot_active = False
        self._bot_next = None
        self._bot_error = None
        return self._observation(obs["image"])

    def step(self, action: Action) -> StepResult:
        if action.kind != "act" or action.name not in ACTIONS:
            valid = ", ".join(_VALID_ACTIONS)
            raise ValueError(f"invalid BabyAI action {action.label()!r}; valid actions: {valid}")
        taken = int(ACTIONS[action.name])
        obs, reward, terminated, truncated, info = self._env.step(taken)
        reward = float(reward)
        if terminated and reward > 0:
            self._success = True
        self._done = bool(terminated or truncated)
        if self._bot_active and not self._done:
            self._replan(taken)
        return StepResult(
            observation=self._observation(obs["image"]),
            reward=reward,
            terminated=bool(terminated),
            truncated=bool(truncated),
            info={**info, "success": self._success},
        )

    def describe_actions(self) -> str:
        return (
            "You act in a grid world seen from above, one action per step. Actions: "
            "turn left: turn 90 degrees to your left, staying in place; "
            "turn right: turn 90 degrees to your right, staying in place; "
            "go forward: move one step the way you face (walls, closed doors and objects block you); "
            "pick up: pick up the object right in front of you (you can carry one object at a time); "
            "drop: put the object you carry on the empty cell right in front of you; "
            "toggle: open or close the door in front of you (a locked door opens only while you carry "
            "a key of its colour), or open the box in front of you. "
            "There is no 'done' action: the episode ends by itself once the goal is achieved. "
            "Positions are relative to you: 'forward' is the way you face, 'left' and 'right' your sides. "
            "You are next to an object when it is '1 step forward': that is how you 'go to' it, and where it "
            "must be to pick it up or open it. An object to your left or right comes in front of you by "
            "turning that way; something behind you is not in view, so turn to look around."
        )

    @property
    def success(self) -> bool:
        return self._success

    def expert_action(self) -> Action:
        """The BabyAI bot's next action.

        The bot is built at reset but replanned only once it has been asked: from then on it follows every
        step, including actions it did not suggest, and plans to undo them where needed. Asked first at
        step 0 it is exact (it solves the levels); asked first later, it plans from the current state.
        Raises RuntimeError when the episode is over, when the bot gave up (e.g. a box it needed was opened)
        or when it answers "done", which has no counterpart here: BabyAI ends a solved episode by itself,
        so "done" on a running episode means the bot has lost track and any action would be a guess.
        """
        if self._bot is None:
            raise RuntimeError(f"{self.id}: call reset() before expert_action()")
        if self._done:
            raise RuntimeError(f"{self.id}: the episode is over; no expert action")
        if not self._bot_active:
            self._bot_active = True
            self._replan(None)
        if self._bot_error is not None:
            raise RuntimeError(f"{self.id}: the BabyAI bot cannot continue: {self._bot_error}")
        if self._bot_next is None or self._bot_next not in _ACTION_NAMES:
            raise RuntimeError(f"{self.id}: the BabyAI bot answered 'done' but the mission is not complete")
        return Action(kind="act", name=_ACTION_NAMES[self._bot_next])

    def close(self) -> None:
        self._env.close()

    # -- helpers -------------------------------------------------------------------------------------
    def observation(self) -> Observation:
        """The observation of the current state, regenerated (e.g. after editing `core.grid` by hand)."""
        return self._observation(self.core.gen_obs()["image"])

    def _replan(self, taken: int | None) -> None:
        """Advance the bot one step; `None` tells it its own suggestion was taken (the fast, exact path)."""
        if self._bot is None or self._bot_error is not None:
            return
        try:
            self._bot_next = int(self._bot.replan(None if taken == self._bot_next else taken))
        except Exception as exc:  # the bot raises bare asserts and its own errors alike
            self._bot_error = f"{type(exc).__name__}: {exc}"
            self._bot_next = None

    def _observation(self, image: np.ndarray) -> Observation:
        core = self.core
        mission: str = core.mission
        carrying = core.carrying
        held = f"{carrying.color} {carrying.type}" if carrying is not None else None
        seen = describe_view(image)
        lines = [f"Your goal: {mission}"]
        lines += ["You see:", *(f"- {p}" for p in seen)] if seen else ["You see nothing but empty floor."]
        lines.append(f"You carry a {held}." if held else "You carry nothing.")
        return Observation(
            text="\n".join(lines),
            images=[self._env.render()] if self.render_images else [],
            extras={
                "mission": mission,
                "valid_actions": list(_VALID_ACTIONS),
                "direction": int(core.agent_dir),
                "position": [int(core.agent_pos[0]), int(core.agent_pos[1])],
                "carrying": held,
            },
        )

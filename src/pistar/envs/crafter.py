"""Crafter (Hafner, 2021) behind pistar's language interface.

The text observation is in the spirit of BALROG's Crafter wrapper: for each kind of material or creature in
the agent's local view (the 9x7 cells the frame shows), the nearest instance and where it is in compass terms
("tree 2 steps north, 1 step east"), then what the agent faces, its vitals, inventory and the achievements
unlocked so far. It is read from crafter's semantic map, a cheap slice of a 64x64 array, so it costs little
next to rendering the frame.

Score and success: Crafter has 22 achievements and no goal state, so the score is **progress**, the fraction
of achievements unlocked in the episode (BALROG's metric), reported as `info["progress"]` and
`extras["progress"]`. `success` is a coarse boolean for the trajectory record: at least
`SUCCESS_MIN_ACHIEVEMENTS` (one) achievement unlocked. Compare agents on progress, not on success.

Determinism: a seed fixes the world, and, with the chunk-order fix below, the whole episode for a given action
sequence; crafter alone lets creature despawning depend on memory addresses. The frame size matters too:
crafter draws its night-time noise from the world's random state, one draw per pixel.
"""

from __future__ import annotations

import collections
from typing import Any

import crafter
import numpy as np
from crafter import constants, objects

from pistar.envs.base import Env, StepResult, compass
from pistar.records import Action, Observation

# Readable action names ("move left", "make wood pickaxe") -> crafter's action index.
ACTIONS: dict[str, int] = {name.replace("_", " "): i for i, name in enumerate(constants.actions)}
_VALID_ACTIONS: list[str] = list(ACTIONS)
ACHIEVEMENTS: list[str] = list(constants.achievements)  # 22 in crafter 1.8
VITALS: tuple[str, ...] = ("health", "food", "drink", "energy")
SUCCESS_MIN_ACHIEVEMENTS = 1

# Crafter's x grows to the east ("move right"), y to the south ("move down").
_COMPASS: dict[tuple[int, int], str] = {(0, -1): "north", (0, 1): "south", (-1, 0): "west", (1, 0): "east"}
_NIGHT = 0.5  # crafter's daylight below which the frame darkens and zombies spawn more


def where(dx: int, dy: int) -> str:
    """An offset from the agent in words: north/south first, then east/west."""
    return ", ".join(compass(dx, dy))


def nearest_in_view(
    semantic: np.ndarray, center: tuple[int, int], grid: tuple[int, int], names: dict[int, str]
) -> dict[str, tuple[int, int]]:
    """For each kind in the `grid`-sized window centred on `center`, the (dx, dy) of its nearest cell.

    Nearest means fewest steps (Manhattan distance); ties go to the northernmost, then westernmost cell, so
    the answer is deterministic. Codes missing from `names` (nothing, the player itself) are skipped.
    The result is ordered by distance, then name.
    """
    cx, cy = center
    left, top = cx - grid[0] // 2, cy - grid[1] // 2
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + grid[0], semantic.shape[0]), min(top + grid[1], semantic.shape[1])
    best: dict[str, tuple[int, int, int]] = {}
    for i, column in enumerate(semantic[x0:x1, y0:y1].tolist()):
        dx = x0 + i - cx
        for j, code in enumerate(column):
            dy = y0 + j - cy
            name = names.get(code)
            if name is None or (dx == 0 and dy == 0):
                continue
            key = (abs(dx) + abs(dy), dy, dx)
            if name not in best or key < best[name]:
                best[name] = key
    ordered = sorted(best.items(), key=lambda item: (item[1][0], item[0]))
    return {name: (dx, dy) for name, (_, dy, dx) in ordered}


class _OrderedSet(dict):
    """The part of the set interface crafter's World uses for a chunk's objects, in insertion order."""

    def add(self, item: object) -> None:
        self[item] = None

    def remove(self, item: object) -> None:
        del self[item]


def _make_chunks_ordered(world: Any) -> None:
    """Make crafter's creature balancing depend on the seed alone.

    crafter keeps each chunk's objects in a plain set, iterated in memory-address order, and picks the creature
    to despawn by its index in that order: two runs of one seed and one action sequence drift apart from the
    first balancing (step 10). Insertion-ordered chunks, seeded in world-creation order, remove that.
    """
    index = world._obj_map
    world._chunks = collections.defaultdict(
        _OrderedSet,
        {
            key: _OrderedSet.fromkeys(sorted(objs, key=lambda o: index[tuple(o.pos)]))
            for key, objs in world._chunks.items()
        },
    )


class CrafterEnv(Env):
    """Crafter's open world: 17 language actions in, text plus the rendered frame out."""

    id = "crafter/default"

    def __init__(
        self,
        size: int = 256,
        area: tuple[int, int] = (64, 64),
        view: tuple[int, int] = (9, 9),
        length: int = 10000,
        reward: bool = True,
    ) -> None:
        self.size = size
        self.area = tuple(area)
        self.view = tuple(view)
        self.length = length
        self.reward = reward
        self._env: Any = None  # crafter.Env, rebuilt at every reset so a seed always gives the same world
        self._names: dict[int, str] = {}
        self._unlocked: list[str] = []
        self._done = False

    # -- Env ---------------------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        # crafter seeds each world from (seed, episode number); a fresh Env is always at episode 1.
        size = (self.size, self.size)
        self._env = crafter.Env(self.area, self.view, size, reward=self.reward, length=self.length, seed=int(seed))
        frame = self._env.reset()
        _make_chunks_ordered(self._env._world)
        sem = self._env._sem_view
        self._names = {i: name for name, i in sem._mat_ids.items() if name is not None}
        self._names |= {i: cls.__name__.lower() for cls, i in sem._obj_ids.items() if cls is not objects.Player}
        self._unlocked = []
        self._done = False
        return self._observation(frame, sem())

    def step(self, action: Action) -> StepResult:
        if action.kind != "act" or action.name not in ACTIONS:
            raise ValueError(f"invalid Crafter action {action.label()!r}; valid actions: {', '.join(_VALID_ACTIONS)}")
        if self._env is None:
            raise RuntimeError(f"{self.id}: call reset() before step()")
        if self._done:
            raise RuntimeError(f"{self.id}: the episode is over; call reset()")
        frame, reward, done, info = self._env.step(ACTIONS[action.name])
        # Crafter unlocks achievements in its own dict order; keep the order they were first reached.
        self._unlocked += [a for a in ACHIEVEMENTS if info["achievements"][a] > 0 and a not in self._unlocked]
        dead = self._env._player.health <= 0
        self._done = bool(done)
        return StepResult(
            observation=self._observation(frame, info["semantic"]),
            reward=float(reward),
            terminated=dead,
            truncated=bool(done) and not dead,  # the `length` limit, not a state of the game
            info={
                "achievements": list(self._unlocked),
                "progress": self.progress,
                "inventory": {k: int(v) for k, v in info["inventory"].items()},
                "success": self.success,
                "dead": dead,
            },
        )

    def describe_actions(self) -> str:
        return (
            "You play Crafter, a 2D survival and crafting game seen from above. Unlock as many of its 22 "
            "achievements as you can (collect wood, place a table, make a wood pickaxe, collect stone, ..., "
            "collect diamond) and stay alive. One action per step. "
            "move left/right/up/down: step one cell west/east/north/south; you turn that way even when the cell "
            "is blocked (trees, water, stone, tables block you), which is how you face an adjacent thing. "
            "do: act on the cell you face: collect a tree (wood), stone or coal (needs a wood pickaxe), iron "
            "(stone pickaxe), diamond (iron pickaxe), drink water, eat a cow (hit it a few times), eat a ripe "
            "plant, attack a zombie or skeleton, or gather a sapling from grass (sometimes). "
            "sleep: rest to regain energy (wakes you when rested; zombies hurt more while you sleep). "
            "place stone/table/furnace/plant: put it on the cell you face; a table costs wood, a furnace stone "
            "(and a table nearby), a plant a sapling. "
            "make wood/stone/iron pickaxe or sword: craft next to a table (iron tools also need a furnace) "
            "from wood, stone, coal and iron. noop: do nothing. "
            "Health, food, drink and energy go from 0 to 9: eat, drink and sleep to keep them up, or you lose "
            "health and die. Directions are compass directions from you: north is up on the screen."
        )

    @property
    def success(self) -> bool:
        return len(self._unlocked) >= SUCCESS_MIN_ACHIEVEMENTS

    @property
    def progress(self) -> float:
        """The episode's score: the fraction of Crafter's achievements unlocked so far."""
        return len(self._unlocked) / len(ACHIEVEMENTS)

    # -- helpers -------------------------------------------------------------------------------------
    def observation(self) -> Observation:
        """The observation of the current state, regenerated (e.g. after editing the world by hand)."""
        return self._observation(self._env.render(), self._env._sem_view())

    def _observation(self, frame: np.ndarray, semantic: np.ndarray) -> Observation:
        env = self._env
        player = env._player
        world = env._world
        pos = (int(player.pos[0]), int(player.pos[1]))
        grid = (int(env._local_view._grid[0]), int(env._local_view._grid[1]))
        seen = nearest_in_view(semantic, pos, grid, self._names)

        direction = _COMPASS[(int(player.facing[0]), int(player.facing[1]))]
        material, obj = world[(pos[0] + player.facing[0], pos[1] + player.facing[1])]
        facing = type(obj).__name__.lower() if obj is not None else (material or "the edge of the world")
        if "plant" in seen:  # the semantic map does not tell ripe from growing plants
            px, py = seen["plant"]
            plant = world[(pos[0] + px, pos[1] + py)][1]
            seen = {("ripe plant" if k == "plant" and getattr(plant, "ripe", False) else k): v for k, v in seen.items()}
        if facing == "plant" and getattr(obj, "ripe", False):
            facing = "ripe plant"

        inventory = {k: int(v) for k, v in player.inventory.items()}
        items = [f"{k.replace('_', ' ')} {v}" for k, v in inventory.items() if k not in VITALS and v > 0]
        done = [a.replace("_", " ") for a in self._unlocked]
        lines = ["You see (the nearest of each kind):", *(f"- {k} {where(dx, dy)}" for k, (dx, dy) in seen.items())]
        lines.append(f"You face {direction}, at {facing}.")
        if player.sleeping:
            lines.append("You are asleep.")
        if world.daylight < _NIGHT:
            lines.append("It is night.")
        lines.append("Vitals: " + ", ".join(f"{k} {inventory[k]}/{constants.items[k]['max']}" for k in VITALS) + ".")
        lines.append(f"Inventory: {', '.join(items) if items else 'empty'}.")
        lines.append(f"Achievements ({len(done)}/{len(ACHIEVEMENTS)}): {', '.join(done) if done else 'none yet'}.")
        return Observation(
            text="\n".join(lines),
            images=[np.ascontiguousarray(frame)],
            extras={
                "mission": "unlock as many achievements as possible",
                "valid_actions": list(_VALID_ACTIONS),
                "inventory": inventory,
                "achievements": list(self._unlocked),
                "progress": self.progress,
                "facing": facing,
                "direction": direction,
                "position": list(pos),
                "nearby": {k: list(v) for k, v in seen.items()},
            },
        )

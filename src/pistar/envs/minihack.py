"""MiniHack (NetHack Learning Environment) behind pistar's language interface.

The tasks are the navigation-style ones BALROG evaluates: MazeWalk, Corridor, CorridorBattle, Quest and (only when
its level files are on disk) Boxoban. Every one ends successfully on the downstairs '>'; MiniHack reports that
as `info["end_status"] == TASK_SUCCESSFUL`, which is what `success` reads (the reward also carries step penalties).

The text observation follows BALROG's language observation: the game's message, what lies on the eight squares
next to the agent, the notable things in view with their distance and direction in steps, and the map itself
(the map rows of the screen, cropped to what has been seen), which small models use well. The image is the same
crop drawn with MiniHack's 16x16 tiles: MiniHack's own "pixel" observation draws them with a Python loop that
costs far more than a step, so the tiles are gathered here with one numpy index instead.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from nle import nethack

from pistar.envs.base import Env, StepResult, compass
from pistar.records import Action, Observation

# Short name -> gymnasium id, for the tasks BALROG uses (plus the sizes/variants of the same families).
TASKS: dict[str, str] = {
    **{f"MazeWalk-{size}": f"MiniHack-MazeWalk-{size}-v0" for size in ("9x9", "15x15", "45x19")},
    **{f"Corridor-{r}": f"MiniHack-Corridor-{r}-v0" for r in ("R2", "R3", "R5")},
    "CorridorBattle": "MiniHack-CorridorBattle-v0",
    "CorridorBattle-Dark": "MiniHack-CorridorBattle-Dark-v0",
    **{f"Quest-{level}": f"MiniHack-Quest-{level}-v0" for level in ("Easy", "Medium", "Hard")},
}
# Boxoban reads DeepMind's level files, which MiniHack does not ship: they come from a download script
# (minihack/scripts/download_boxoban_levels.py, from GitHub), so these tasks exist only where someone ran it.
BOXOBAN: dict[str, str] = {f"Boxoban-{v}": f"MiniHack-Boxoban-{v}-v0" for v in ("Unfiltered", "Medium", "Hard")}

_MOVES = {"N": "north", "E": "east", "S": "south", "W": "west"}
_MOVES |= {"NE": "northeast", "SE": "southeast", "SW": "southwest", "NW": "northwest"}
_NAMES = {  # NLE command names that do not read as words
    "PICKUP": "pick up",
    "PUTON": "put on",
    "TAKEOFF": "take off",
    "TAKEOFFALL": "take off all",
    "TWOWEAPON": "two weapon",
    "DROPTYPE": "drop type",
    "INVENTTYPE": "inventory type",
    "MOVEFAR": "move far",
    "RUSH2": "rush far",
    "VERSIONSHORT": "version",
    "SEEARMOR": "see armor",
    "SEERINGS": "see rings",
    "SEETOOLS": "see tools",
    "SEETRAP": "see trap",
    "SEEWEAPON": "see weapon",
}
# Screen descriptions of plain terrain: the map shows them; listing each would drown the useful ones.
_PLAIN = {"", "floor of a room", "dark part of a room", "corridor", "lit corridor", "wall", "stone", "solid stone"}
_NEIGHBOURS = [(0, -1, "north"), (1, -1, "northeast"), (1, 0, "east"), (1, 1, "southeast")]
_NEIGHBOURS += [(0, 1, "south"), (-1, 1, "southwest"), (-1, 0, "west"), (-1, -1, "northwest")]
_USE_ITEMS = {nethack.Command.APPLY, nethack.Command.QUAFF, nethack.Command.ZAP, nethack.Command.PUTON}
_QUESTION = re.compile(r"\[([^\[\]]+)\](?:\s*\(\S\))?\s*$")  # "[fg or ?*]", "[ynq] (n)" at the end of a message
_TILE = 16
_CARDINAL = {"north": (0, -1), "east": (1, 0), "south": (0, 1), "west": (-1, 0)}
_WALKABLE = set(".#<>@")


def _boxoban_installed() -> bool:
    spec = importlib.util.find_spec("minihack")  # locates the package without importing it
    roots = spec.submodule_search_locations if spec else None
    return bool(roots) and (Path(list(roots)[0]) / "dat" / "boxoban-levels-master").is_dir()


def available_tasks() -> dict[str, str]:
    """The tasks that can run here: Boxoban only once its levels have been downloaded."""
    return {**TASKS, **BOXOBAN} if _boxoban_installed() else dict(TASKS)


def resolve_task(task: str) -> tuple[str, str]:
    """Accept "MazeWalk-9x9", "MiniHack-MazeWalk-9x9-v0", "mazewalk-9x9" ...; return (short name, gym id)."""
    short = re.sub(r"-v\d+$", "", task.strip())
    short = short[len("minihack-") :] if short.lower().startswith("minihack-") else short
    tasks = available_tasks()
    by_lower = {name.lower(): name for name in tasks}
    name = by_lower.get(short.lower())
    if name is not None:
        return name, tasks[name]
    if short.lower() in {b.lower() for b in BOXOBAN}:
        raise ValueError(
            f"MiniHack task {task!r} needs the Boxoban level files, which are downloaded from GitHub by "
            "minihack/scripts/download_boxoban_levels.py and are not installed here"
        )
    close = difflib.get_close_matches(short, tasks, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown MiniHack task {task!r}{hint}; available: {', '.join(tasks)}")


def _load_minihack() -> None:
    """Import minihack, which registers the MiniHack-* ids with gymnasium.

    minihack 1.0.2 imports `pkg_resources` only for `resource_filename`, and setuptools >= 81 no longer ships
    `pkg_resources`. Where it is missing, a stand-in with just that function is installed, so neither an old
    setuptools pin nor a patched minihack is needed.
    """
    if "minihack" in sys.modules:
        return
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("pkg_resources")

        def resource_filename(package: str, resource: str) -> str:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                raise ModuleNotFoundError(package)
            return os.path.join(os.path.dirname(spec.origin), resource)

        stand_in.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stand_in
    import minihack  # noqa: F401


def action_name(action: int) -> str:
    """The words for one NLE action: "north", "far east", "pick up", "search", "+" ..."""
    if isinstance(action, nethack.CompassDirection):
        return _MOVES[action.name]
    if isinstance(action, nethack.CompassDirectionLonger):
        return "far " + _MOVES[action.name]
    if isinstance(action, nethack.MiscDirection):
        return {"UP": "go up", "DOWN": "go down", "WAIT": "wait"}[action.name]
    if isinstance(action, nethack.TextCharacters):
        return "space" if action == nethack.TextCharacters.SPACE else chr(action)
    if isinstance(action, nethack.MiscAction | nethack.Command):
        return _NAMES.get(action.name, action.name.lower())
    return f"key {int(action)}"


def _where(dx: int, dy: int) -> str:
    """An offset in map squares as steps: north/south first, then east/west."""
    return " and ".join(compass(dx, dy)) or "here"


def _text(codes: np.ndarray) -> str:
    """A NUL-terminated byte array (message, inventory line) as text."""
    return bytes(codes).split(b"\0", 1)[0].decode("latin-1").strip()


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _question_keys(message: str) -> list[str]:
    """The answer keys a pending question offers: "[fg or ?*]" -> f, g, ?, *; "[a-c]" -> a, b, c."""
    match = _QUESTION.search(message)
    if match is None:
        return []
    keys: list[str] = []
    for part in match.group(1).split(" or "):
        for a, b, single in re.findall(r"(\S)-(\S)|(\S)", part):
            keys += [chr(c) for c in range(ord(a), ord(b) + 1)] if a else [single]
    return list(dict.fromkeys(keys))


def crop_box(chars: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns (top, bottom, left, right; half-open) of everything drawn on the map so far."""
    drawn = (chars != ord(" ")) & (chars != 0)  # after the game ends the map is all NUL
    rows = np.flatnonzero(drawn.any(axis=1))
    cols = np.flatnonzero(drawn.any(axis=0))
    if rows.size == 0:  # the game is over (death): nothing is drawn
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


class MiniHackEnv(Env):
    """One MiniHack task: the task's own action set in words, BALROG-style text plus a tile image out."""

    def __init__(self, task: str = "MazeWalk-9x9", max_steps: int | None = None, render: bool = True) -> None:
        self.task, self.gym_id = resolve_task(task)
        self.id = f"minihack/{self.task}"
        self.render_images = render
        _load_minihack()
        keys = ("glyphs", "chars", "blstats", "message", "screen_descriptions", "inv_strs", "inv_letters")
        self._env = gymnasium.make(self.gym_id, observation_keys=keys, disable_env_checker=True)
        self.core: Any = self._env.unwrapped  # the MiniHack (NLE) env: actions, seed(), StepStatus
        # The step limit is kept here, not by NLE: at its limit NLE quits the game, which blanks the last
        # observation and reports `terminated`. The default is the task's own limit (MazeWalk-9x9: 200).
        self.max_steps = int(max_steps or self.core._max_episode_steps)
        self.core._max_episode_steps = self.max_steps + 1
        self._steps = 0
        self.actions: list[str] = [action_name(a) for a in self.core.actions]
        self._index = {name: i for i, name in enumerate(self.actions)}
        # Keys that answer questions ("What do you want to zap? [g or ?*]"): any printable key of the action set.
        self._keys = {chr(int(a)): i for i, a in enumerate(self.core.actions) if 32 < int(a) < 127}
        self._uses_items = any(a in _USE_ITEMS for a in self.core.actions)
        self._valid: dict[str, int] = dict(self._index)
        self._success = False
        self._done = True
        self._tiles: np.ndarray | None = None
        self._glyph_tile: np.ndarray | None = None
        self._map: np.ndarray | None = None  # the last chars map and position, for the scripted explorer
        self._pos = (0, 0)
        self._probed: set[tuple[int, int]] = set()

    # -- Env ---------------------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        # NLE ignores gymnasium's reset seed; its own RNGs are seeded for the next reset, without the
        # anti-automation reseeding NetHack would otherwise do mid-game.
        self.core.seed(int(seed), int(seed), reseed=False)
        obs, _ = self._env.reset()
        self._success = False
        self._done = False
        self._steps = 0
        self._probed = set()
        return self._observation(obs)

    def step(self, action: Action) -> StepResult:
        if self._done:
            raise RuntimeError(f"{self.id}: the episode is over; call reset()")
        if action.kind != "act" or action.name not in self._valid:
            raise ValueError(f"invalid MiniHack action {action.label()!r}; valid actions: {', '.join(self._valid)}")
        obs, reward, terminated, truncated, info = self._env.step(self._valid[action.name])
        self._steps += 1
        status = info.get("end_status")
        if terminated and status == self.core.StepStatus.TASK_SUCCESSFUL:
            self._success = True
        truncated = bool(truncated or (not terminated and self._steps >= self.max_steps))
        self._done = bool(terminated or truncated)
        end = status.name.lower() if status is not None else ""
        return StepResult(
            observation=self._observation(obs),
            reward=float(reward),
            terminated=bool(terminated),
            truncated=bool(truncated),
            info={"end_status": end, "success": self._success},
        )

    def describe_actions(self) -> str:
        moves = [a for a in self.actions if a in _MOVES.values()]
        others = [a for a in self.actions if a not in _MOVES.values()]
        text = (
            "You play a NetHack level seen from above (north is up). Your goal is to reach the staircase down, "
            "shown as '>' on the map: stepping onto it completes the task. "
            f"Move one square with {', '.join(moves)}. "
        )
        if others:
            text += f"Other actions: {', '.join(others)}. "
        text += (
            "Map symbols: @ is you, > the staircase down, . floor, # corridor, | and - walls (an open door is also "
            "| or -), + a closed door, } water or lava, ` a boulder, letters are monsters; blank squares are solid "
            "rock or not yet seen. Doors cannot be entered or left diagonally. Distances are counted in squares. "
        )
        if others:
            text += "When the game asks 'In what direction?', answer with a move direction. "
        if self._uses_items:
            text += (
                "When it asks a question with choices in brackets, e.g. 'What do you want to zap? [fg or ?*]' or "
                "'[ynq]', answer with one of those keys as the action (e.g. 'f' or 'y'); 'esc' cancels."
            )
        return text.strip()

    @property
    def success(self) -> bool:
        return self._success

    def expert_action(self) -> Action:
        """A scripted explorer for the navigation tasks (MazeWalk, Corridor): breadth-first search over the map to
        '>' once seen, else to the nearest square next to unexplored ground. A blank square counts as explored
        once the agent stood beside it (NetHack always shows neighbours, so a blank one there is rock). Moves are
        cardinal, which every maze allows. Monsters (CorridorBattle, Quest) are beyond it."""
        if self._map is None or self._done:
            raise RuntimeError(f"{self.id}: no episode in progress")
        x, y = self._pos
        rows, cols = self._map.shape
        self._probed |= {(x + dx, y + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}

        def char(cx: int, cy: int) -> str:
            return chr(int(self._map[cy, cx])) if 0 <= cy < rows and 0 <= cx < cols else " "

        first: dict[tuple[int, int], str] = {}
        queue, seen, frontier = [(x, y)], {(x, y)}, None
        while queue:
            cell = queue.pop(0)
            if char(*cell) == ">":
                return Action("act", name=first[cell])
            for name, (dx, dy) in _CARDINAL.items():
                nxt = (cell[0] + dx, cell[1] + dy)
                blank = char(*nxt) in (" ", "\0")
                if blank and nxt not in self._probed and frontier is None and cell != (x, y):
                    frontier = cell
                if nxt in seen or char(*nxt) not in _WALKABLE:
                    continue
                seen.add(nxt)
                first[nxt] = first.get(cell, name)
                queue.append(nxt)
        if frontier is not None:
            return Action("act", name=first[frontier])
        unexplored = [n for n, (dx, dy) in _CARDINAL.items() if (x + dx, y + dy) not in self._probed]
        return Action("act", name=unexplored[0] if unexplored else "north")

    def close(self) -> None:
        self._env.close()

    # -- observation -------------------------------------------------------------------------------
    def _observation(self, obs: dict[str, np.ndarray]) -> Observation:
        chars, glyphs, descr = obs["chars"], obs["glyphs"], obs["screen_descriptions"]
        x, y = int(obs["blstats"][0]), int(obs["blstats"][1])
        self._map, self._pos = chars, (x, y)
        message = _text(obs["message"])
        names = descr.view(f"S{descr.shape[-1]}")[..., 0]  # one bytes string per map square

        def what(cx: int, cy: int) -> str:
            inside = 0 <= cy < names.shape[0] and 0 <= cx < names.shape[1]
            return names[cy, cx].decode("latin-1") if inside else ""

        lines = [f"Message: {message}" if message else "Message: (none)"]
        around: dict[str, list[str]] = {}
        for dx, dy, word in _NEIGHBOURS:
            if (thing := what(x + dx, y + dy)) != "":
                around.setdefault(thing, []).append(word)
        if around:
            sides = {t: "all around you" if len(w) == 8 else f"to the {_join(w)}" for t, w in around.items()}
            lines.append("Next to you: " + "; ".join(f"{t} {where}" for t, where in sides.items()) + ".")
        lines += self._things(names, x, y)
        top, bottom, left, right = crop_box(chars)
        if bottom > top:
            lines.append("Map (you are @):")
            lines += [row.tobytes().decode("latin-1").rstrip() for row in chars[top:bottom, left:right]]
        else:
            lines.append("Map: nothing is shown (the game is over).")
        if self._uses_items:
            stats = obs["blstats"]
            lines.append(f"HP: {int(stats[10])}/{int(stats[11])}")
            items = [
                f"{chr(int(letter))} - {_text(item)}"
                for letter, item in zip(obs["inv_letters"], obs["inv_strs"], strict=True)
                if letter
            ]
            lines.append("Inventory: " + ("; ".join(items) if items else "nothing"))
        keys = [k for k in _question_keys(message) if k in self._keys and k not in self._index]
        self._valid = {**self._index, **{k: self._keys[k] for k in keys}}
        return Observation(
            text="\n".join(lines),
            images=[self._draw(glyphs[top:bottom, left:right])] if self.render_images else [],
            extras={
                "valid_actions": list(self._valid),
                "message": message,
                "position": [x, y],
                "map_origin": [left, top],  # map square of the first character of the text map
            },
        )

    def _things(self, names: np.ndarray, x: int, y: int) -> list[str]:
        """Notable squares in view, grouped by kind, nearest kinds first, at most three places per kind."""
        found: dict[str, list[tuple[int, int, int]]] = {}
        for cy, cx in zip(*np.nonzero(names != b""), strict=True):
            thing = names[cy, cx].decode("latin-1")
            if thing in _PLAIN or (cx, cy) == (x, y):
                continue
            dx, dy = int(cx) - x, int(cy) - y
            found.setdefault(thing, []).append((max(abs(dx), abs(dy)), dx, dy))
        if not found:
            return []
        lines = ["You see:"]
        for thing, places in sorted(found.items(), key=lambda kv: min(kv[1])):
            places.sort()
            where = "; ".join(_where(dx, dy) for _, dx, dy in places[:3])
            more = f" (and {len(places) - 3} more)" if len(places) > 3 else ""
            lines.append(f"- {thing}: {where}{more}")
        return lines

    def _draw(self, glyphs: np.ndarray) -> np.ndarray:
        """The map crop in MiniHack's tiles, as an (rows*16, cols*16, 3) uint8 image."""
        if self._tiles is None or self._glyph_tile is None:
            from minihack.tiles import glyph2tile
            from minihack.tiles.glyph_mapper import GlyphMapper

            tiles = GlyphMapper().tiles  # {tile id: 16x16x3}
            self._tiles = np.stack([tiles[i] for i in range(len(tiles))]).astype(np.uint8)
            self._glyph_tile = np.asarray(glyph2tile, dtype=np.int64)
        h, w = glyphs.shape
        if h == 0 or w == 0:
            return np.zeros((_TILE, _TILE, 3), dtype=np.uint8)
        cells = self._tiles[self._glyph_tile[glyphs]]  # (h, w, 16, 16, 3)
        return cells.transpose(0, 2, 1, 3, 4).reshape(h * _TILE, w * _TILE, 3)

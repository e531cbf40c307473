"""TextWorld text adventures behind pistar's language interface.

The four game kinds TextWorld ships (coin collector, treasure hunter, the FTWP cooking game and the "simple"
house game) are generated offline by TextWorld's own `tw-make`, one game per seed, and cached on disk so a
seed is generated once per machine. `tw-make` runs in a fresh process: generation then depends on the settings
and the seed alone, never on what the calling process generated before, and the cached file is exactly what
`tw-make <challenge> ... --seed N` produces by hand.

The agent picks one of TextWorld's admissible commands each turn; the observation is the game's own text with
the goal and the inventory, and the score TextWorld keeps is the reward.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import textworld

from pistar.envs.base import Env, StepResult
from pistar.records import Action, Observation

# kind -> (tw-make challenge, default settings). Every setting the challenge takes is listed, so a typo in a
# keyword argument is caught here rather than by a failing subprocess. Defaults are small games a small model
# can finish in a few dozen steps: coin collector level 5 is a chain of 5 rooms with the coin at the end;
# treasure hunter level 5 is 5 rooms, a 3-step quest and a distractor object that loses the game if taken;
# cooking is one kitchen and a one-ingredient recipe to fetch; simple is a 6-room house with a 9-step quest.
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "coin_collector": ("tw-coin_collector", {"level": 5}),
    "treasure_hunter": ("tw-treasure_hunter", {"level": 5}),
    "cooking": (
        "tw-cooking",
        {
            "recipe": 1,
            "take": 1,
            "go": 1,
            "open": False,
            "cook": False,
            "cut": False,
            "drop": False,
            "recipe_seed": 0,
            "split": None,  # None: TextWorld's joint train/valid/test distribution
        },
    ),
    "simple": ("tw-simple", {"rewards": "dense", "goal": "detailed", "test": False}),
}

_HINTS = {
    "coin_collector": "Find the coin and take it.",
    "treasure_hunter": "Find the object the goal names and take it; taking the wrong object loses the game.",
    "cooking": "Read the cookbook, gather and prepare the ingredients it lists, then 'prepare meal' and 'eat meal'.",
    "simple": "Follow the goal's instructions through the house.",
}

_INFOS = textworld.EnvInfos(
    feedback=True,
    objective=True,
    inventory=True,
    admissible_commands=True,
    score=True,
    max_score=True,
    moves=True,
    won=True,
    lost=True,
    policy_commands=True,
    extras=["walkthrough"],
)

_BANNER_LINE = re.compile(r"^[\s_|\\/$<>]*[_|\\/$][\s_|\\/$<>]*$")  # the ASCII-art title: no letters at all
# Jericho warns that it cannot read score and moves from TextWorld's .z8 files by itself; TextWorld's own
# wrapper reports both, so the warning is noise.
_JERICHO_WARNING = "Game .* is not fully supported"
_RESTART = re.compile(r"^\s*Would you like to RESTART.*$", re.MULTILINE)
_GENERATE_TIMEOUT_S = 600
# TextWorld parses game logic with one module-level parser, so threads loading games at once corrupt each other
# (tatsu's FailedToken, "pop from empty list"); steps, which run the same game logic, are serialised as well.
# `pistar eval --concurrency N` runs environments in threads; a step takes ~2 ms, so serialising costs nothing.
_TEXTWORLD_LOCK = threading.Lock()


def cache_dir() -> Path:
    """Where generated games live: $PISTAR_HOME/textworld, by default ~/.cache/pistar/textworld."""
    return Path(os.environ.get("PISTAR_HOME", Path.home() / ".cache" / "pistar")) / "textworld"


def resolve_settings(kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The kind's default settings updated with `overrides`; unknown kinds or settings raise ValueError."""
    if kind not in KINDS:
        raise ValueError(f"unknown TextWorld kind {kind!r}: expected one of {', '.join(KINDS)}")
    defaults = KINDS[kind][1]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for textworld/{kind}; known: {', '.join(defaults)}")
    return {**defaults, **overrides}


def game_stem(kind: str, settings: dict[str, Any], seed: int) -> str:
    """A file name that names the game: kind, every setting that is on, and the seed."""
    parts = [k if v is True else f"{k}={v}" for k, v in settings.items() if v is not None and v is not False]
    return "-".join([kind, *parts, f"seed{seed}"])


def _tw_make() -> str:
    """The `tw-make` script next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("tw-make")
    found = str(beside) if beside.exists() else shutil.which("tw-make")
    if found is None:
        raise RuntimeError("TextWorld's tw-make script was not found: install textworld (pip install textworld)")
    return found


def generate_game(kind: str, settings: dict[str, Any], seed: int, directory: Path | None = None) -> Path:
    """Return the cached game file for (kind, settings, seed), generating it with tw-make first if needed.

    tw-make writes into a private temporary directory; the game's .json (which TextWorld needs for the
    walkthrough and the admissible commands) and then its .z8 are renamed into the cache. A .z8 therefore only
    ever appears with its .json beside it, and processes generating the same game at once each write a
    complete copy of the same game; the last rename wins.
    """
    directory = directory or cache_dir()
    stem = game_stem(kind, settings, seed)
    game, data = directory / f"{stem}.z8", directory / f"{stem}.json"
    if game.exists() and data.exists():
        return game
    directory.mkdir(parents=True, exist_ok=True)
    flags: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        elif value is not None:
            flags += [flag, str(value)]
    with tempfile.TemporaryDirectory(dir=directory, prefix=f".{stem}.") as tmp:
        cmd = [sys.executable, _tw_make(), KINDS[kind][0], *flags, "--seed", str(seed)]
        cmd += ["--output", str(Path(tmp) / f"{stem}.z8"), "--silent"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_GENERATE_TIMEOUT_S)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise RuntimeError(f"tw-make failed for textworld/{kind} {settings} seed {seed}:\n{tail}")
        os.replace(Path(tmp) / f"{stem}.json", data)
        os.replace(Path(tmp) / f"{stem}.z8", game)
    return game


def clean_feedback(text: str) -> str:
    """The game's text without the ASCII-art title, the prompt and status line, and the restart question."""
    head, prompt, tail = text.rpartition("\n>")
    if prompt and "\n" not in tail:  # "\n>" followed by the status line ("-= Kitchen =-0/3") ends every turn
        text = head
    text = _RESTART.sub("", text)
    lines = [line.strip() for line in text.splitlines() if not _BANNER_LINE.match(line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class TextWorldEnv(Env):
    """One kind of TextWorld game; each seed is a different game of that kind and difficulty."""

    def __init__(self, kind: str = "coin_collector", *, directory: str | Path | None = None, **settings: Any) -> None:
        self.kind = kind
        self.settings = resolve_settings(kind, settings)
        self.id = f"textworld/{kind}"
        self.directory = Path(directory) if directory is not None else None
        self.game_file: Path | None = None
        self._env: Any = None  # the textworld environment of the loaded game
        self._state: Any = None  # TextWorld's GameState after the last reset or step
        self.walkthrough: list[str] = []  # the game's winning commands from its start
        self._taken: list[str] = []
        self._score = 0

    # -- Env ---------------------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        game = generate_game(self.kind, self.settings, seed, self.directory)
        with _TEXTWORLD_LOCK, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JERICHO_WARNING)
            if game != self.game_file or self._env is None:
                self.close()
                self._env = textworld.start(str(game), request_infos=_INFOS)
                self.game_file = game
            # The emulator's random numbers would otherwise follow the clock (Jericho's default, also for seed 0).
            self._env.seed(seed + 1)
            self._state = self._env.reset()
        self.walkthrough = list(self._state.get("extra.walkthrough") or [])
        self._taken = []
        self._score = int(self._state["score"])
        return self._observation(first=True)

    def step(self, action: Action) -> StepResult:
        if self._state is None:
            raise RuntimeError(f"{self.id}: call reset() before step()")
        if self.done:
            raise RuntimeError(f"{self.id}: the episode is over; call reset()")
        valid = self._valid_actions()
        if action.kind != "act" or action.name not in valid:
            shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
            raise ValueError(f"invalid TextWorld command {action.label()!r}; admissible now: {shown}")
        with _TEXTWORLD_LOCK:
            self._state, _, _ = self._env.step(action.name)
        self._taken.append(action.name)
        score = int(self._state["score"])
        reward, self._score = score - self._score, score
        won, lost = bool(self._state["won"]), bool(self._state["lost"])
        return StepResult(
            observation=self._observation(first=False),
            reward=float(reward),
            terminated=won or lost,
            info={"won": won, "lost": lost, "success": won, "score": score, "max_score": self._state["max_score"]},
        )

    def describe_actions(self) -> str:
        return (
            "You play a text adventure. Each turn, type exactly one of the admissible commands listed, e.g. "
            "'go north', 'take coin', 'open wooden door', 'take milk from fridge' or 'examine cookbook'. "
            "'look' describes your surroundings again and 'inventory' lists what you carry; moving takes you to "
            "the room in that direction. Your score goes up as you complete parts of the goal, and the game ends "
            f"once you win (or lose). {_HINTS[self.kind]}"
        )

    @property
    def success(self) -> bool:
        return self._state is not None and bool(self._state["won"])

    @property
    def progress(self) -> float:
        if self._state is None or not self._state["max_score"]:
            return 0.0
        return 1.0 if self.success else min(1.0, max(0.0, self._score / self._state["max_score"]))

    @property
    def done(self) -> bool:
        return self._state is not None and bool(self._state["won"] or self._state["lost"])

    def expert_action(self) -> Action:
        """The next command of the game's walkthrough, or of a plan from here once the agent left it.

        While every command taken so far is the walkthrough's prefix, its next command is returned: the
        walkthrough wins from the start. After any other command (even a harmless 'look') TextWorld's own
        planner (`policy_commands`, recomputed from the tracked game state every turn) takes over and its
        first command is returned. Raises RuntimeError before reset, once the episode is over, and when no
        winning plan exists from the current state.
        """
        if self._state is None:
            raise RuntimeError(f"{self.id}: call reset() before expert_action()")
        if self.done:
            raise RuntimeError(f"{self.id}: the episode is over; no expert action")
        n = len(self._taken)
        if n < len(self.walkthrough) and self._taken == self.walkthrough[:n]:
            return Action(kind="act", name=self.walkthrough[n])
        plan = list(self._state["policy_commands"] or [])
        if not plan:
            raise RuntimeError(f"{self.id}: TextWorld finds no winning plan from the current state")
        return Action(kind="act", name=plan[0])

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            self.game_file = None

    # -- helpers -------------------------------------------------------------------------------------
    def _valid_actions(self) -> list[str]:
        return sorted(set(self._state["admissible_commands"] or []))

    def _observation(self, first: bool) -> Observation:
        state = self._state
        objective = (state["objective"] or "").strip()
        feedback = clean_feedback(state["feedback"] or "")
        if first and objective:  # the opening text repeats the goal, which leads the observation anyway
            feedback = feedback.replace(objective, "").strip()
        inventory = (state["inventory"] or "").strip()
        parts = [f"Goal: {objective}" if objective else "", feedback, "" if feedback == inventory else inventory]
        return Observation(
            text="\n\n".join(p for p in parts if p),
            extras={
                "valid_actions": [] if self.done else self._valid_actions(),
                "score": int(state["score"]),
                "max_score": int(state["max_score"]),
                "moves": int(state["moves"] or 0),
                "objective": objective,
                "mission": objective,  # what run_episode records as the trajectory's task
                "inventory": inventory,
            },
        )

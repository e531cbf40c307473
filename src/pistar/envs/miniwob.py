"""MiniWoB++ web tasks in a real headless Chromium, behind pistar's language interface.

miniwob drives Chromium through Selenium and serves each task's HTML from files inside the package (the FlightWoB
tasks from a local HTTP server), so nothing reaches the network. One MiniWoBEnv owns one browser: it starts at the
first reset, every later episode reuses it (a reset is a JavaScript call, not a page load), and `close()` kills
everything it started. The browser is launched here rather than by miniwob, for three reasons: Chromium needs flags
miniwob does not pass on this machine, logs must not reach the terminal, and chromedriver leads its own process
group, so that one `killpg` ends Chromium and all its helpers even after chromedriver itself has died.

The observation is the instruction, the page's visible elements as a numbered list (`[5] button "Ok" at (2,73)
33x21`) and the 160x210 screenshot. Actions are `click [ref]`, `click (x,y)`, `drag (x,y) to (x,y)`,
`type [ref] <text>`, `press <key>` and `scroll up|down [ref]`, mapped onto miniwob's own action types.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import re
import signal
import subprocess
import threading
import time
import weakref
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from pistar.envs.base import Env, StepResult
from pistar.records import Action, Observation

CHROME_BINARY = os.environ.get("MINIWOB_CHROME_BINARY") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("MINIWOB_CHROMEDRIVER") or "/usr/bin/chromedriver"
# Without the background-networking ones, Chromium on a closed network floods itself with refused connections.
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--log-level=3",
)
# MiniWoB ends an episode after 7-30 s of wall-clock time: an RL-era limit that a language model thinking for
# seconds per step cannot meet. pistar gives each episode this long instead; time_limit=None keeps the task's own.
DEFAULT_TIME_LIMIT = 600.0

# `press` names -> miniwob key strings (miniwob.constants; Escape, Home and End are added to its allowed keys).
KEYS: dict[str, str] = {
    **{k: f"<{k}>" for k in ("Enter", "Tab", "Backspace", "Delete", "Space", "Escape", "Home", "End")},
    **{k: f"<{k}>" for k in ("PageUp", "PageDown", "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight")},
    **{f"Ctrl+{c.upper()}": f"C-{c}" for c in "acxv"},
}
ACTION_PATTERNS = [
    r"click \([0-9]+, ?[0-9]+\)",
    r"drag \([0-9]+, ?[0-9]+\) to \([0-9]+, ?[0-9]+\)",
    r"type \[[0-9]+\] .+",
    r"scroll (up|down) \[[0-9]+\]",
]
_CLICK_REF = re.compile(r"click \[([0-9]+)\]")
_CLICK_XY = re.compile(r"click \(([0-9]+), ?([0-9]+)\)")
_DRAG = re.compile(r"drag \(([0-9]+), ?([0-9]+)\) to \(([0-9]+), ?([0-9]+)\)")
_TYPE = re.compile(r"type \[([0-9]+)\] (.+)", re.DOTALL)
_SCROLL = re.compile(r"scroll (up|down) \[([0-9]+)\]")
_PRESS = re.compile(r"press (.+)")
_INTERACTIVE = ("input", "button", "a", "select", "option", "textarea", "label")
_QUOTED = re.compile(r'"([^"]*)"')
_SCROLLABLE_JS = """
return Object.keys(core.previousDOMInfo).filter(function (ref) {
  var e = core.previousDOMInfo[ref], y = getComputedStyle(e).overflowY;
  return e !== document.body && e.scrollHeight > e.clientHeight + 1 && (y === 'auto' || y === 'scroll');
}).map(Number);
"""


def _load_miniwob() -> None:
    """Import miniwob (registering its tasks with gymnasium) and keep its log lines off the terminal.

    miniwob logs through the root logger ("Cannot call ... already done", "Clicking 7 failed"); pistar reports
    those cases itself, so records from miniwob's files are dropped. urllib3 warns on every retry to a dead
    chromedriver; the step's error already says the browser failed.
    """
    import miniwob

    root = Path(miniwob.__file__).parent
    if not getattr(_load_miniwob, "done", False):
        logging.getLogger().addFilter(lambda record: not record.pathname.startswith(str(root)))
        logging.getLogger("urllib3.connectionpool").addFilter(lambda record: "localhost" not in record.getMessage())
        _load_miniwob.done = True  # type: ignore[attr-defined]


def available_tasks() -> list[str]:
    """Every task in miniwob's gymnasium registry: all run offline (FlightWoB from a local HTTP server)."""
    _load_miniwob()
    names = [k[len("miniwob/") : -len("-v1")] for k in gymnasium.registry if k.startswith("miniwob/")]
    return sorted(n for n in names if n)


def _group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _kill_group(pgid: int, driver_process: subprocess.Popen[bytes] | None, wait_s: float = 5.0) -> None:
    """SIGKILL a browser's whole process group, reap chromedriver (our child) and wait for the rest to go."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if driver_process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            driver_process.wait(timeout=wait_s)
    deadline = time.monotonic() + wait_s
    while _group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


_FLIGHT_URL: str | None = None


def _flight_server() -> str:
    """FlightWoB pages must come over HTTP. miniwob's own server logs every request to stderr, so this process
    serves the same files from a quiet one (a daemon thread on a free local port, one per process)."""
    global _FLIGHT_URL
    if _FLIGHT_URL is None:
        from miniwob.selenium_instance import HTML_DIR

        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(HTML_DIR)))
        threading.Thread(target=server.serve_forever, name="miniwob-flight-http", daemon=True).start()
        _FLIGHT_URL = f"http://127.0.0.1:{server.server_address[1]}/"
    return _FLIGHT_URL


def _make_browser_class() -> type:
    """miniwob's environment with our browser launch (built lazily: importing miniwob costs a second)."""
    _load_miniwob()
    from miniwob.action import ActionSpaceConfig
    from miniwob.constants import DEFAULT_ALLOWED_KEYS
    from miniwob.environment import MiniWoBEnvironment
    from miniwob.selenium_instance import SeleniumInstance
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    class Instance(SeleniumInstance):
        """SeleniumInstance.create_driver with the flags, silence and process group this machine needs."""

        on_service: Any = None  # called with the chromedriver Service once its process exists

        def create_driver(self) -> None:
            options = webdriver.ChromeOptions()
            for flag in CHROME_FLAGS:
                options.add_argument(flag)
            options.binary_location = CHROME_BINARY
            options.add_experimental_option("excludeSwitches", ["enable-logging"])
            service = Service(CHROMEDRIVER, log_output=subprocess.DEVNULL, popen_kw={"start_new_session": True})
            try:
                self.driver = webdriver.Chrome(service=service, options=options)
            finally:  # even when the start failed: whatever did start must be killable
                if getattr(service, "process", None) is not None and self.on_service is not None:
                    self.on_service(service)
            # The window's frame eats part of --window-size: size it so the page area is the task's window.
            frame = self.driver.execute_script(
                "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];"
            )
            self.driver.set_window_size(self.window_width + frame[0], self.window_height + frame[1])
            self.driver.get(self.url)
            sync = (By.ID, self.SYNC_SCREEN_ID)
            WebDriverWait(self.driver, 20).until(expected_conditions.element_to_be_clickable(sync))
            self.inner_width, self.inner_height = self.driver.execute_script(
                "return [window.innerWidth, window.innerHeight];"
            )

    class Browser(MiniWoBEnvironment):
        """A MiniWoB task run by `Instance`, with Escape, Home and End added to miniwob's allowed keys."""

        def __init__(self, subdomain: str, on_service: Any) -> None:
            self.on_service = on_service
            config = ActionSpaceConfig.get_preset("all_supported")
            config.allowed_keys = (*DEFAULT_ALLOWED_KEYS, "<Escape>", "<Home>", "<End>")
            base_url = _flight_server() if subdomain.startswith("flight.") else None
            super().__init__(subdomain=subdomain, action_space_config=config, base_url=base_url)

        def _hard_reset_instance(self) -> None:
            self.instance = Instance(index=0, **self.instance_kwargs)
            self.instance.on_service = self.on_service
            self.instance.start()

    return Browser


_BROWSER_CLASS: type | None = None


class MiniWoBEnv(Env):
    """One MiniWoB++ task in its own headless Chromium.

    An action that names an element no longer on the page (or a point off the page) does nothing: the step gives
    reward 0 and an observation that says so, and the episode goes on, as a mis-click would in a browser. Only an
    action of no known form raises ValueError. A browser that dies mid-episode makes `step` raise RuntimeError
    (run_episode records it); the next `reset` starts a new browser.
    """

    EXPERT_TASKS: tuple[str, ...] = (
        "click-button",
        "click-button-sequence",
        "click-checkboxes",
        "click-collapsible",
        "click-dialog",
        "click-dialog-2",
        "click-link",
        "click-option",
        "click-tab",
        "click-test",
        "click-test-2",
        "click-widget",
        "drag-single-shape",
        "enter-password",
        "enter-text",
        "enter-text-2",
        "enter-text-dynamic",
        "focus-text",
        "focus-text-2",
        "identify-shape",
        "login-user",
        "navigate-tree",
        "simple-arithmetic",
        "unicode-test",
    )

    def __init__(self, task: str = "click-button", render: bool = True, time_limit: float | None = DEFAULT_TIME_LIMIT):
        self.task = self.resolve(task)
        self.id = f"miniwob/{self.task}"
        self.render_images = render
        self.time_limit = time_limit
        self._browser: Any = None
        self._pgid: int | None = None
        self._driver_process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._done = True
        self._raw_reward = 0.0
        self._utterance = ""
        self._fields: dict[str, str] = {}
        self._elements: list[dict[str, Any]] = []  # every element miniwob reports, text nodes included
        self._listed: list[dict[str, Any]] = []  # the ones the observation shows
        self._scrollable: list[int] = []
        self._taken: list[str] = []  # actions carried out this episode, for the expert's sequences

    # -- tasks -------------------------------------------------------------------------------------
    @staticmethod
    def tasks() -> list[str]:
        return available_tasks()

    @staticmethod
    def resolve(task: str) -> str:
        """Accept "click-button", "miniwob/click-button" or "click-button-v1"."""
        name = re.sub(r"-v\d+$", "", task.strip().removeprefix("miniwob/"))
        tasks = available_tasks()
        if name in tasks:
            return name
        close = difflib.get_close_matches(name, tasks, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown MiniWoB task {task!r}{hint}; there are {len(tasks)}, e.g. click-button, enter-text, login-user "
            "(MiniWoBEnv.tasks() lists them)"
        )

    # -- browser -----------------------------------------------------------------------------------
    def _launch(self) -> None:
        global _BROWSER_CLASS
        if _BROWSER_CLASS is None:
            _BROWSER_CLASS = _make_browser_class()

        def on_service(service: Any) -> None:
            self._driver_process = service.process
            self._pgid = service.process.pid  # start_new_session: chromedriver leads its group
            self._finalizer = weakref.finalize(self, _kill_group, self._pgid, service.process, 1.0)

        try:
            self._browser = _BROWSER_CLASS(self.task, on_service)
            if self.time_limit is not None:
                ms = int(min(self.time_limit, 2e6) * 1000)  # setTimeout overflows past 2^31 ms
                self._browser.instance.driver.execute_script(f"core.EPISODE_MAX_TIME = {ms};")
            self._browser.set_record_screenshots(self.render_images)
        except Exception:
            self._shutdown(graceful=False)
            raise

    def _shutdown(self, graceful: bool) -> None:
        """Quit the driver when it can still answer, then kill whatever remains of the browser's process group."""
        browser, self._browser = self._browser, None
        if browser is not None and graceful:
            with contextlib.suppress(Exception):
                browser.instance.driver.quit()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._pgid is not None:
            _kill_group(self._pgid, self._driver_process)
        self._pgid, self._driver_process = None, None
        self._done = True

    def browser_pids(self) -> list[int]:
        """The live processes of this env's browser: chromedriver, Chromium and its helpers."""
        return _group_pids(self._pgid) if self._pgid is not None else []

    def close(self) -> None:
        self._shutdown(graceful=True)

    # -- Env ---------------------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        """Start an episode in the running browser; start a browser first if there is none or it died."""
        if self._browser is None:
            self._launch()
        try:
            obs, _ = self._browser.reset(seed=int(seed))
        except Exception:
            self._shutdown(graceful=False)
            self._launch()
            obs, _ = self._browser.reset(seed=int(seed))
        self._done = False
        self._raw_reward = 0.0
        self._taken = []
        return self._observe(obs)

    def step(self, action: Action) -> StepResult:
        if self._done or self._browser is None:
            raise RuntimeError(f"{self.id}: the episode is over; call reset()")
        commands, problem = self._commands(action)
        for command in commands:  # a drag is two: press the button at one point, release it at the other
            obs, reward, terminated, truncated, info = self._guarded(self._browser.step, command)
            if terminated:
                break
        if problem is None:
            self._taken.append(action.name)
        self._done = bool(terminated)
        if terminated:
            self._raw_reward = float(info.get("raw_reward") or 0.0)
        reason = "" if info.get("reason") is None else str(info["reason"])
        out: dict[str, Any] = {"raw_reward": self._raw_reward, "reason": reason, "success": self.success}
        if problem is not None:
            out["error"] = problem
        observation = self._final(float(reward), reason) if terminated else self._observe(obs, problem)
        return StepResult(observation, float(reward), bool(terminated), bool(truncated), out)

    def _guarded(self, call: Any, *args: Any) -> Any:
        """Call into the browser. A failure there (a dead browser, a page gone) tears the browser down, so that
        the next reset starts a new one, and raises one clear RuntimeError."""
        try:
            return call(*args)
        except Exception as e:
            self._shutdown(graceful=False)
            cause = (str(e).strip().splitlines() or [""])[0]
            raise RuntimeError(
                f"the browser failed ({type(e).__name__}: {cause}); the next reset starts a new one"
            ) from e

    def describe_actions(self) -> str:
        keys = ", ".join(KEYS)
        return (
            "You operate a small web page (160x210 pixels) to do what its instruction says. The page's elements are "
            'listed as [ref] tag "text" at (left,top) widthxheight. Actions:\n'
            "- click [ref]: click an element;\n"
            "- click (x,y): click the page at pixel x, y (for drawings and canvases);\n"
            "- drag (x,y) to (x,y): press the mouse button at one point and release it at the other;\n"
            "- type [ref] <text>: click the field [ref] and type the text, after what the field already holds;\n"
            f"- press <key>: press a key, one of {keys};\n"
            "- scroll up [ref] / scroll down [ref]: turn the mouse wheel over an element.\n"
            "The episode ends when the page judges the answer (often on Submit): a positive reward is success."
        )

    @property
    def success(self) -> bool:
        return self._raw_reward > 0

    @property
    def progress(self) -> float:
        return max(0.0, min(1.0, self._raw_reward))

    # -- actions -----------------------------------------------------------------------------------
    def _commands(self, action: Action) -> tuple[list[dict[str, Any] | None], str | None]:
        """A pistar action as miniwob actions, or ([None], why) for one that cannot apply to this page (None is
        miniwob's no-op: the step still reads the page and the clock)."""
        name = action.name.strip() if action.kind == "act" else ""
        create = self._browser.create_action
        elements = {e["ref"]: e for e in self._elements if e["ref"] > 0}
        width, height = self._browser.instance.task_width, self._browser.instance.task_height

        def point(x: str, y: str) -> np.ndarray | None:
            return np.array([int(x), int(y)], dtype=np.float32) if int(x) < width and int(y) < height else None

        def off(*xy: str) -> str:
            return f"({xy[0]},{xy[1]}) is off the page, which is {width}x{height} pixels: nothing was done"

        if m := _CLICK_REF.fullmatch(name):
            ref = int(m.group(1))
            return ([create("CLICK_ELEMENT", ref=ref)], None) if ref in elements else ([None], self._missing(ref))
        if m := _CLICK_XY.fullmatch(name):
            at = point(*m.groups())
            return ([create("CLICK_COORDS", coords=at)], None) if at is not None else ([None], off(*m.groups()))
        if m := _DRAG.fullmatch(name):
            start, end = point(*m.groups()[:2]), point(*m.groups()[2:])
            if start is None or end is None:
                return [None], off(*(m.groups()[:2] if start is None else m.groups()[2:]))
            return [create("MOUSEDOWN_COORDS", coords=start), create("MOUSEUP_COORDS", coords=end)], None
        if m := _TYPE.fullmatch(name):
            ref = int(m.group(1))
            if ref not in elements:
                return [None], self._missing(ref)
            return [create("FOCUS_ELEMENT_AND_TYPE_TEXT", ref=ref, text=m.group(2))], None
        if m := _SCROLL.fullmatch(name):
            element = elements.get(int(m.group(2)))
            if element is None:
                return [None], self._missing(int(m.group(2)))
            x = min(max(element["left"] + element["width"] / 2, 1), width - 1)
            y = min(max(element["top"] + element["height"] / 2, 1), height - 1)
            kind = "SCROLL_UP_COORDS" if m.group(1) == "up" else "SCROLL_DOWN_COORDS"
            return [create(kind, coords=np.array([x, y], dtype=np.float32))], None
        if m := _PRESS.fullmatch(name):
            key = KEYS.get(m.group(1).strip())
            if key is None:
                return [None], f"unknown key {m.group(1)!r}; keys: {', '.join(KEYS)}"
            return [create("PRESS_KEY", key=self._browser.action_space_config.allowed_keys.index(key))], None
        raise ValueError(
            f"invalid MiniWoB action {action.label()!r}: expected click [ref], click (x,y), drag (x,y) to (x,y), "
            "type [ref] <text>, press <key> or scroll up|down [ref]"
        )

    def _missing(self, ref: int) -> str:
        return f"element [{ref}] is not on the page: nothing was done"

    # -- observation -------------------------------------------------------------------------------
    def _observe(self, obs: dict[str, Any], note: str | None = None) -> Observation:
        self._utterance = str(obs["utterance"])
        self._fields = {str(k): str(v) for k, v in obs["fields"]}
        self._elements = [_element(e) for e in obs["dom_elements"]]
        width, height = self._browser.instance.task_width, self._browser.instance.task_height
        self._listed = _listed(self._elements, width, height)
        scrollable = self._guarded(self._browser.instance.driver.execute_script, _SCROLLABLE_JS)
        self._scrollable = [int(r) for r in scrollable]
        listed_refs = {e["ref"] for e in self._listed}
        valid = [f"click [{e['ref']}]" for e in self._listed]
        valid += [f"press {k}" for k in KEYS]
        valid += [f"scroll {d} [{r}]" for r in self._scrollable if r in listed_refs for d in ("up", "down")]
        lines = [f"Instruction: {self._utterance}"] + ([f"Note: {note}."] if note else [])
        lines.append("Page elements:")
        lines += [_line(e, e["ref"] in self._scrollable) for e in self._listed] or ["(none)"]
        screenshot = np.asarray(obs["screenshot"], dtype=np.uint8)
        return Observation(
            text="\n".join(lines),
            images=[screenshot] if self.render_images else [],
            extras={
                "mission": self._utterance,
                "valid_actions": valid,
                "action_patterns": list(ACTION_PATTERNS),
                "dom": self._listed,
                "fields": dict(self._fields),
            },
        )

    def _final(self, reward: float, reason: str) -> Observation:
        """The page after the episode: miniwob shows only its start screen, so the text says how it ended."""
        self._elements, self._listed, self._scrollable = [], [], []
        verdict = "success" if self.success else "failure"
        why = f" ({reason})" if reason else ""
        text = f"Instruction: {self._utterance}\nThe episode is over: {verdict}{why}, reward {reward:.2f}."
        return Observation(text=text, extras={"mission": self._utterance, "valid_actions": [], "dom": []})

    # -- expert ------------------------------------------------------------------------------------
    def expert_action(self) -> Action:
        """A scripted solver reading the DOM and the instruction, for the tasks in EXPERT_TASKS."""
        if self.task not in self.EXPERT_TASKS:
            raise NotImplementedError(
                f"{self.id} has no expert policy; experts exist for {', '.join(self.EXPERT_TASKS)}"
            )
        if self._done:
            raise RuntimeError(f"{self.id}: no episode in progress")
        solver = getattr(self, "_solve_" + self.task.replace("-", "_"))
        return Action("act", name=solver())

    def _find(self, tag: str | None = None, text: str | None = None, cls: str = "", id: str = "") -> dict[str, Any]:
        for e in self._elements:
            if e["ref"] <= 0 or (tag is not None and e["tag"] != tag) or (text is not None and e["text"] != text):
                continue
            if (cls in e["classes"].split() or not cls) and (not id or e["id"] == id):
                return e
        raise RuntimeError(f"{self.id}: the expert found no {tag or 'element'} {text or cls or id!r} on the page")

    def _target(self) -> str:
        quoted = _QUOTED.findall(self._utterance)
        return quoted[0] if quoted else self._fields.get("target", "")

    def _fill(self, pairs: list[tuple[dict[str, Any], str]], submit: dict[str, Any]) -> str:
        """Type each value into its empty field, then submit."""
        for field, value in pairs:
            if field["value"] != value:
                return f"type [{field['ref']}] {value}"
        return f"click [{submit['ref']}]"

    def _once(self, first: dict[str, Any], then: dict[str, Any]) -> str:
        """Click `first` unless done already this episode, then `then`."""
        click = f"click [{first['ref']}]"
        return click if click not in self._taken else f"click [{then['ref']}]"

    def _solve_click_button(self) -> str:
        return f"click [{self._find('button', self._target())['ref']}]"

    _solve_unicode_test = _solve_click_button

    def _solve_click_test(self) -> str:
        return f"click [{self._find('button')['ref']}]"

    def _solve_click_test_2(self) -> str:
        return f"click [{self._find('button', self._fields['target'])['ref']}]"

    def _solve_click_button_sequence(self) -> str:
        return self._once(self._find("button", "ONE"), self._find("button", "TWO"))

    def _solve_click_link(self) -> str:
        return f"click [{self._find('span', self._target(), cls='alink')['ref']}]"

    def _solve_click_tab(self) -> str:
        return f"click [{self._find('a', 'Tab #' + self._fields['target'])['ref']}]"

    def _solve_click_dialog(self) -> str:
        return f"click [{self._find('button', cls='ui-dialog-titlebar-close')['ref']}]"

    def _solve_click_dialog_2(self) -> str:
        if self._target() == "x":
            return self._solve_click_dialog()
        return f"click [{self._find('button', self._target())['ref']}]"

    def _solve_click_collapsible(self) -> str:
        return self._once(self._find("h3"), self._find("button", "Submit"))

    def _solve_choices(self, kind: str, wanted: set[str]) -> str:
        """Tick exactly the boxes whose labels are wanted, then submit."""
        for label in (e for e in self._elements if e["tag"] == "label"):
            box = next((e for e in self._elements if e["parent"] == label["ref"] and e["tag"] == kind), None)
            text = " ".join(e["text"] for e in self._elements if e["parent"] == label["ref"] and e["tag"] == "t")
            if box is not None and (box["value"] == "True") != (text in wanted):
                return f"click [{box['ref']}]"
        return f"click [{self._find('button', 'Submit')['ref']}]"

    def _solve_click_checkboxes(self) -> str:
        wanted = {v for k, v in self._fields.items() if k.startswith("target")}
        return self._solve_choices("input_checkbox", wanted)

    def _solve_click_option(self) -> str:
        return self._solve_choices("input_radio", {self._fields["target"]})

    def _solve_click_widget(self) -> str:
        tags = {"radio": "input_radio", "checkbox": "input_checkbox", "text": "input_text", "textarea": "textarea"}
        return f"click [{self._find(tags.get(self._fields['target'], self._fields['target']))['ref']}]"

    def _solve_drag_single_shape(self) -> str:
        """Drag the shape's centre 20 pixels the asked way (any move that way counts), then submit."""
        if any(a.startswith("drag") for a in self._taken):
            return f"click [{self._find('button', 'Submit')['ref']}]"
        shape = next(e for e in self._listed if e["tag"] != "button")
        x, y = round(shape["left"] + shape["width"] / 2), round(shape["top"] + shape["height"] / 2)
        way = re.search(r"(left|right|up|down)", self._utterance)
        dx, dy = {"left": (-20, 0), "right": (20, 0), "up": (0, -20), "down": (0, 20)}[way.group(1) if way else "left"]
        return f"drag ({x},{y}) to ({min(max(x + dx, 0), 159)},{min(max(y + dy, 0), 209)})"

    def _solve_enter_text(self) -> str:
        return self._fill([(self._find("input_text"), self._fields["target"])], self._find("button", "Submit"))

    _solve_enter_text_dynamic = _solve_enter_text

    def _solve_enter_text_2(self) -> str:
        text = self._fields["text"]
        text = text.upper() if self._fields["case"] == "upper" else text.lower()
        return self._fill([(self._find("input_text"), text)], self._find("button", "Submit"))

    def _solve_enter_password(self) -> str:
        fields = [e for e in self._elements if e["tag"] == "input_password"]
        return self._fill([(f, self._fields["target"]) for f in fields], self._find("button", "Submit"))

    def _solve_login_user(self) -> str:
        pairs = [
            (self._find(id="username"), self._fields["username"]),
            (self._find(id="password"), self._fields["password"]),
        ]
        return self._fill(pairs, self._find("button", "Login"))

    def _solve_focus_text(self) -> str:
        return f"click [{self._find('input_text')['ref']}]"

    def _solve_focus_text_2(self) -> str:
        return f"click [{self._find('input_text', id='tt' + self._fields['target'])['ref']}]"

    def _solve_identify_shape(self) -> str:
        figure = next(e for e in self._elements if e["ref"] > 0 and e["tag"] in ("text", "rect", "circle", "polygon"))
        names = {"rect": "Rectangle", "circle": "Circle", "polygon": "Triangle"}
        name = names.get(figure["tag"]) or ("Number" if figure["text"].strip().isdigit() else "Letter")
        return f"click [{self._find('button', name)['ref']}]"

    def _solve_simple_arithmetic(self) -> str:
        problem = self._find(id="math-problem")["text"]
        a, op, b = problem.replace("=", "").split()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]
        return self._fill([(self._find("input_text"), str(value))], self._find("button", "Submit"))

    def _solve_navigate_tree(self) -> str:
        """Click the name once it shows; until then open the next closed folder (a folder click ends nothing)."""
        target = self._target()
        names = [e for e in self._elements if e["tag"] == "span" and e["classes"] in ("file", "folder")]
        for e in names:
            if e["text"] == target:
                return f"click [{e['ref']}]"
        for e in names:
            parent = next(p for p in self._elements if p["ref"] == e["parent"])
            if e["classes"] == "folder" and "expandable" in parent["classes"].split():
                return f"click [{e['ref']}]"
        raise RuntimeError(f"{self.id}: the expert found no {target!r} in the tree")


def _element(raw: dict[str, Any]) -> dict[str, Any]:
    """One of miniwob's serialized DOM elements as plain JSON-able values."""
    focused, tampered, _, leaf = (bool(f) for f in raw["flags"])
    flags = [name for name, on in (("leaf", leaf), ("tampered", tampered)) if on]
    return {
        "ref": int(raw["ref"]),
        "parent": int(raw["parent"]),
        "tag": str(raw["tag"]),
        "text": str(raw["text"]),
        "value": str(raw["value"]),
        "left": round(float(raw["left"][0]), 1),
        "top": round(float(raw["top"][0]), 1),
        "width": round(float(raw["width"][0]), 1),
        "height": round(float(raw["height"][0]), 1),
        "focused": focused,
        "flags": flags,
        "id": str(raw["id"]),
        "classes": str(raw["classes"]),
    }


def _listed(elements: list[dict[str, Any]], width: float, height: float) -> list[dict[str, Any]]:
    """The elements worth showing: on screen, and interactive, a leaf, or holding text; text nodes fold into
    their parent (a label's text is its own)."""
    texts: dict[int, list[str]] = {}
    for e in elements:
        if e["ref"] < 0 and e["text"]:
            texts.setdefault(e["parent"], []).append(e["text"])
    shown = []
    for e in elements:
        if e["ref"] <= 0 or e["tag"] == "body":
            continue
        on_screen = (
            e["left"] < width and e["top"] < height and e["left"] + e["width"] > 0 and e["top"] + e["height"] > 0
        )
        tiny = "leaf" in e["flags"] and min(e["width"], e["height"]) < 3
        own_text = " ".join(texts.get(e["ref"], []))
        interesting = e["tag"].split("_")[0] in _INTERACTIVE or "leaf" in e["flags"] or own_text
        if on_screen and interesting and not tiny:
            shown.append({**e, "text": e["text"] or own_text})
    return shown


def _line(e: dict[str, Any], scrollable: bool) -> str:
    """`[7] button "Submit" at (80,120) 40x20`, with value, checked and focus where they matter, and an element
    without text named by its id or first class."""
    parts = [f"[{e['ref']}] {e['tag']}"]
    if e["text"] and e["tag"] != "textarea":  # a textarea's text is its value
        parts.append(f'"{_clip(e["text"])}"')
    elif e["id"] or e["classes"] not in ("", "SVG_CLASS"):  # a name for icons and empty boxes: "span .trash"
        parts.append(f"#{e['id']}" if e["id"] else f".{e['classes'].split()[0]}")
    if e["tag"] in ("input_checkbox", "input_radio"):
        parts.append("checked" if e["value"] == "True" else "unchecked")
    elif e["tag"].startswith("input") or e["tag"] == "textarea":
        parts.append(f'value "{_clip(e["value"])}"')
    if e["focused"]:
        parts.append("focused")
    if scrollable:
        parts.append("scrollable")
    parts.append(f"at ({round(e['left'])},{round(e['top'])}) {round(e['width'])}x{round(e['height'])}")
    return " ".join(parts)


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

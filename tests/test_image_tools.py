"""The image tools on real drawn screens: OCR boxes where the text is (small screens too), crop and zoom, the
perceptor's shapes, colours and DOM merge, errors the model can read, and a tool call through the agent loop."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from pistar.agent import Budget, Decision, run_episode
from pistar.envs.base import Env, StepResult
from pistar.records import Action, Observation, Step
from pistar.tools import image
from pistar.tools.base import Tool, ToolError
from pistar.tools.image import crop, elements, image_tools, ocr, perceive, read_text, zoom

FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
]


def font(size: int) -> Any:
    for path in FONTS:
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


Box = tuple[int, int, int, int]  # left, top, right, bottom


def screen(w: int, h: int, paint: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    img = Image.new("RGB", (w, h), "white")
    paint(ImageDraw.Draw(img))
    return np.asarray(img)


def text_at(d: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int, fill: Any = "black") -> Box:
    d.text(xy, text, font=font(size), fill=fill)
    return tuple(round(v) for v in d.textbbox(xy, text, font=font(size)))  # type: ignore[return-value]


def see(img: np.ndarray, **extras: Any) -> Observation:
    return Observation("a screen", [img], extras)


def line_of(lines: list[dict[str, Any]], word: str) -> dict[str, Any]:
    found = [t for t in lines if word.lower() in t["text"].lower()]
    assert found, f"{word!r} not read in {[t['text'] for t in lines]}"
    return found[0]


def assert_box_near(got: dict[str, Any], want: Box, tol: int) -> None:
    left, top, right, bottom = want
    edges = (got["left"], got["top"], got["left"] + got["width"], got["top"] + got["height"])
    assert all(abs(a - b) <= tol for a, b in zip(edges, (left, top, right, bottom), strict=True)), (edges, want)


def contains(e: dict[str, Any], x: float, y: float) -> bool:
    return e["left"] <= x <= e["left"] + e["width"] and e["top"] <= y <= e["top"] + e["height"]


# -- OCR --------------------------------------------------------------------------------------------------------------
def test_ocr_reads_a_sentence_and_its_box_is_where_it_was_drawn() -> None:
    boxes: dict[str, Box] = {}

    def paint(d: ImageDraw.ImageDraw) -> None:
        boxes["a"] = text_at(d, (40, 60), "Press the RED button", 22)
        boxes["b"] = text_at(d, (60, 200), "then wait for the green light", 16, fill=(0, 90, 0))

    img = screen(480, 300, paint)
    lines = read_text(img)
    assert [t["text"].lower() for t in lines][:2] == ["press the red button", "then wait for the green light"]
    assert_box_near(line_of(lines, "red"), boxes["a"], 4)
    assert_box_near(line_of(lines, "green"), boxes["b"], 4)
    assert line_of(lines, "red")["conf"] > 0.9
    out = ocr({}, see(img))  # the tool: one line per text line, in reading order
    assert re.match(r'"Press the RED button" at \(\d+,\d+\) \d+x\d+ conf 0\.\d\d\n"then wait', out, re.IGNORECASE)


def test_ocr_reads_tiny_text_on_a_miniwob_sized_screen() -> None:
    """160x210 with 10 px text: the screen is enlarged inside OCR and the boxes come back in its own pixels."""
    boxes: dict[str, Box] = {}

    def paint(d: ImageDraw.ImageDraw) -> None:
        d.rectangle([0, 0, 159, 49], fill=(255, 255, 0))
        boxes["query"] = text_at(d, (3, 5), "Select the blue item, then OK", 10)
        d.rectangle([20, 120, 90, 140], fill=(210, 210, 210))
        boxes["button"] = text_at(d, (36, 124), "Cancel", 10)
        boxes["user"] = text_at(d, (8, 170), "Username: alice", 10)

    img = screen(160, 210, paint)
    lines = read_text(img)
    words = " ".join(t["text"] for t in lines).lower().split()
    for word in ("select", "the", "blue", "item,", "then", "ok", "cancel", "username:", "alice"):
        assert word in words, (word, words)
    assert_box_near(line_of(lines, "select"), boxes["query"], 3)
    assert_box_near(line_of(lines, "cancel"), boxes["button"], 3)
    assert_box_near(line_of(lines, "alice"), boxes["user"], 3)


def test_ocr_of_a_region_reports_screen_coordinates() -> None:
    boxes: dict[str, Box] = {}

    def paint(d: ImageDraw.ImageDraw) -> None:
        boxes["left"] = text_at(d, (10, 40), "Apple", 14)
        boxes["right"] = text_at(d, (180, 120), "Zebra", 14)

    img = screen(300, 200, paint)
    out = ocr({"left": 150, "top": 90, "width": 150, "height": 110}, see(img))
    assert "Zebra" in out and "Apple" not in out
    left, top = (int(v) for v in re.search(r"at \((\d+),(\d+)\)", out).groups())  # type: ignore[union-attr]
    assert abs(left - boxes["right"][0]) <= 3 and abs(top - boxes["right"][1]) <= 3


def test_concurrent_reads_share_one_engine_and_stay_correct() -> None:
    words = ["Alpha", "Bravo", "Charlie"]
    imgs = [screen(200, 80, lambda d, w=w: text_at(d, (20, 25), w, 20)) for w in words]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(read_text, imgs))
    assert [[t["text"] for t in r] for r in results] == [[w] for w in words]


# -- crop and zoom ----------------------------------------------------------------------------------------------------
def two_words() -> tuple[np.ndarray, dict[str, Box]]:
    boxes: dict[str, Box] = {}

    def paint(d: ImageDraw.ImageDraw) -> None:
        boxes["apple"] = text_at(d, (12, 20), "Apple", 12)
        boxes["zebra"] = text_at(d, (90, 160), "Zebra", 12)

    return screen(160, 210, paint), boxes


def test_crop_reads_its_region_only_and_saves_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "IMAGE_DIR", tmp_path)
    img, boxes = two_words()
    out = crop({"left": 0, "top": 0, "width": 80, "height": 60}, see(img))
    assert "apple" in out.lower() and "zebra" not in out.lower()
    saved = Path(re.search(r"saved as (\S+\.png)", out).group(1))  # type: ignore[union-attr]
    assert saved.parent == tmp_path and Image.open(saved).size == (80, 60)
    assert np.array_equal(np.asarray(Image.open(saved)), img[:60, :80])
    left, top = (int(v) for v in re.search(r'"Apple" at \((\d+),(\d+)\)', out).groups())  # type: ignore[union-attr]
    assert abs(left - boxes["apple"][0]) <= 3 and abs(top - boxes["apple"][1]) <= 3
    out = crop({"left": 60, "top": 140, "width": 100, "height": 70}, see(img))
    assert "zebra" in out.lower() and "apple" not in out.lower()


def test_zoom_enlarges_around_a_point_and_maps_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "IMAGE_DIR", tmp_path)
    img, boxes = two_words()
    cx, cy = (boxes["zebra"][0] + boxes["zebra"][2]) // 2, (boxes["zebra"][1] + boxes["zebra"][3]) // 2
    out = zoom({"x": cx, "y": cy, "factor": 3}, see(img))
    assert "zebra" in out.lower() and "apple" not in out.lower()
    saved = Path(re.search(r"saved as (\S+\.png)", out).group(1))  # type: ignore[union-attr]
    w, h = Image.open(saved).size
    assert abs(w - 160) <= 3 and abs(h - 210) <= 3
    left, top = (int(v) for v in re.search(r'"Zebra" at \((\d+),(\d+)\)', out).groups())  # type: ignore[union-attr]
    assert abs(left - boxes["zebra"][0]) <= 3 and abs(top - boxes["zebra"][1]) <= 3
    # near the edge the region shifts inside the screen rather than shrinking
    assert image.zoom_region(img, 2, 205, 2) == (0, 105, 80, 105)


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        (crop, {"left": 200, "top": 0, "width": 10, "height": 10}, "outside the 160x210 screenshot"),
        (crop, {"left": 100, "top": 0, "width": 100, "height": 10}, "width must be ≤ 60"),
        (crop, {"left": 0, "top": 150, "width": 10, "height": 100}, "height must be ≤ 60"),
        (crop, {"left": -1, "top": 0, "width": 10, "height": 10}, "left"),
        (crop, {"left": 0, "top": 0, "width": 0, "height": 10}, "width"),
        (zoom, {"x": 160, "y": 10}, "outside the 160x210 screenshot"),
        (zoom, {"x": 10, "y": 10, "factor": 20}, "factor"),
        (ocr, {"left": 10, "top": 300}, "outside the 160x210 screenshot"),
    ],
)
def test_bad_coordinates_are_the_models_error_with_a_clear_message(
    tool: Tool, args: dict[str, Any], message: str
) -> None:
    img, _ = two_words()
    with pytest.raises(ToolError) as e:
        tool(args, see(img))
    assert e.value.kind == "bad_args" and message in str(e.value)


@pytest.mark.parametrize("tool", image_tools(), ids=lambda t: t.name)
@pytest.mark.parametrize("obs", [Observation("text only"), None], ids=["no image", "no observation"])
def test_no_image_is_a_tool_error_not_a_crash(tool: Tool, obs: Observation | None) -> None:
    args = {"left": 0, "top": 0, "width": 5, "height": 5} if tool.name == "crop" else {}
    args = {"x": 1, "y": 1} if tool.name == "zoom" else args
    with pytest.raises(ToolError) as e:
        tool(args, obs)
    assert e.value.kind == "tool_failed" and "no image" in str(e.value)


def test_the_observation_is_not_part_of_the_schema() -> None:
    assert [t.name for t in image_tools()] == ["crop", "zoom", "ocr", "perceive"]
    assert all(t.wants_observation and "observation" not in t.parameters.get("properties", {}) for t in image_tools())
    assert set(crop.parameters["required"]) == {"left", "top", "width", "height"}
    assert zoom.parameters["properties"]["factor"]["maximum"] == 8
    assert "required" not in ocr.parameters and perceive.parameters["properties"] == {}


# -- the perceptor ----------------------------------------------------------------------------------------------------
def shapes_screen() -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    centres = {"red circle": (60, 60), "blue square": (200, 60), "green triangle": (320, 65), "button": (190, 190)}

    def paint(d: ImageDraw.ImageDraw) -> None:
        d.ellipse([35, 35, 85, 85], fill=(220, 30, 30))
        d.rectangle([175, 35, 225, 85], fill=(30, 60, 220))
        d.polygon([(320, 35), (290, 95), (350, 95)], fill=(20, 170, 60))
        d.rectangle([130, 170, 250, 210], fill=(210, 210, 210), outline=(120, 120, 120))
        text_at(d, (160, 180), "Submit", 16)

    return screen(400, 260, paint), centres


def test_perceive_names_each_shape_by_colour_with_a_box_around_its_centre() -> None:
    img, centres = shapes_screen()
    found = elements(see(img))
    for name in ("red circle", "blue square", "green triangle"):
        colour, kind = name.split()
        x, y = centres[name]
        match = [e for e in found if e.get("colour") == colour and e["kind"] == kind and contains(e, x, y)]
        assert len(match) == 1, (name, found)
    button = [e for e in found if "submit" in e["text"].lower()]
    assert len(button) == 1 and contains(button[0], *centres["button"]) and "grey" in button[0]["colour"]
    assert button[0]["width"] >= 100  # the button, not just its caption
    assert [e["id"] for e in found] == list(range(1, len(found) + 1))
    assert elements(see(img)) == found  # the same screen, the same numbers
    text = perceive({}, see(img))
    assert re.search(r"^1\. red circle at \(\d+,\d+\) \d+x\d+ centre \(6\d,6\d\)$", text, re.MULTILINE)
    assert text.index("red circle") < text.index("blue square") < text.index("green triangle") < text.index("Submit")


def test_perceive_merges_the_dom_without_repeating_its_text() -> None:
    def paint(d: ImageDraw.ImageDraw) -> None:
        text_at(d, (10, 10), "Welcome back", 14)
        d.rectangle([10, 60, 110, 90], fill=(210, 210, 210))
        text_at(d, (30, 66), "Sign in", 14)
        d.rectangle([150, 60, 190, 100], fill=(255, 0, 255))

    img = screen(240, 160, paint)
    dom = [
        {"ref": 7, "tag": "button", "text": "Sign in", "value": "", "left": 10, "top": 60, "width": 101, "height": 31},
        {"ref": 9, "tag": "div", "text": "", "value": "", "left": 150, "top": 60, "width": 41, "height": 41},
        {"ref": 12, "tag": "span", "text": "", "value": "", "left": 0, "top": 0, "width": 0, "height": 0},  # hidden
    ]
    found = elements(see(img, dom=dom))
    assert [(e["source"], e.get("ref")) for e in found] == [("text", None), ("dom", 7), ("dom", 9)]
    assert found[0]["text"].lower() == "welcome back"
    assert found[2]["colour"] == "magenta" and found[2]["shape"] == "square"
    text = perceive({}, see(img, dom=dom))
    assert text.lower().count("sign in") == 1 and "[7] button" in text and "[9] div (magenta square)" in text
    # the button's own pixels are the DOM button (and say what it looks like), not another element
    assert '[7] button "Sign in" (light grey rectangle)' in text and len(text.splitlines()) == 3


def test_perceive_of_an_empty_screen_says_so() -> None:
    assert perceive({}, see(screen(100, 100, lambda d: None))) == "No elements found; the screen is white 100%."


# -- through the loop -------------------------------------------------------------------------------------------------
class ScreenEnv(Env):
    """Shows one screenshot; any action ends the episode."""

    id = "test/screen"

    def __init__(self, img: np.ndarray) -> None:
        self.img = img

    def reset(self, seed: int) -> Observation:
        return Observation("A screen.", [self.img], {"valid_actions": ["done"]})

    def step(self, action: Action) -> StepResult:
        return StepResult(Observation("over"), terminated=True)

    def describe_actions(self) -> str:
        return "done: finish"

    @property
    def success(self) -> bool:
        return False


class ReadsScreen:
    """A scripted policy: one `ocr` call, then done."""

    name = "reads-screen"

    def __init__(self, tools: Sequence[Tool]) -> None:
        self.tools = list(tools)

    async def act(self, obs: Observation, env: Env, history: list[Step]) -> Decision:
        if not history:
            return Decision(Action("tool", name="ocr", args={}))
        return Decision(Action("act", name="done"))


async def test_ocr_through_the_agent_loop() -> None:
    img = screen(160, 210, lambda d: text_at(d, (8, 90), "Press the RED button", 11))
    traj = await run_episode(ScreenEnv(img), ReadsScreen(image_tools()), 0, Budget(max_steps=4))
    first = traj.steps[0]
    assert first.valid and first.error is None and "press the red button" in first.result.lower()
    assert traj.stop_reason == "terminated" and traj.num_steps == 2

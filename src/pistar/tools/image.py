"""Image tools, so that a text-only model can see: crop, zoom, OCR and a perceptor, on the last screenshot.

Each tool takes the loop's current Observation and acts on its last image. Tool results are text, so `crop` and
`zoom` return what the produced image shows (its colours, the text OCR reads in it, the shapes in it, coordinates
always in the full screenshot so that the model can click them) and also write the image to a content-addressed PNG
under IMAGE_DIR, named in the result: the trajectory keeps a path a person or a vision model can open, and equal
crops share one file, so concurrent episodes never race on shared "last image" state. Code that wants the pixels
themselves calls the pure functions `crop_image` and `zoom_image`: the same arguments give the same image.

OCR is RapidOCR (PP-OCRv4 in onnxruntime, models in the wheel, nothing downloaded), loaded once per process on first
use and run one image at a time. Screenshots here are small (MiniWoB: 160x210, 8-11 px fonts): small images are
enlarged (4x for MiniWoB) and padded, text boxes are grown more than RapidOCR's default before recognition, and the
boxes are mapped back. On 32 real MiniWoB screenshots that reads 98% of the words whole against 70% with RapidOCR's
defaults, which find the letters as well but run words together. The text-angle classifier is off: screens are
upright, and it turned whole lines upside down.

`perceive` is the perceptor (Mobile-Agent style): DOM elements where the observation has a DOM, OCR text no DOM
element already holds, and coloured shapes (connected regions of one named colour, e.g. "red circle") where the
pixels show more than the DOM, as one numbered list in reading order. `elements(obs)` is the same list as dicts and
`perceive_observation(obs)` its text, for code such as a team's perceptor role.
"""

# No `from __future__ import annotations`: @tool builds the schema from real annotation objects (Pixel, Size).

import difflib
import hashlib
import math
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
from pydantic import Field

from pistar.records import Observation, to_image
from pistar.tools.base import Tool, ToolError, tool

__all__ = [
    "crop",
    "crop_image",
    "elements",
    "image_tools",
    "ocr",
    "perceive",
    "perceive_observation",
    "read_text",
    "zoom",
    "zoom_image",
]

IMAGE_DIR = Path(tempfile.gettempdir()) / "pistar-images"
MIN_TEXT_CONF = 0.5
UNCLIP = 2.0  # how far the detector's text boxes grow before recognition
MAX_SHAPES = 30
MAX_CHARS = 120  # of one element's text in a list

Pixel = Annotated[int, Field(ge=0)]
Size = Annotated[int, Field(ge=1)]

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ENGINE: Any = None
_LOCK = threading.Lock()  # guards the engine and the cache; one OCR at a time, as onnxruntime already uses all cores
_CACHE: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
_CACHE_SIZE = 32


# -- images ---------------------------------------------------------------------------------------
def to_array(img: Any) -> np.ndarray:
    """Any image pistar holds (array, PIL image, file path) as an HxWx3 RGB uint8 array."""
    if isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        return img
    return np.asarray(to_image(img).convert("RGB"))


def last_image(observation: Observation | None) -> np.ndarray:
    """The observation's last image; a tool error the model can read when there is none."""
    if observation is None or not observation.images:
        raise ToolError("tool_failed", "there is no image in the current observation: this environment shows no screen")
    return to_array(observation.images[-1])


def _check_region(img: np.ndarray, left: int, top: int, width: int, height: int, what: str) -> None:
    h, w = img.shape[:2]
    size = f"the {w}x{h} screenshot"
    if left < 0 or top < 0 or width < 1 or height < 1:
        raise ToolError("bad_args", f"{what}: left and top must be ≥ 0 and width and height ≥ 1")
    if left >= w or top >= h:
        raise ToolError("bad_args", f"{what}: ({left},{top}) is outside {size}: left must be < {w} and top < {h}")
    if left + width > w:
        end = f"left+width = {left + width} is past the right edge of {size}"
        raise ToolError("bad_args", f"{what}: {end}: width must be ≤ {w - left}")
    if top + height > h:
        end = f"top+height = {top + height} is past the bottom of {size}"
        raise ToolError("bad_args", f"{what}: {end}: height must be ≤ {h - top}")


def crop_image(img: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """The region (left, top) width x height; a ToolError naming the limit when it leaves the image."""
    _check_region(img, left, top, width, height, "crop")
    return img[top : top + height, left : left + width].copy()


def zoom_region(img: np.ndarray, x: int, y: int, factor: float) -> tuple[int, int, int, int]:
    """The box (left, top, width, height) of 1/factor of the image centred on (x, y), shifted to stay inside."""
    h, w = img.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        raise ToolError("bad_args", f"zoom: ({x},{y}) is outside the {w}x{h} screenshot: x must be < {w} and y < {h}")
    rw, rh = max(1, round(w / factor)), max(1, round(h / factor))
    left = min(max(0, round(x - rw / 2)), w - rw)
    top = min(max(0, round(y - rh / 2)), h - rh)
    return left, top, rw, rh


def zoom_image(img: np.ndarray, x: int, y: int, factor: float = 2) -> np.ndarray:
    """1/factor of the image around (x, y), enlarged factor times."""
    left, top, rw, rh = zoom_region(img, x, y, factor)
    part = img[top : top + rh, left : left + rw]
    return cv2.resize(part, (round(rw * factor), round(rh * factor)), interpolation=cv2.INTER_CUBIC)


def save_image(img: np.ndarray) -> Path:
    """Write a PNG named by its content under IMAGE_DIR (atomically: concurrent equal writes are harmless)."""
    digest = hashlib.blake2b(img.tobytes() + str(img.shape).encode(), digest_size=8).hexdigest()
    path = IMAGE_DIR / f"{digest}.png"
    if not path.exists():
        IMAGE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        to_image(img).save(tmp, format="PNG")
        tmp.replace(path)
    return path


# -- OCR ------------------------------------------------------------------------------------------
def _engine() -> Any:
    global _ENGINE
    if _ENGINE is None:
        from rapidocr_onnxruntime import RapidOCR

        _ENGINE = RapidOCR()
    return _ENGINE


def _upscale(h: int, w: int) -> int:
    """OCR keeps the spaces between words in tiny fonts when they are enlarged (MiniWoB's 160x210: 4x); screens
    of 500 px and more read perfectly as they are, and enlarging them only costs time."""
    return max(1, min(4, 960 // max(h, w)))


def read_text(img: np.ndarray) -> list[dict[str, Any]]:
    """The text lines OCR reads in an RGB image, in reading order: {text, conf, left, top, width, height} in the
    image's own pixels. Results are cached by content, so the perceptor and an `ocr` call on one screen read once."""
    key = hashlib.blake2b(img.tobytes() + str(img.shape).encode(), digest_size=16).hexdigest()
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _ocr(img)
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        return [dict(line) for line in _CACHE[key]]


def _ocr(img: np.ndarray) -> list[dict[str, Any]]:
    h, w = img.shape[:2]
    scale = _upscale(h, w)
    big = cv2.resize(img, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR) if scale > 1 else img
    pad = 8 * scale  # text touching the edge is missed without a margin; pad with the background, not a smear
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    fill = [int(c) for c in np.median(border, axis=0)]
    big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=fill)
    # BGR, as the engine wants. Boxes unclipped more than the default 1.6 give the recognizer the margins it needs
    # to see word gaps: 98% of MiniWoB's words come out whole against 85%.
    bgr = np.ascontiguousarray(big[:, :, ::-1])
    result, _ = _engine()(bgr, use_cls=False, unclip_ratio=UNCLIP, box_thresh=0.5, text_score=MIN_TEXT_CONF)
    lines = []
    for points, text, conf in result or []:
        text = _stray_cjk(str(text)).strip()
        if not text or float(conf) < MIN_TEXT_CONF:
            continue
        pts = (np.asarray(points, dtype=float) - pad) / scale
        x0, y0 = np.clip(pts.min(axis=0), 0, [w, h])
        x1, y1 = np.clip(pts.max(axis=0), 0, [w, h])
        box = {"left": round(x0), "top": round(y0), "width": max(1, round(x1 - x0)), "height": max(1, round(y1 - y0))}
        lines.append({"text": text, "conf": round(float(conf), 2), **_ink(img, box)})
    return reading_order(lines)


def _ink(img: np.ndarray, box: dict[str, int]) -> dict[str, int]:
    """The box shrunk to the pixels that differ from its edges' colour: the grown detector boxes, tight again."""
    part = img[box["top"] : box["top"] + box["height"], box["left"] : box["left"] + box["width"]].astype(np.int16)
    if part.shape[0] < 3 or part.shape[1] < 3:
        return box
    edges = np.concatenate([part[0], part[-1], part[:, 0], part[:, -1]])
    ys, xs = np.nonzero(np.abs(part - np.median(edges, axis=0)).sum(axis=2) > 80)
    if not len(ys):
        return box
    return {
        "left": box["left"] + int(xs.min()),
        "top": box["top"] + int(ys.min()),
        "width": int(xs.max() - xs.min()) + 1,
        "height": int(ys.max() - ys.min()) + 1,
    }


def _stray_cjk(text: str) -> str:
    """The recognizer also knows Chinese, and reads an icon as a stray ideograph ("☆高" for a star and a bin):
    one or two ideographs in a line are dropped, real Chinese text (three or more) is kept."""
    return text if len(_CJK.findall(text)) >= 3 else _CJK.sub("", text)


def _ocr_lines(lines: list[dict[str, Any]]) -> str:
    return "\n".join(
        f'"{_clip(t["text"])}" at ({t["left"]},{t["top"]}) {t["width"]}x{t["height"]} conf {t["conf"]:.2f}'
        for t in lines
    )


# -- shapes ---------------------------------------------------------------------------------------
COLOURS = (
    *("black", "dark grey", "grey", "light grey", "white"),
    *("red", "maroon", "orange", "brown", "yellow", "olive", "green", "dark green", "cyan", "teal", "blue", "navy"),
    *("purple", "magenta", "pink"),
)
_C = {name: i for i, name in enumerate(COLOURS)}
# OpenCV hue (0-179, i.e. degrees / 2) -> colour, for saturated pixels
_HUES = np.array(
    [
        _C["red"] if h < 8 or h >= 170 else
        _C["orange"] if h < 20 else
        _C["yellow"] if h < 34 else
        _C["green"] if h < 80 else
        _C["cyan"] if h < 100 else
        _C["blue"] if h < 128 else
        _C["purple"] if h < 148 else
        _C["magenta"] if h < 160 else
        _C["pink"]
        for h in range(180)
    ]
)  # fmt: skip
# dark shades: the HTML colours maroon, olive, green, teal, navy and purple are half as bright as red, yellow, ...
_SHADES = {"red": "maroon", "orange": "brown", "yellow": "olive", "green": "dark green", "cyan": "teal"}
_SHADES |= {"blue": "navy", "magenta": "purple"}
_DARK = np.array([_C[_SHADES.get(name, name)] for name in COLOURS])


def colour_labels(img: np.ndarray) -> np.ndarray:
    """Each pixel's colour name, as an index into COLOURS."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    s, v = hsv[..., 1].astype(np.int16), hsv[..., 2].astype(np.int16)
    labels = _HUES[hsv[..., 0]]
    labels = np.where(v < 160, _DARK[labels], labels)
    labels = np.where(np.isin(labels, (_C["red"], _C["magenta"])) & (s < 130) & (v > 180), _C["pink"], labels)
    greys = np.digitize(v, [50, 110, 190, 235])  # black, dark grey, grey, light grey, white
    return np.where((s < 50) | (v < 50), greys, labels)


def colour_summary(img: np.ndarray, labels: np.ndarray | None = None) -> str:
    """'white 70%, red 20%': the colours covering at least 5% of the image."""
    labels = colour_labels(img) if labels is None else labels
    counts = np.bincount(labels.ravel(), minlength=len(COLOURS)) / labels.size
    top = [(COLOURS[i], counts[i]) for i in np.argsort(-counts) if counts[i] >= 0.05][:4]
    return ", ".join(f"{name} {share:.0%}" for name, share in top)


def detect_shapes(img: np.ndarray, text_boxes: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Regions of one colour other than the background's: buttons, icons, game objects. Thin strokes (text,
    outlines, anti-aliasing) are opened away and regions inside a text box are glyphs, so neither is listed; what
    the opening shaved off a region (a triangle's tip) is given back before its box and kind are measured."""
    h, w = img.shape[:2]
    labels = colour_labels(img)
    counts = np.bincount(labels.ravel(), minlength=len(COLOURS))
    background = int(counts.argmax())
    min_area, max_area = max(25, h * w // 1000), h * w // 2
    kernel = np.ones((3, 3), np.uint8)
    found = []
    for colour in np.flatnonzero(counts >= min_area):
        if colour == background:
            continue
        raw = (labels == colour).astype(np.uint8)
        n, components, stats, _ = cv2.connectedComponentsWithStats(cv2.morphologyEx(raw, cv2.MORPH_OPEN, kernel))
        for i in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[i])
            if not min_area <= area <= max_area:
                continue
            x0, y0, x1, y1 = max(0, x - 1), max(0, y - 1), min(w, x + bw + 1), min(h, y + bh + 1)
            region = cv2.dilate((components[y0:y1, x0:x1] == i).astype(np.uint8), kernel) & raw[y0:y1, x0:x1]
            ys, xs = np.nonzero(region)
            box = {"left": x0 + int(xs.min()), "top": y0 + int(ys.min())}
            box |= {"width": int(xs.max() - xs.min()) + 1, "height": int(ys.max() - ys.min()) + 1}
            if any(_inside(box, t) >= 0.6 for t in text_boxes):
                continue
            kind = shape_kind(region[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
            found.append({"kind": kind, "colour": COLOURS[colour], "area": area, **box})
    found.sort(key=lambda s: -s.pop("area"))
    return found[:MAX_SHAPES]


def shape_kind(mask: np.ndarray) -> str:
    """square, rectangle, triangle, diamond, circle, ellipse or shape, from how much of its box the region fills
    and its outline."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return "shape"
    contour = max(contours, key=cv2.contourArea)
    perimeter = cv2.arcLength(contour, True)
    if perimeter <= 0:
        return "shape"
    filled = np.zeros(mask.shape, np.uint8)  # holes (a button's caption) do not count against the fill
    cv2.drawContours(filled, [contour], -1, 1, cv2.FILLED)
    bh, bw = mask.shape
    fill, square = float(filled.sum()) / (bw * bh), 0.8 <= bw / bh <= 1.25
    roundness = 4 * math.pi * cv2.contourArea(contour) / perimeter**2
    vertices = len(cv2.approxPolyDP(contour, 0.04 * perimeter, True))
    solid = cv2.contourArea(contour) >= 0.9 * cv2.contourArea(cv2.convexHull(contour))  # no bays cut into it
    if fill > 0.9:
        return "square" if square else "rectangle"
    if not solid:
        return "shape"
    if fill < 0.7 and vertices <= 5:
        rows = filled.sum(axis=1)  # a triangle is wide at one end and narrow at the other, a diamond in the middle
        top, bottom = rows[: max(1, bh // 5)].mean(), rows[-max(1, bh // 5) :].mean()
        ends = filled.sum(axis=0)
        left, right = ends[: max(1, bw // 5)].mean(), ends[-max(1, bw // 5) :].mean()
        lopsided = max(top, bottom) > 2.5 * min(top, bottom) or max(left, right) > 2.5 * min(left, right)
        return "triangle" if lopsided else "diamond"
    if roundness > 0.75 and 0.7 <= fill <= 0.9:
        return "circle" if square else "ellipse"
    return "shape"


# -- the perceptor --------------------------------------------------------------------------------
def elements(obs: Observation | None) -> list[dict[str, Any]]:
    """The screen as elements in reading order: {id, source ("dom", "text" or "shape"), kind, text, left, top,
    width, height}, plus ref and value for the DOM, colour for shapes and wordless DOM boxes (and shape where the
    pixels say what a DOM box is), conf for OCR text."""
    img = last_image(obs)
    raw = (obs.extras.get("dom") if obs else None) or []
    dom = [_dom_element(e) for e in raw if e.get("width", 0) > 0 and e.get("height", 0) > 0]
    if dom:
        labels = colour_labels(img)
        background = int(np.bincount(labels.ravel()).argmax())
        for d in dom:  # the colour is what a box without words shows: colour swatches, shapes, big digits
            if len(d["text"].strip()) <= 2 and not d["kind"].startswith(("input", "textarea", "select")):
                d["colour"] = _box_colour(labels, d, background)
    lines = read_text(img)
    return _merge(dom, lines, detect_shapes(img, lines))


def _box_colour(labels: np.ndarray, box: dict[str, Any], background: int) -> str | None:
    """The commonest colour inside the box's border other than the page's background, unless it covers under 5% of
    the box (a swatch as white as the page is white, not the colour of its outline)."""
    top, left = max(0, box["top"] + 1), max(0, box["left"] + 1)
    part = labels[top : box["top"] + box["height"] - 1, left : box["left"] + box["width"] - 1]
    if not part.size:
        return None
    counts = np.bincount(part.ravel(), minlength=len(COLOURS))
    others = counts.copy()
    others[background] = 0
    return COLOURS[int(others.argmax() if others.max() >= 0.05 * part.size else counts.argmax())]


def _merge(
    dom: list[dict[str, Any]], lines: list[dict[str, Any]], shapes: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One numbered list: the DOM, the text no DOM element holds, the shapes no DOM element is, and a text inside a
    shape as that shape's label (a button's caption)."""
    texts = [{"source": "text", "kind": "text", **t} for t in lines if not any(_holds(d, t) for d in dom)]
    kept = []
    for s in shapes:
        same = [d for d in dom if _iou(s, d) >= 0.5]
        for d in same:  # the DOM says "polygon"; the pixels say "red triangle"
            d["colour"], d["shape"] = d.get("colour") or s["colour"], d.get("shape") or s["kind"]
        if not same:
            kept.append({"source": "shape", "text": "", **s})
    shapes = kept
    for s in sorted(shapes, key=_area):  # a label goes to the smallest shape around it
        inner = [t for t in texts if _inside(t, s) >= 0.8 and _area(t) < _area(s)]
        s["text"] = " ".join(t["text"] for t in inner)
        texts = [t for t in texts if t not in inner]
    return [{"id": i, **e} for i, e in enumerate(reading_order(dom + texts + shapes), start=1)]


def perceive_observation(obs: Observation | None) -> str:
    """The perceptor's text: one numbered line per element, or a note that the screen looks empty."""
    found = elements(obs)
    if not found:
        return f"No elements found; the screen is {colour_summary(last_image(obs))}."
    return "\n".join(describe(e) for e in found)


def describe(e: dict[str, Any]) -> str:
    """`3. [5] button "Submit" at (10,70) 50x20` for a DOM element (click it by its ref), `4. red circle at
    (40,90) 20x20 centre (50,100)` for what only the pixels show (click its centre)."""
    box = f"at ({e['left']},{e['top']}) {e['width']}x{e['height']}"
    text = f' "{_clip(e["text"])}"' if e.get("text") else ""
    if e["source"] == "dom":
        value = f' value "{_clip(e["value"])}"' if e.get("value") else ""
        look = " ".join(filter(None, (e.get("colour"), e.get("shape"))))
        look = f" ({look})" if look else ""
        return f"{e['id']}. [{e['ref']}] {e['kind']}{text}{value}{look} {box}"
    name = "text" if e["source"] == "text" else f"{e['colour']} {e['kind']}"
    centre = f"centre ({e['left'] + e['width'] // 2},{e['top'] + e['height'] // 2})"
    return f"{e['id']}. {name}{text} {box} {centre}"


def _dom_element(e: dict[str, Any]) -> dict[str, Any]:
    box = {k: round(float(e[k])) for k in ("left", "top", "width", "height")}
    text, value = str(e.get("text") or ""), str(e.get("value") or "")
    return {
        "source": "dom",
        "kind": str(e.get("tag") or "element"),
        "ref": e.get("ref"),
        "text": text,
        "value": value,
        **box,
    }


def _holds(dom: dict[str, Any], line: dict[str, Any]) -> bool:
    """Whether a DOM element already says what OCR read: the text's centre is in its box and its text or value
    contains most of the characters (OCR drops spaces and confuses letters, so compare loosely)."""
    cx, cy = line["left"] + line["width"] / 2, line["top"] + line["height"] / 2
    if not (dom["left"] <= cx <= dom["left"] + dom["width"] and dom["top"] <= cy <= dom["top"] + dom["height"]):
        return False
    seen = _norm(line["text"])
    if not seen:
        return True
    said = _norm(dom["text"] + " " + dom["value"])
    matched = sum(b.size for b in difflib.SequenceMatcher(None, seen, said, autojunk=False).get_matching_blocks())
    return matched >= 0.6 * len(seen)


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def _inside(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The share of box a's area that lies inside box b."""
    return _overlap(a, b) / max(1, _area(a))


def _area(box: dict[str, Any]) -> int:
    return box["width"] * box["height"]


def _iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    inter = _overlap(a, b)
    return inter / max(1, _area(a) + _area(b) - inter)


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> float:
    dx = min(a["left"] + a["width"], b["left"] + b["width"]) - max(a["left"], b["left"])
    dy = min(a["top"] + a["height"], b["top"] + b["height"]) - max(a["top"], b["top"])
    return max(0, dx) * max(0, dy)


def reading_order(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top to bottom, then left to right within a row: boxes whose middles are within half a height of the row's
    first box share its row. Deterministic, so the same screen always gets the same numbers."""
    rows: list[list[dict[str, Any]]] = []
    for e in sorted(items, key=lambda e: (e["top"], e["left"])):
        if rows and abs(_middle(e) - _middle(rows[-1][0])) < min(e["height"], rows[-1][0]["height"]) / 2:
            rows[-1].append(e)
        else:
            rows.append([e])
    return [e for row in rows for e in sorted(row, key=lambda e: (e["left"], e["top"]))]


def _middle(box: dict[str, Any]) -> float:
    return box["top"] + box["height"] / 2


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


# -- the tools ------------------------------------------------------------------------------------
def _region_report(img: np.ndarray, offset: tuple[int, int], scale: float) -> str:
    """What a produced image shows, with coordinates mapped back to the full screenshot."""
    lines = read_text(img)
    shapes = detect_shapes(img, lines)
    ox, oy = offset

    def back(e: dict[str, Any]) -> dict[str, Any]:
        return e | {
            "left": ox + math.floor(e["left"] / scale),
            "top": oy + math.floor(e["top"] / scale),
            "width": max(1, round(e["width"] / scale)),
            "height": max(1, round(e["height"] / scale)),
        }

    listed = [describe(e) for e in _merge([], [back(t) for t in lines], [back(s) for s in shapes])]
    body = "\n".join(listed) if listed else "No text or shapes found in it."
    return f"Colours: {colour_summary(img)}.\n{body}"


@tool
def crop(left: Pixel, top: Pixel, width: Size, height: Size, observation: Observation | None = None) -> str:
    """Look closely at a region of the screenshot: the text read in it and the shapes in it, with coordinates in the
    full screenshot. (left, top) is the region's top-left corner in pixels."""
    img = last_image(observation)
    part = crop_image(img, left, top, width, height)
    h, w = img.shape[:2]
    head = f"Cropped ({left},{top}) {width}x{height} of the {w}x{h} screenshot, saved as {save_image(part)}."
    head += " Coordinates below are in the full screenshot."
    return head + "\n" + _region_report(part, (left, top), 1.0)


@tool
def zoom(
    x: Pixel, y: Pixel, factor: Annotated[float, Field(ge=1, le=8)] = 2, observation: Observation | None = None
) -> str:
    """Zoom into the screenshot around the point (x, y), `factor` times: the text read there and the shapes, with
    coordinates in the full screenshot."""
    img = last_image(observation)
    left, top, rw, rh = zoom_region(img, x, y, factor)
    big = zoom_image(img, x, y, factor)
    h, w = img.shape[:2]
    head = (
        f"Zoomed {factor:g}x on ({x},{y}): the region ({left},{top}) {rw}x{rh} of the {w}x{h} screenshot, "
        f"enlarged to {big.shape[1]}x{big.shape[0]} and saved as {save_image(big)}. Coordinates below are in the "
        "full screenshot."
    )
    return head + "\n" + _region_report(big, (left, top), big.shape[1] / rw)


@tool
def ocr(
    left: Pixel | None = None,
    top: Pixel | None = None,
    width: Size | None = None,
    height: Size | None = None,
    observation: Observation | None = None,
) -> str:
    """Read the text on the screenshot, or in the region (left, top) width x height: one line per text line with its
    box (left,top) width x height in screenshot pixels."""
    img = last_image(observation)
    ox, oy = left or 0, top or 0
    if (left, top, width, height) != (None, None, None, None):
        h, w = img.shape[:2]
        img = crop_image(img, ox, oy, width or max(1, w - ox), height or max(1, h - oy))
    lines = [t | {"left": t["left"] + ox, "top": t["top"] + oy} for t in read_text(img)]
    return _ocr_lines(lines) if lines else "No text found."


@tool
def perceive(observation: Observation | None = None) -> str:
    """List what is on the screen, numbered in reading order: page elements by [ref] (click them by ref), text and
    coloured shapes with their box and centre (click them by the centre's coordinates)."""
    return perceive_observation(observation)


def image_tools() -> list[Tool]:
    """crop, zoom, ocr and perceive."""
    return [crop, zoom, ocr, perceive]

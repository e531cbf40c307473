"""ToolQA: generated questions with known answers that a model cannot know from its weights, only compute or look up.

Kinds (`toolqa/<kind>`), each deterministic per seed:
- arithmetic: exact value of a multi-step expression over big integers (calculator or python).
- data: an aggregate (filtered mean, median, filtered count, argmax, filtered sum) of a generated CSV table given
  in the question (python).
- units: conversions with odd factors (mpg to L/100 km, °F to K, knots to mph, ...), to 1e-3 relative (calculator).
- lookup: facts about invented towns, companies and people, found only in a generated corpus of documents under
  `$PISTAR_HOME/toolqa/corpus` (search); half the questions need two hops (the town where X is headquartered).
- mixed: the seed picks one of the four.

One answer ends the episode; reward 1 if it is right. Numbers are read leniently (commas, units, "the answer is"),
within a per-kind tolerance (exact for integers); names are compared case- and space-insensitively.

The expert really uses the tools: the tools from `env.tools()` report their outputs back to the environment (as the
agent loop reports them to a model's next prompt), and the expert reads its answer out of them. Given tools that are
not the environment's, it cannot see their output and answers the generator's value after making the same calls.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import shutil
import statistics
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from pistar.downloads import pistar_home
from pistar.envs.base import Env, StepResult
from pistar.records import Action, Observation
from pistar.tools.base import Tool, ToolError

KINDS = ("arithmetic", "data", "units", "lookup", "mixed")
_BASE_KINDS = KINDS[:-1]
_PREV = "<<prev>>"  # in a hop's args and pattern: the value the previous hop found
_NAME = r"[A-Z][a-z]+(?: [A-Z][a-z]+)*"
CORPUS_VERSION = 1


@dataclass(frozen=True)
class Hop:
    """One tool call of the expert's plan and where its result is in the output (regex group 1)."""

    tool: str
    args: dict[str, Any]
    pattern: str


@dataclass(frozen=True)
class Task:
    kind: str
    question: str
    answer: str  # canonical: an exact number's text, or a name
    numeric: bool
    rel_tol: float = 0.0  # both 0: exact
    abs_tol: float = 0.0
    plan: tuple[Hop, ...] = ()


# -- checking answers --------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?!\d)")
_MARKER = re.compile(r"=|≈|:|\bis\b|\banswer\b", re.IGNORECASE)
_FILLER = frozenset(["the", "a", "an", "answer", "is", "it", "its", "final", "river", "town", "city", "of"])


def parse_number(text: str) -> Fraction | None:
    """The number an answer states: after its last "=", "≈", ":" or "is" if one is followed by a number, else the
    first; thousands commas and unit words allowed ("≈ 6.27 L/100 km", "The answer is 1,234,567.")."""
    text = text.replace("−", "-").replace("\u2009", " ").replace("\u202f", " ")
    text = re.sub(r"(?:/|\bper)\s*100\s*km", " ", text, flags=re.IGNORECASE)
    markers = list(_MARKER.finditer(text))
    tail = _NUMBER.search(text, markers[-1].end()) if markers else None
    found = tail or _NUMBER.search(text)
    if found is None:
        return None
    try:
        return Fraction(found.group().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def normalise(text: str) -> str:
    """Lower case, alphanumeric words only, without articles and filler ("the river Selwyn." -> "selwyn")."""
    return " ".join(w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _FILLER)


def check(task: Task, text: str) -> bool:
    """Whether `text` answers `task` correctly."""
    if not task.numeric:
        return bool(normalise(text)) and normalise(text) == normalise(task.answer)
    got, want = parse_number(text), Fraction(task.answer)
    if got is None:
        return False
    if task.rel_tol == 0 and task.abs_tol == 0:
        return got == want
    return abs(got - want) <= max(Fraction(task.rel_tol) * abs(want), Fraction(task.abs_tol))


# -- invented names ----------------------------------------------------------------------------------------------
_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n"] + [
    *["p", "qu", "r", "s", "sk", "t", "th", "tr", "v", "w", "z", "st", "sh"]
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y", "a", "e", "o"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "nd", "rk", "m", "x", "ck", "lt"]


class _Names:
    """Invented capitalised words, none used twice in a world (so every name means one entity)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3), suffix: str = "") -> str:
        while True:
            n = self.rng.randint(*syllables)
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n))
            w += self.rng.choice(_CODAS)
            w = (w + suffix).capitalize()
            if w not in self.used and 5 <= len(w) <= 13:
                self.used.add(w)
                return w

    def person(self) -> str:
        return f"{self.word((1, 2))} {self.word((2, 3))}"


# -- arithmetic --------------------------------------------------------------------------------------------------
def _expression(rng: random.Random, leaves: int) -> tuple[str, str, int]:
    """(shown with × and −, Python, exact value) of a random expression tree with `leaves` numbers."""
    if leaves == 1:
        x = rng.randint(10 ** rng.randint(1, 3), 99_999)
        if rng.random() < 0.15:
            x = x % 997 + 3
            return f"{x}²", f"{x}**2", x * x
        return str(x), str(x), x
    left_n = rng.randint(1, leaves - 1)
    (ls, lc, lv), (rs, rc, rv) = _expression(rng, left_n), _expression(rng, leaves - left_n)
    ls, lc = (f"({ls})", f"({lc})") if left_n > 1 else (ls, lc)
    rs, rc = (f"({rs})", f"({rc})") if leaves - left_n > 1 else (rs, rc)
    op = rng.choices("+-*", weights=(3, 3, 4))[0]
    value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
    return f"{ls} {dict(zip('+-*', '+−×', strict=True))[op]} {rs}", f"{lc} {op} {rc}", value


def _arithmetic(rng: random.Random) -> Task:
    shown, code, value = _expression(rng, rng.randint(4, 6))
    question = f"Compute the exact value of {shown}."
    return Task("arithmetic", question, str(value), True, plan=(Hop("calculator", {"expression": code}, _CALC),))


_CALC = r"\A\s*(-?[\d.]+(?:e[-+]?\d+)?)\s*\Z"
_PRINTED = r"\A(.+?)\n\[exit code 0\]\s*\Z"


# -- units -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Conversion:
    question: str  # {x} is the quantity
    expression: str  # the calculator expression, {x} the quantity
    fn: Callable[[float], float]  # the same conversion, computed independently for the ground truth
    low: float
    high: float


_CONVERSIONS = (
    _Conversion(
        "A car does {x} miles per US gallon. What is its fuel consumption in liters per 100 km?",
        "100 * 3.785411784 / (1.609344 * {x})",
        lambda x: 378.5411784 / (1.609344 * x),
        12,
        70,
    ),
    _Conversion(
        "A car uses {x} liters per 100 km. How many miles per US gallon is that?",
        "100 * 3.785411784 / (1.609344 * {x})",
        lambda x: 378.5411784 / (1.609344 * x),
        3,
        20,
    ),
    _Conversion(
        "Convert {x} °F to kelvin.", "({x} - 32) * 5 / 9 + 273.15", lambda x: (x - 32) / 1.8 + 273.15, -40, 250
    ),
    _Conversion(
        "Convert {x} K to degrees Fahrenheit.",
        "({x} - 273.15) * 9 / 5 + 32",
        lambda x: (x - 273.15) * 1.8 + 32,
        190,
        420,
    ),
    _Conversion(
        "A ship sails at {x} knots. What is its speed in miles per hour?",
        "{x} * 1852 / 1609.344",
        lambda x: x * 1.852 / 1.609344,
        3,
        45,
    ),
    _Conversion(
        "A tyre is inflated to {x} psi. What is that pressure in bar?",
        "{x} * 6894.757293168 / 100000",
        lambda x: x * 0.06894757293168,
        10,
        120,
    ),
    _Conversion(
        "A farm covers {x} acres. How many hectares is that?",
        "{x} * 0.40468564224",
        lambda x: x / 2.4710538146716534,
        5,
        900,
    ),
    _Conversion(
        "Someone weighs {x} stone. What is that in kilograms?", "{x} * 6.35029318", lambda x: x * 14 * 0.45359237, 6, 30
    ),
    _Conversion(
        "A crate holds {x} cubic feet. How many liters is that?",
        "{x} * 28.316846592",
        lambda x: x * 0.3048**3 * 1000,
        2,
        400,
    ),
    _Conversion(
        "An engine makes {x} mechanical horsepower. How many kilowatts is that?",
        "{x} * 0.745699872",
        lambda x: x * 550 * 0.3048 * 4.4482216152605 / 1000,
        40,
        900,
    ),
    _Conversion(
        "A heater puts out {x} BTU (IT). How many kilojoules is that?",
        "{x} * 1.05505585262",
        lambda x: x * 1.05505585262,
        100,
        90000,
    ),
    _Conversion(
        "A glacier moves {x} furlongs per fortnight. What is that in millimeters per hour?",
        "{x} * 201168 / (14 * 24)",
        lambda x: x * 201.168 * 1000 / 336,
        1,
        50,
    ),
    _Conversion(
        "A bolt is tightened to {x} pound-feet. What is that torque in newton-meters?",
        "{x} * 1.3558179483314004",
        lambda x: x * 0.3048 * 4.4482216152605,
        5,
        400,
    ),
    _Conversion(
        "The barometer reads {x} inches of mercury. What is that in hectopascals?",
        "{x} * 33.8638866667",
        lambda x: x * 33.8638866667,
        27,
        32,
    ),
    _Conversion(
        "A rope is {x} fathoms long. How many meters is that?", "{x} * 1.8288", lambda x: x * 6 * 0.3048, 2, 300
    ),
)


def _units(rng: random.Random) -> Task:
    conv = rng.choice(_CONVERSIONS)
    x = round(rng.uniform(conv.low, conv.high), 1)
    question = conv.question.format(x=x) + " Give at least 4 significant figures."
    expression = conv.expression.format(x=x)
    return Task(
        "units", question, repr(conv.fn(x)), True, 1e-3, 1e-3, (Hop("calculator", {"expression": expression}, _CALC),)
    )


# -- data --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Column:
    name: str
    low: float
    high: float
    decimals: int  # 0: an integer column


@dataclass(frozen=True)
class _Table:
    what: str  # "employees of a company"
    key: str  # the column naming each row
    categories: dict[str, tuple[str, ...]]
    numbers: tuple[_Column, ...]


_TABLES = (
    _Table(
        "employees of a company",
        "name",
        {"department": ("Sales", "Engineering", "Support", "Finance", "Legal")},
        (_Column("age", 21, 64, 0), _Column("salary", 38000, 145000, 0), _Column("hours_per_week", 20, 50, 1)),
    ),
    _Table(
        "daily readings of weather stations",
        "station",
        {"region": ("North", "South", "Coast", "Highlands", "Valley")},
        (_Column("temp_c", 4, 35, 1), _Column("rain_mm", 0, 120, 1), _Column("wind_kmh", 0, 90, 0)),
    ),
    _Table(
        "orders of a web shop",
        "order_id",
        {"product": ("Widget", "Gadget", "Sprocket", "Gizmo", "Flange"), "region": ("East", "West", "Central")},
        (_Column("units", 1, 60, 0), _Column("unit_price", 2, 250, 2)),
    ),
)


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _data(rng: random.Random) -> Task:
    table = rng.choice(_TABLES)
    n = rng.randint(20, 40)
    names = _Names(rng)
    if table.key == "order_id":
        keys: list[Any] = rng.sample(range(1000, 9999), n)
    else:
        keys = [names.person() if table.key == "name" else names.word() for _ in range(n)]
    rows: list[dict[str, Any]] = []
    for key in keys:
        row: dict[str, Any] = {table.key: key}
        for cat, values in table.categories.items():
            row[cat] = rng.choice(values)
        for column in table.numbers:
            v = rng.uniform(column.low, column.high)
            row[column.name] = round(v, column.decimals) if column.decimals else int(round(v))
        rows.append(row)
    col = rng.choice(table.numbers)
    cat = rng.choice(list(table.categories))
    counts = {v: sum(r[cat] == v for r in rows) for v in table.categories[cat]}
    value = rng.choice([v for v, c in counts.items() if c >= 3] or [max(counts, key=lambda v: counts[v])])
    selected = [float(r[col.name]) for r in rows if r[cat] == value]
    question_type = rng.choice(("mean", "median", "count", "argmax", "sum"))
    if question_type == "argmax":  # make the largest value unique, so "which row" has one answer
        best = max(rows, key=lambda r: r[col.name])
        best[col.name] = round(best[col.name] + 10**-col.decimals, col.decimals) if col.decimals else best[col.name] + 1
    header = [table.key, *table.categories, *(c.name for c in table.numbers)]
    decimals = {c.name: c.decimals for c in table.numbers}
    cells = [[_fmt(r[h], decimals[h]) if h in decimals else str(r[h]) for h in header] for r in rows]
    csv_text = "\n".join(",".join(line) for line in [header, *cells]) + "\n"

    numeric, rel, absolute = True, 1e-3, 0.006  # 2 decimals are asked for: their rounding must pass
    where = f"r['{cat}'] == '{value}'"
    if question_type == "mean":
        ask = f"What is the mean `{col.name}` of the rows whose `{cat}` is {value}? Round to 2 decimal places."
        answer = repr(statistics.mean(selected))
        code = f"print(f\"{{statistics.mean(float(r['{col.name}']) for r in rows if {where}):.2f}}\")"
    elif question_type == "median":
        ask = f"What is the median `{col.name}` over all rows? Round to 2 decimal places."
        answer = repr(statistics.median(float(r[col.name]) for r in rows))
        code = f"print(f\"{{statistics.median([float(r['{col.name}']) for r in rows]):.2f}}\")"
    elif question_type == "sum":
        ask = f"What is the total `{col.name}` of the rows whose `{cat}` is {value}? Round to 2 decimal places."
        answer = repr(sum(selected))
        code = f"print(f\"{{sum(float(r['{col.name}']) for r in rows if {where}):.2f}}\")"
    elif question_type == "count":
        threshold = _fmt(statistics.median(selected), col.decimals)
        ask = f"How many rows have `{cat}` equal to {value} and `{col.name}` greater than {threshold}?"
        answer, rel, absolute = str(sum(v > float(threshold) for v in selected)), 0.0, 0.0
        code = f"print(sum(1 for r in rows if {where} and float(r['{col.name}']) > {threshold}))"
    else:
        ask = f"Which `{table.key}` has the highest `{col.name}`?"
        answer, rel, absolute = str(max(rows, key=lambda r: r[col.name])[table.key]), 0.0, 0.0
        numeric = table.key == "order_id"
        code = f"print(max(rows, key=lambda r: float(r['{col.name}']))['{table.key}'])"
    load = f"import csv, io, statistics\nrows = list(csv.DictReader(io.StringIO({csv_text!r})))\n"
    question = f"The table below lists {n} {table.what} as CSV.\n\n{csv_text}\n{ask}"
    return Task("data", question, answer, numeric, rel, absolute, (Hop("python", {"code": load + code}, _PRINTED),))


# -- lookup: an invented world and its documents ------------------------------------------------------------------
_PROVINCES = 6
_OCCUPATIONS = (
    "glassblower",
    "cartographer",
    "beekeeper",
    "violin maker",
    "surveyor",
    "archivist",
    "ferry pilot",
    "lighthouse keeper",
    "stonemason",
    "botanist",
    "clockmaker",
    "bookbinder",
)
_PRODUCTS = (
    "ceramic valves",
    "wind-up clocks",
    "rope bridges",
    "copper kettles",
    "weather balloons",
    "loom parts",
    "bicycle bells",
    "cast-iron stoves",
    "signal lanterns",
    "paper lanterns",
    "canal locks",
    "tide gauges",
)
_COMPANY_SUFFIXES = ("Dynamics", "Works", "Holdings", "Labs", "Foundry", "Textiles", "Instruments", "Logistics")


@dataclass
class _Entity:
    kind: str  # town, company, person
    name: str
    facts: dict[str, Any]


@dataclass(frozen=True)
class _Attribute:
    kind: str  # the entity kind it belongs to
    question: str  # {x}: the entity (or a phrase naming it)
    phrase: str  # the attribute's value described as a noun phrase, for two-hop questions ("" if not an entity)
    query: str  # the expert's search query, {x}
    pattern: str  # where the value is in the documents, {x} the escaped entity name
    target: str = ""  # the entity kind the value names, for bridges


_ATTRIBUTES: dict[str, _Attribute] = {
    "hq": _Attribute(
        "company",
        "In which town is {x} headquartered?",
        "the town where {x} is headquartered",
        "{x} headquartered",
        r"{x} was founded in \d{{4}} and is headquartered in (" + _NAME + ")",
        "town",
    ),
    "company_founded": _Attribute(
        "company", "In what year was the company {x} founded?", "", "{x} founded", r"{x} was founded in (\d{{4}})"
    ),
    "ceo": _Attribute(
        "company",
        "Who is the chief executive of {x}?",
        "the chief executive of {x}",
        "{x} chief executive",
        r"The chief executive of {x} is (" + _NAME + ")",
        "person",
    ),
    "employees": _Attribute(
        "company", "How many people does {x} employ?", "", "{x} employs", r"{x} employs ([\d,]+) people"
    ),
    "population": _Attribute(
        "town", "What is the population of {x}?", "", "{x} population", r"{x} has a population of ([\d,]+)"
    ),
    "river": _Attribute(
        "town",
        "Which river flows through {x}?",
        "",
        "{x} river",
        r"{x} is a town in the province of " + _NAME + ", on the river (" + _NAME + ")",
    ),
    "mayor": _Attribute(
        "town",
        "Who is the mayor of {x}?",
        "the mayor of {x}",
        "{x} mayor",
        r"The mayor of {x} is (" + _NAME + ")",
        "person",
    ),
    "town_founded": _Attribute(
        "town", "In what year was {x} founded?", "", "{x} founded", r"{x} was founded in (\d{{4}})"
    ),
    "born": _Attribute("person", "In what year was {x} born?", "", "{x} born", r"{x} was born in (\d{{4}})"),
    "hometown": _Attribute(
        "person",
        "In which town was {x} born?",
        "the town where {x} was born",
        "{x} born",
        r"{x} was born in \d{{4}} in (" + _NAME + ")",
        "town",
    ),
    "occupation": _Attribute(
        "person", "What does {x} do for a living?", "", "{x} works as", r"{x} works as an? ([a-z -]+?)\."
    ),
}


@dataclass
class _World:
    entities: dict[str, _Entity]  # by name

    def of(self, kind: str) -> list[_Entity]:
        return [e for e in self.entities.values() if e.kind == kind]


@functools.cache
def _world() -> _World:
    """40 towns, 60 companies and 140 people, the same in every process (a fixed seed, string-seeded)."""
    rng = random.Random(f"toolqa-world-{CORPUS_VERSION}")
    names = _Names(rng)
    provinces = [names.word((2, 3)) for _ in range(_PROVINCES)]
    rivers = [names.word((2, 2)) for _ in range(24)]
    people = [_Entity("person", names.person(), {}) for _ in range(140)]
    towns = [
        _Entity(
            "town",
            names.word((2, 3), suffix=rng.choice(("", "", "vale", "mouth", "ford", "holm", "wick"))),
            {
                "province": rng.choice(provinces),
                "river": rng.choice(rivers),
                "population": rng.randint(800, 250_000),
                "town_founded": rng.randint(900, 1899),
            },
        )
        for _ in range(40)
    ]
    companies = [
        _Entity(
            "company",
            f"{names.word((2, 3))} {rng.choice(_COMPANY_SUFFIXES)}",
            {
                "product": rng.choice(_PRODUCTS),
                "company_founded": rng.randint(1850, 2020),
                "hq": rng.choice(towns).name,
                "employees": rng.randint(12, 60_000),
            },
        )
        for _ in range(60)
    ]
    for town, mayor in zip(towns, people[:40], strict=True):
        town.facts["mayor"] = mayor.name
        mayor.facts["role"] = f"{mayor.name} is the mayor of {town.name}."
    for company, ceo in zip(companies, people[40:100], strict=True):
        company.facts["ceo"] = ceo.name
        ceo.facts["role"] = f"{ceo.name} is the chief executive of {company.name}."
    for person in people:
        person.facts |= {
            "born": rng.randint(1930, 2002),
            "hometown": rng.choice(towns).name,
            "occupation": rng.choice(_OCCUPATIONS),
        }
    return _World({e.name: e for e in [*towns, *companies, *people]})


def _document(e: _Entity) -> str:
    f = e.facts
    if e.kind == "town":
        body = (
            f"{e.name} is a town in the province of {f['province']}, on the river {f['river']}. "
            f"{e.name} has a population of {f['population']:,}. {e.name} was founded in {f['town_founded']}.\n\n"
            f"The mayor of {e.name} is {f['mayor']}."
        )
    elif e.kind == "company":
        body = (
            f"{e.name} makes {f['product']}. {e.name} was founded in {f['company_founded']} and is headquartered in "
            f"{f['hq']}. {e.name} employs {f['employees']:,} people.\n\nThe chief executive of {e.name} is {f['ceo']}."
        )
    else:
        article = "an" if f["occupation"][0] in "aeiou" else "a"
        body = (
            f"{e.name} was born in {f['born']} in {f['hometown']}. {e.name} works as {article} {f['occupation']}."
            + (f"\n\n{f['role']}" if "role" in f else "")
        )
    return f"# {e.name}\n\n{body}\n"


def _documents() -> dict[str, str]:
    folders = {"town": "towns", "company": "companies", "person": "people"}
    return {
        f"{folders[e.kind]}/{e.name.lower().replace(' ', '-')}.md": _document(e) for e in _world().entities.values()
    }


_corpus_lock = threading.Lock()


def corpus_dir() -> Path:
    """The lookup documents under `$PISTAR_HOME/toolqa/corpus`, written (atomically) if missing or outdated."""
    docs = _documents()
    stamp = hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest()
    root = pistar_home() / "toolqa" / "corpus"
    marker = root / ".complete"
    with _corpus_lock:
        if marker.exists() and marker.read_text() == stamp:
            return root
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".corpus-"))
        for name, text in docs.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text, encoding="utf-8")
        (staging / ".complete").write_text(stamp)
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)  # outdated or half-written
        try:
            staging.rename(root)
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
            if not (marker.exists() and marker.read_text() == stamp):
                raise
        return root


def _lookup(rng: random.Random) -> Task:
    world = _world()
    two_hop = rng.random() < 0.5
    if two_hop:
        bridge_key = rng.choice([k for k, a in _ATTRIBUTES.items() if a.target])
        bridge = _ATTRIBUTES[bridge_key]
        final_key = rng.choice([k for k, a in _ATTRIBUTES.items() if a.kind == bridge.target])
        start = rng.choice(world.of(bridge.kind))
        middle = world.entities[start.facts[bridge_key]]
        subject, hops = bridge.phrase.format(x=start.name), [(bridge, start.name), (_ATTRIBUTES[final_key], _PREV)]
        value = middle.facts[final_key]
    else:
        final_key = rng.choice(list(_ATTRIBUTES))
        start = rng.choice(world.of(_ATTRIBUTES[final_key].kind))
        subject, hops, value = start.name, [(_ATTRIBUTES[final_key], start.name)], start.facts[final_key]
    question = _ATTRIBUTES[final_key].question.format(x=subject)
    plan = tuple(
        Hop("search", {"query": a.query.format(x=x)}, a.pattern.format(x=x if x == _PREV else re.escape(x)))
        for a, x in hops
    )
    return Task("lookup", question, str(value), isinstance(value, int), plan=plan)


# -- the environment ---------------------------------------------------------------------------------------------
_GENERATORS: dict[str, Callable[[random.Random], Task]] = {
    "arithmetic": _arithmetic,
    "data": _data,
    "units": _units,
    "lookup": _lookup,
}
_HINTS = {
    "arithmetic": "calculator (exact arithmetic on big integers) or python",
    "data": "python (parse the CSV and compute; print the result)",
    "units": "calculator or python (you must know the conversion factors; compute with them exactly)",
    "lookup": "search (documents about the towns, companies and people named; some questions need two searches)",
}


def make_task(kind: str, seed: int) -> Task:
    """The task of `toolqa/<kind>` for `seed`: the same in every process (string-seeded RNG)."""
    if kind not in KINDS:
        raise ValueError(f"unknown ToolQA kind {kind!r}; known: {', '.join(KINDS)}")
    rng = random.Random(f"toolqa/{kind}/{seed}")
    chosen = rng.choice(_BASE_KINDS) if kind == "mixed" else kind
    return _GENERATORS[chosen](rng)


@dataclass
class _Watched(Tool):
    """A tool that reports each output to its environment, as the loop reports it to a model's next prompt."""

    report: Callable[[str, dict[str, Any], str | None], None] | None = None

    def __call__(self, args: dict[str, Any], observation: Any = None) -> str:
        try:
            out = super().__call__(args, observation)
        except ToolError:
            if self.report:
                self.report(self.name, args, None)
            raise
        if self.report:
            self.report(self.name, args, out)
        return out


def _key(name: str, args: dict[str, Any]) -> str:
    return json.dumps([name, args], sort_keys=True, default=str)


class ToolQAEnv(Env):
    """One generated question per seed, answered once; `tools()` gives the tools its kind needs."""

    accepts_answers = True

    def __init__(self, kind: str = "mixed") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown ToolQA kind {kind!r}; known: {', '.join(KINDS)}")
        self.kind = kind
        self.id = f"toolqa/{kind}"
        self.task: Task | None = None
        self._correct = False
        self._done = False
        self._issued: set[str] = set()
        self._outputs: dict[str, str | None] = {}
        self._tools: list[Tool] | None = None

    def reset(self, seed: int) -> Observation:
        self.task = make_task(self.kind, seed)
        self._correct = self._done = False
        self._issued.clear()
        self._outputs.clear()
        text = f"{self.task.question}\n\nTools that help: {_HINTS[self.task.kind]}. Answer with the final value only."
        return Observation(text, extras=self._extras())

    def step(self, action: Action) -> StepResult:
        if self.task is None or self._done:
            raise RuntimeError(f"{self.id}: call reset() before step() (one answer ends an episode)")
        ok = action.kind == "answer" and check(self.task, action.text)
        self._correct, self._done = ok, True
        verdict = "correct" if ok else "incorrect"
        return StepResult(
            observation=Observation(f"Your answer is {verdict}.", extras=self._extras()),
            reward=1.0 if ok else 0.0,
            terminated=True,
            info={
                "verdict": verdict,
                "success": ok,
                "kind": self.task.kind,
                "expected": self.task.answer,
                "given": action.text if action.kind == "answer" else action.label(),
            },
        )

    def describe_actions(self) -> str:
        return (
            "Answer the question once, as your final answer: the value alone (a number or a name). The answer is "
            "nothing you can know or guess: compute it or look it up with the tools first, then answer from their "
            "output. Numbers may be written with thousands commas or a unit."
        )

    @property
    def success(self) -> bool:
        return self._correct

    def tools(self) -> list[Tool]:
        """The tools this kind needs; they report their outputs here, which is what the expert answers from."""
        if self._tools is None:
            base: list[Tool] = []
            if self.kind in ("arithmetic", "units", "data", "mixed"):
                from pistar.tools.calculator import calculator
                from pistar.tools.sandbox import python_tool

                base += [calculator, python_tool] if self.kind != "data" else [python_tool, calculator]
            if self.kind in ("lookup", "mixed"):
                base.append(_search_tool(str(corpus_dir())))
            self._tools = [
                _Watched(**{f.name: getattr(t, f.name) for f in fields(t)}, report=self._record) for t in base
            ]
        return list(self._tools)

    def _record(self, name: str, args: dict[str, Any], output: str | None) -> None:
        self._outputs[_key(name, args)] = output

    def expert_action(self) -> Action:
        """Follow the task's plan: call each hop's tool, read its value out of the output, answer the last value."""
        if self.task is None:
            raise RuntimeError(f"{self.id}: call reset() first")
        previous = ""
        for hop in self.task.plan:
            args = {k: v.replace(_PREV, previous) if isinstance(v, str) else v for k, v in hop.args.items()}
            key = _key(hop.tool, args)
            if key not in self._issued:
                self._issued.add(key)
                return Action("tool", name=hop.tool, args=args, thought=f"use {hop.tool}")
            if key not in self._outputs:  # the agent's tools are not this environment's: their output is unseen
                return Action("answer", text=self.task.answer, thought="tool output unseen; the generator's answer")
            output = self._outputs[key] or ""
            found = re.search(hop.pattern.replace(_PREV, re.escape(previous)), output)
            if found is None:
                return Action("answer", text="unknown", thought=f"{hop.tool} did not give the value")
            previous = found.group(1)
        return Action("answer", text=previous, thought="read from the tool output")

    def _extras(self) -> dict[str, Any]:
        assert self.task is not None
        return {"mission": self.task.question, "valid_actions": [], "kind": self.task.kind}


@functools.lru_cache(maxsize=4)
def _search_tool(folder: str) -> Tool:
    from pistar.tools.search import search_tool

    return search_tool(folder)

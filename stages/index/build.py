"""Build the retrieval index: BM25 over stemmed tokens, float16 sentence embeddings, optional HNSW graph.

Embedding is the slow part (minutes of CPU for ~20k chunks): vectors are cached by the hash of (model, max length,
text) in shards under `index.cache_dir`, written as the run goes, so a killed run resumes and a re-run after a
change embeds only the chunks whose text changed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.cli import StageError
from stages.common.jsonl import iter_jsonl_lenient, write_json, write_jsonl
from stages.common.metrics import StageMetrics
from stages.common.progress import progress
from stages.common.retrieval import (
    CHUNK_FIELDS,
    bm25_tokenize,
    build_ann,
    encode,
    load_encoder,
    resolve_embedding_model,
    search_text,
)
from stages.common.schema import IndexParams

log = logging.getLogger(__name__)

SHARD_ROWS = 1024


def embedding_key(model: str, max_seq_length: int, text: str, autocast: str = "none") -> str:
    """The cache key of one chunk's vector; bf16 vectors differ slightly from fp32 ones, so they key apart."""
    compute = "" if autocast == "none" else f"\x1f{autocast}"  # fp32 keys as before: old caches stay valid
    return hashlib.sha256(f"{model}\x1f{max_seq_length}\x1f{text}{compute}".encode()).hexdigest()[:32]


class EmbeddingCache:
    """Append-only shards of (keys, float16 vectors); every finished shard survives a killed run."""

    def __init__(self, folder: Path, model_tag: str) -> None:
        self.folder = folder
        self.prefix = f"emb-{model_tag}-"
        self.vectors: dict[str, np.ndarray] = {}
        self._next = 0

    def load(self) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        for shard in sorted(self.folder.glob(f"{self.prefix}*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as data:
                    for key, vec in zip(data["keys"].tolist(), data["vectors"], strict=True):
                        self.vectors[str(key)] = vec
            except (OSError, ValueError, KeyError) as exc:  # a shard cut short by a kill: ignore it
                log.warning("%s: unreadable cache shard (%s); ignored", shard, exc)
            self._next = max(self._next, int(shard.stem.rsplit("-", 1)[-1]) + 1)
        return len(self.vectors)

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        vectors = vectors.astype(np.float16)
        shard = self.folder / f"{self.prefix}{self._next:06d}.npz"
        tmp = shard.with_name(f".{shard.stem}.tmp.npz")
        np.savez(tmp, keys=np.array(list(keys)), vectors=vectors)
        tmp.replace(shard)
        self._next += 1
        for key, vec in zip(keys, vectors, strict=True):
            self.vectors[key] = vec


def read_chunks(path: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    """English chunks in a stable order (by chunk_id); a chunk without id or text is counted and skipped."""
    if not path.is_file():
        raise StageError(f"{path} not found: run `dvc repro langfilter` first")
    chunks: dict[str, dict[str, Any]] = {}
    for rec in iter_jsonl_lenient(path, lambda kind: metrics.inc(f"dropped.{kind}")):
        metrics.inc("chunks_in")
        if not rec.get("chunk_id") or not str(rec.get("text") or "").strip():
            metrics.inc("dropped.no_text")
            continue
        if rec["chunk_id"] in chunks:
            metrics.inc("dropped.duplicate_id")
            continue
        chunks[str(rec["chunk_id"])] = {k: rec.get(k) for k in CHUNK_FIELDS}
    return [chunks[k] for k in sorted(chunks)]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def embed_chunks(chunks: Sequence[dict[str, Any]], params: IndexParams, metrics: StageMetrics) -> np.ndarray:
    """Embeddings of every chunk in order, computing only those missing from the cache."""
    model_tag = hashlib.sha256(resolve_embedding_model(params.embedding_model).encode()).hexdigest()[:10]
    cache = EmbeddingCache(Path(params.cache_dir), model_tag)
    cached = cache.load()
    texts = [search_text(c) for c in chunks]
    keys = [embedding_key(params.embedding_model, params.max_seq_length, t, params.autocast) for t in texts]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cache.vectors}.values())
    metrics.set("embedding.cache_entries_before", cached)
    metrics.set("embedding.embedded", len(todo))
    metrics.set("embedding.reused", len(chunks) - len(todo))
    if todo:
        encoder = load_encoder(params.embedding_model, params.max_seq_length)
        start = time.perf_counter()
        shards = list(_batches(todo, SHARD_ROWS))
        for shard in progress(shards, desc=f"embed ({len(todo)} chunks)", unit="shard"):
            # one encode call per shard: sentence-transformers sorts its inputs by length, so batches pad little
            cache.add([keys[i] for i in shard], encode(encoder, [texts[i] for i in shard], params.batch_size,
                                                          params.autocast))
        seconds = time.perf_counter() - start
        metrics.set("embedding.seconds", round(seconds, 2))
        metrics.set("embedding.chunks_per_second", round(len(todo) / max(seconds, 1e-9), 1))
    dim = next(iter(cache.vectors.values())).shape[0] if cache.vectors else 0
    out = np.zeros((len(chunks), dim), dtype=np.float16)
    for i, key in enumerate(keys):
        out[i] = cache.vectors[key]
    return out


def build_index(chunks_path: Path, out_dir: Path, params: IndexParams, metrics: StageMetrics) -> dict[str, Any]:
    """Write the whole index into a temp folder, then swap it in: readers never see half an index."""
    import bm25s

    chunks = read_chunks(chunks_path, metrics)
    if not chunks:
        raise StageError(f"{chunks_path} holds no usable chunks")
    embeddings = embed_chunks(chunks, params, metrics)

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    bm25 = bm25s.BM25()
    bm25.index(bm25_tokenize([search_text(c) for c in chunks]), show_progress=False)
    bm25.save(str(tmp / "bm25"))
    metrics.set("bm25.seconds", round(time.perf_counter() - start, 2))
    np.save(tmp / "embeddings.npy", embeddings)
    if params.dense_backend == "usearch":
        start = time.perf_counter()
        build_ann(embeddings, tmp / "dense.usearch")
        metrics.set("ann.seconds", round(time.perf_counter() - start, 2))
    write_jsonl(tmp / "chunks.jsonl", chunks)
    meta = {
        "n_chunks": len(chunks),
        "n_documents": len({c["doc_id"] for c in chunks}),
        "projects": sorted({c["project"] for c in chunks if c.get("project")}),
        "embedding": {"model": params.embedding_model, "dim": int(embeddings.shape[1]),
                      "max_seq_length": params.max_seq_length, "dtype": "float16",
                      "autocast": params.autocast},
        "bm25": {"tokenizer": "bm25s (stop words: en, Snowball English stemmer)", "method": "lucene"},
        "query": {"rrf_k": params.rrf_k, "bm25_weight": params.bm25_weight, "dense_weight": params.dense_weight,
                  "candidates": params.candidates, "project_filter": params.project_filter,
                  "dense_backend": params.dense_backend},
    }
    write_json(tmp / "meta.json", meta)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    metrics.set("chunks_out", len(chunks))
    metrics.set("documents", meta["n_documents"])
    metrics.set("index_bytes", sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()))
    return meta

"""A tiny sentence-transformers encoder and a helper that builds a real retrieval index over given chunks.

The tiny encoder is a random 1-layer BERT (hidden 32) with all-MiniLM-L6-v2's WordPiece vocabulary, wrapped as a
SentenceTransformer and saved to a local folder: the index stage embeds the whole corpus with it in seconds (whole-DAG
tests), where MiniLM needs minutes. Random weights still rank identical texts first; tests that measure retrieval
quality use the real MiniLM from its offline package.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

INDEX_PARAMS = {
    "embedding_model": "all-minilm-l6-v2", "max_seq_length": 128, "batch_size": 32, "autocast": "none", "cache_dir": "",
    "dense_backend": "exact", "rrf_k": 60, "bm25_weight": 1.0, "dense_weight": 1.0, "candidates": 20,
    "project_filter": "none", "eval_k": [1, 5, 10], "latency_queries": 5,
}


def build_tiny_encoder(out_dir: str | Path, seed: int = 0) -> Path:
    """A random tiny BERT sentence encoder (mean pooling) with MiniLM's tokenizer; returns its folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    from stages.common.retrieval import resolve_embedding_model

    out = Path(out_dir)
    minilm = Path(resolve_embedding_model("all-minilm-l6-v2"))
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).is_file():
            shutil.copy(minilm / name, raw / name)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(raw)
    encoder = models.Transformer(str(raw), max_seq_length=128)
    pooling = models.Pooling(encoder.get_word_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[encoder, pooling], device="cpu").save(str(out / "st"))
    return out / "st"


def make_chunk(i: int, project: str, title: str, text: str, doc: str | None = None) -> dict[str, Any]:
    """A langfilter-shaped chunk record."""
    doc_id = doc or f"doc{i:03d}"
    return {"chunk_id": f"c{i:04d}", "chunk_index": 0, "doc_id": doc_id, "project": project, "kind": "markdown",
            "title": title, "heading_path": [title], "url": f"https://github.com/o/{project.lower()}/blob/"
            f"{'0' * 40}/docs/{doc_id}.md", "path": f"docs/{doc_id}.md", "license": "Apache-2.0", "text": text,
            "n_words": len(text.split()), "lang": "en", "lang_score": 1.0}


def build_tiny_index(tmp_path: Path, chunks: Sequence[dict[str, Any]], **overrides: Any) -> Path:
    """Write `chunks` as a langfilter output and build data/index from it with the index stage's own code."""
    from stages.common.jsonl import write_jsonl
    from stages.common.metrics import StageMetrics
    from stages.index.build import IndexParams, build_index

    chunks_path = tmp_path / "langfilter" / "chunks.jsonl"
    write_jsonl(chunks_path, chunks)
    params = IndexParams(**{**INDEX_PARAMS, "cache_dir": str(tmp_path / "embcache"), **overrides})
    out = tmp_path / "index"
    build_index(chunks_path, out, params, StageMetrics("index"))
    return out

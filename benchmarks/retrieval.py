"""Retrieval speed on the corpus: index build, embedding throughput, query latency per retriever, exact vs HNSW.

    python -m benchmarks.retrieval                 # needs data/langfilter (dvc repro langfilter) and data/index
    python -m benchmarks.retrieval --embed-sample 256 --queries 200

Prints one markdown table. Embedding throughput is measured on a seeded sample of chunks at each max_seq_length;
query latency is one `search` call (what a user's question costs), p50/p95 over questions from data/merge.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from stages.common.jsonl import read_jsonl
from stages.common.retrieval import Retriever, bm25_tokenize, build_ann, encode, load_encoder, search_text


def percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times) * 1000, times[min(len(times) - 1, int(0.95 * len(times)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", default="data/langfilter/chunks.jsonl")
    parser.add_argument("--index-dir", default="data/index")
    parser.add_argument("--questions", default="data/merge/test.jsonl")
    parser.add_argument("--embed-sample", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--model", default="all-minilm-l6-v2")
    args = parser.parse_args()

    import bm25s
    import torch

    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    chunks = list(read_jsonl(args.chunks))
    texts = [search_text(c) for c in chunks]
    rows: list[tuple[str, str]] = [("chunks", f"{len(chunks):,}")]

    start = time.perf_counter()
    bm25 = bm25s.BM25()
    bm25.index(bm25_tokenize(texts), show_progress=False)
    rows.append(("BM25 index build (tokenize + index)", f"{time.perf_counter() - start:.1f} s"))

    sample = random.Random(0).sample(texts, min(args.embed_sample, len(texts)))
    for length in (128, 256):
        encoder = load_encoder(args.model, length)
        fp32 = None
        for autocast in ("none", "bf16"):
            encode(encoder, sample[:16], autocast=autocast)
            start = time.perf_counter()
            vectors = encode(encoder, sample, 64, autocast=autocast)
            rate = len(sample) / (time.perf_counter() - start)
            fp32 = vectors if fp32 is None else fp32
            agreement = "" if vectors is fp32 else f", min cosine to fp32 {float((vectors * fp32).sum(1).min()):.5f}"
            rows.append((f"embed, max_seq_length {length}, autocast {autocast}",
                         f"{rate:.1f} chunks/s → {len(chunks) / rate / 60:.1f} min for the corpus{agreement}"))

    retriever = Retriever.load(args.index_dir)
    embeddings = retriever.embeddings
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_ann(embeddings, Path(tmp) / "dense.usearch")
        rows.append(("HNSW build (usearch, cosine, f16)", f"{time.perf_counter() - start:.1f} s"))
        (Path(tmp) / "dense.usearch").replace(Path(args.index_dir) / "dense.usearch.bench")
    questions = [next(m["content"] for m in r["messages"] if m["role"] == "user")
                 for r in read_jsonl(args.questions)][: args.queries]
    retriever.search(questions[0], 5)  # warm the encoder
    for mode in ("bm25", "dense", "hybrid"):
        times = []
        for q in questions:
            start = time.perf_counter()
            retriever.search(q, 5, mode=mode)
            times.append(time.perf_counter() - start)
        p50, p95 = percentiles(times)
        rows.append((f"query {mode} (exact dense)", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))
    vectors = encode(retriever.encoder, questions)
    from usearch.index import Index

    ann = Index(ndim=embeddings.shape[1], metric="cos", dtype="f16")
    ann.load(str(Path(args.index_dir) / "dense.usearch.bench"))
    (Path(args.index_dir) / "dense.usearch.bench").unlink()
    for name, search in (("exact dot product", lambda v: np.argsort(-(embeddings @ v))[:10]),
                         ("HNSW (usearch)", lambda v: ann.search(v, 10).keys)):
        times = []
        for v in vectors:
            start = time.perf_counter()
            search(v)
            times.append(time.perf_counter() - start)
        p50, p95 = percentiles(times)
        rows.append((f"dense top-10 search only, {name}", f"p50 {p50:.2f} ms, p95 {p95:.2f} ms"))
    exact_top = [set(np.argsort(-(embeddings @ v))[:10].tolist()) for v in vectors]
    ann_top = [set(int(k) for k in ann.search(v, 10).keys) for v in vectors]
    recall = statistics.fmean(len(a & e) / 10 for a, e in zip(ann_top, exact_top, strict=True))
    rows.append(("HNSW recall@10 vs exact", f"{recall:.3f}"))

    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(json.dumps({"threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()

"""The index stage and the retriever: real BM25 + real MiniLM (offline package) over a small hand-made corpus."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from stages.common.retrieval import Retriever, detect_project, reciprocal_rank_fusion, source_key
from tests.fakes.tiny_index import build_tiny_index, make_chunk

CHUNKS = [
    make_chunk(0, "Helm", "helm rollback", "Roll back a release to a previous revision with helm rollback followed by "
               "the release name and the revision number. Without a revision it goes back to the previous one."),
    make_chunk(1, "Helm", "helm install", "Install a chart into the cluster with helm install, giving a release name "
               "and the chart reference; values files override the chart defaults."),
    make_chunk(2, "etcd", "Client port", "By default etcd serves client requests on port 2379 and peer traffic on "
               "port 2380. Both can be changed with the listen URL flags."),
    make_chunk(3, "Prometheus", "Scrape configuration", "Prometheus pulls metrics from targets over HTTP at the "
               "scrape interval configured in scrape_configs; each target exposes a /metrics endpoint."),
    make_chunk(4, "Kubernetes", "Liveness probes", "The kubelet restarts a container whose liveness probe fails. "
               "A probe can run a command, an HTTP GET request or a TCP socket check."),
    make_chunk(5, "Kubernetes", "ConfigMaps", "A ConfigMap holds non-confidential configuration as key-value pairs "
               "that pods consume as environment variables, command-line arguments or files in a volume."),
    make_chunk(6, "Linkerd", "Mutual TLS", "Linkerd automatically enables mutual TLS for all TCP traffic between "
               "meshed pods, with no configuration required from the application."),
    make_chunk(7, "Jaeger", "Sampling", "Jaeger clients decide per trace whether to record it; probabilistic "
               "sampling keeps a fixed fraction of traces, rate limiting keeps a number per second."),
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return build_tiny_index(tmp_path_factory.mktemp("retrieval"), CHUNKS, dense_backend="usearch")


@pytest.fixture(scope="module")
def retriever(index_dir):
    return Retriever.load(index_dir)


def test_index_files_and_meta(index_dir):
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["n_chunks"] == len(CHUNKS) and meta["embedding"]["dtype"] == "float16"
    embeddings = np.load(index_dir / "embeddings.npy")
    assert embeddings.dtype == np.float16 and embeddings.shape == (len(CHUNKS), 384)
    norms = np.linalg.norm(embeddings.astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-2)
    ids = [json.loads(line)["chunk_id"] for line in (index_dir / "chunks.jsonl").read_text().splitlines()]
    assert ids == sorted(ids)


@pytest.mark.parametrize(("query", "expected"), [
    ("How do I undo a Helm upgrade and return to an earlier version?", "c0000"),
    ("Which port do etcd clients connect to?", "c0002"),
    ("how often does prometheus collect data from targets", "c0003"),
    ("What happens when a health check of my container keeps failing?", "c0004"),
    ("Is traffic between meshed services encrypted?", "c0006"),
])
def test_hybrid_finds_the_answering_chunk(retriever, query, expected):
    hits = retriever.search(query, 3)
    assert hits[0].chunk_id == expected, [h.chunk_id for h in hits]
    assert hits[0].url.startswith("https://github.com/") and hits[0].license == "Apache-2.0"


def test_dense_finds_paraphrases_bm25_cannot(retriever):
    query = "are connections among my workloads encrypted"  # no stemmed word shared with chunk 6
    assert retriever.search(query, 1, mode="dense")[0].chunk_id == "c0006"
    assert all(h.chunk_id != "c0006" for h in retriever.search(query, 1, mode="bm25"))


def test_ann_backend_agrees_with_exact(index_dir):
    exact, ann = Retriever.load(index_dir, dense_backend="exact"), Retriever.load(index_dir, dense_backend="usearch")
    queries = ["helm rollback revision", "etcd port 2379", "jaeger sampling", "configmap environment variables"]
    assert [r[0] for r in exact.dense_ranking(queries, 3)] == [r[0] for r in ann.dense_ranking(queries, 3)]


def test_search_is_deterministic(retriever):
    first = [h.chunk_id for h in retriever.search("kubernetes pods configuration", 5)]
    assert first == [h.chunk_id for h in retriever.search("kubernetes pods configuration", 5)]
    assert retriever.search_batch(["a", "kubernetes pods configuration"], 5)[1] == retriever.search(
        "kubernetes pods configuration", 5)


def test_project_filter_keeps_the_named_project(retriever):
    hits = retriever.search("Helm chart values and Kubernetes configuration", 4, project_filter="filter")
    assert {h.project for h in hits} == {"Helm"}
    boosted = retriever.search("Helm chart values and Kubernetes configuration", 4, project_filter="boost")
    assert [h.project for h in boosted][:2] == ["Helm", "Helm"]
    assert detect_project("what does etcd store?", ["etcd", "Helm"]) == "etcd"
    assert detect_project("kettle", ["etcd"]) is None


def test_rrf_orders_by_fused_rank_with_stable_ties():
    # 1 and 3: 1/61 + 1/63 each; 2: 2/62, a hair less. The tie between 1 and 3 goes to the smaller id.
    assert reciprocal_rank_fusion([[1, 2, 3], [3, 2, 1]], [1.0, 1.0], 60) == [1, 3, 2]
    assert reciprocal_rank_fusion([[5], [7]], [1.0, 1.0], 60) == [5, 7]  # tie -> smaller id first
    assert reciprocal_rank_fusion([[5], [7]], [1.0, 2.0], 60) == [7, 5]


def test_source_key_maps_blob_urls():
    assert source_key("https://github.com/helm/helm-www/blob/abc/content/en/docs/x.md") == \
        "helm__helm-www/content/en/docs/x.md"
    assert source_key("https://helm.sh/docs/") is None


def test_rebuild_reuses_cached_embeddings(tmp_path):
    from stages.common.jsonl import read_json

    build_tiny_index(tmp_path, CHUNKS[:4])
    changed = [*CHUNKS[:3], {**CHUNKS[3], "text": CHUNKS[3]["text"] + " Changed."}]
    from stages.common.jsonl import write_jsonl
    from stages.common.metrics import StageMetrics
    from stages.index.build import IndexParams, build_index
    from tests.fakes.tiny_index import INDEX_PARAMS

    write_jsonl(tmp_path / "langfilter" / "chunks.jsonl", changed)
    metrics = StageMetrics("index")
    build_index(tmp_path / "langfilter" / "chunks.jsonl", tmp_path / "index",
                IndexParams(**{**INDEX_PARAMS, "cache_dir": str(tmp_path / "embcache")}), metrics)
    assert metrics.values["embedding.embedded"] == 1 and metrics.values["embedding.reused"] == 3
    assert read_json(tmp_path / "index" / "meta.json")["n_chunks"] == 4


def test_bf16_embeddings_key_apart_and_queries_follow_the_index(tmp_path, monkeypatch):
    """bf16 vectors are not fp32 vectors: a bf16 build must not reuse fp32 cache entries, must record its compute
    in meta.json, and the retriever must embed queries the way the index embedded the chunks."""
    import stages.common.retrieval as retrieval
    from stages.common.jsonl import read_json

    fp32 = Retriever.load(build_tiny_index(tmp_path / "a", CHUNKS[:4], cache_dir=str(tmp_path / "cache")))
    from stages.common.metrics import StageMetrics
    from stages.index.build import IndexParams, build_index
    from tests.fakes.tiny_index import INDEX_PARAMS

    metrics = StageMetrics("index")
    build_index(tmp_path / "a" / "langfilter" / "chunks.jsonl", tmp_path / "b",
                IndexParams(**{**INDEX_PARAMS, "cache_dir": str(tmp_path / "cache"), "autocast": "bf16"}), metrics)
    assert metrics.values["embedding.embedded"] == 4 and metrics.values["embedding.reused"] == 0
    assert read_json(tmp_path / "b" / "meta.json")["embedding"]["autocast"] == "bf16"
    bf16 = Retriever.load(tmp_path / "b")
    a, b = fp32.embeddings.astype(np.float32), bf16.embeddings.astype(np.float32)
    assert not np.array_equal(a, b) and float((a * b).sum(1).min()) > 0.98

    seen: list[str] = []
    real_encode = retrieval.encode
    monkeypatch.setattr(retrieval, "encode", lambda *a, **kw: (seen.append(kw.get("autocast")), real_encode(*a, **kw))[1])
    fp32.search("metrics scraping", 2, mode="dense")
    bf16.search("metrics scraping", 2, mode="dense")
    assert seen == ["none", "bf16"]


def test_index_from_an_older_build_is_refused_in_one_line(tmp_path):
    """meta.json carries the build's params; a reader must not guess them (a guess embeds queries unlike chunks)."""
    from stages.common.cli import StageError
    from stages.common.jsonl import read_json, write_json

    index_dir = build_tiny_index(tmp_path, CHUNKS[:3])
    meta = read_json(index_dir / "meta.json")
    del meta["embedding"]["autocast"], meta["query"]["rrf_k"]
    write_json(index_dir / "meta.json", meta)
    with pytest.raises(StageError, match=r"lacks embedding\.autocast, query\.rrf_k: .*dvc repro index"):
        Retriever.load(index_dir)


def test_bad_index_param_is_one_line_and_touches_nothing(tmp_path, repo_root):
    import yaml

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["index"]["candidates"] = -3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out_dir = tmp_path / "index"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("previous output")
    result = subprocess.run([sys.executable, "-m", "stages.index", "--params", str(tmp_path / "params.yaml"),
                             "--out-dir", str(out_dir), "--metrics", str(tmp_path / "m.json")], cwd=repo_root,
                            capture_output=True, text=True)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "index.candidates" in errors[0], result.stderr
    assert (out_dir / "keep.txt").read_text() == "previous output"


BM25_BUILD = """
import hashlib, json, pathlib, sys, tempfile
import bm25s
from stages.common.retrieval import bm25_tokenize
texts = json.loads(sys.argv[1])
bm25 = bm25s.BM25()
bm25.index(bm25_tokenize(texts), show_progress=False)
out = pathlib.Path(tempfile.mkdtemp())
bm25.save(str(out))
print(hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.iterdir()))).hexdigest())
"""


def test_bm25_index_bytes_do_not_depend_on_the_hash_seed(repo_root):
    """bm25s numbers stems in `set` order; bm25_tokenize renumbers them so the saved index is byte-stable."""
    import os

    texts = json.dumps([c["text"] for c in CHUNKS])
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", BM25_BUILD, texts], cwd=repo_root, env=env, capture_output=True,
                             text=True, check=True, timeout=120)
        digests.add(run.stdout.strip())
    assert len(digests) == 1, digests


def test_index_eval_scores_each_configured_eval_set(index_dir, tmp_path):
    """index_eval reads eval.sets as validated specs: each set is scored under its own name, from its own path."""
    from stages.common.jsonl import read_json, write_jsonl
    from stages.common.schema import EvalSetSpec, IndexParams
    from stages.index.evaluate import run
    from tests.fakes.tiny_index import INDEX_PARAMS

    write_jsonl(tmp_path / "etcd.jsonl", [{"question": "Which port do etcd clients connect to?",
                                           "checked_against": source_key(CHUNKS[2]["url"])}])
    write_jsonl(tmp_path / "unindexed.jsonl", [{"question": "What is a Pod?", "checked_against": "o__x/docs/y.md"}])
    sets = [EvalSetSpec(name="ports", path=str(tmp_path / "etcd.jsonl"), format="qa"),
            EvalSetSpec(name="elsewhere", path=str(tmp_path / "unindexed.jsonl"), format="qa")]
    params = IndexParams(**{**INDEX_PARAMS, "cache_dir": str(tmp_path / "embcache")})
    report = run(index_dir, tmp_path / "no-merge", sets, params, tmp_path / "index_eval.json")
    assert sorted(report["sets"]) == ["ports"]  # the set whose page is not indexed has no question to score
    assert report["sets"]["ports"]["bm25"]["n"] == 1 and report["sets"]["ports"]["bm25"]["recall@1"] == 1.0
    assert report["run"]["dropped"]["elsewhere"]["source_not_indexed"] == 1
    assert read_json(tmp_path / "index_eval.json")["sets"] == report["sets"]

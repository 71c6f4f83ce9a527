"""Shared by the serve, chat, app and benchmark tests: a tiny Assistant and a uvicorn server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHUNKS = [
    {"chunk_id": "k8s-pod", "doc_id": "k8s", "project": "Kubernetes", "title": "Pods",
     "url": "https://kubernetes.io/docs/concepts/workloads/pods/", "path": "pods.md", "license": "CC-BY-4.0",
     "heading_path": ["Pods"], "text": "A Pod is the smallest deployable unit of computing in Kubernetes. "
     "A Pod is a group of one or more containers with shared storage and network resources."},
    {"chunk_id": "prom-scrape", "doc_id": "prom", "project": "Prometheus", "title": "Scraping",
     "url": "https://prometheus.io/docs/introduction/overview/", "path": "overview.md", "license": "Apache-2.0",
     "heading_path": ["Overview"], "text": "Prometheus scrapes metrics from instrumented jobs over HTTP and "
     "stores all scraped samples locally as time series."},
    {"chunk_id": "helm-chart", "doc_id": "helm", "project": "Helm", "title": "Charts",
     "url": "https://helm.sh/docs/topics/charts/", "path": "charts.md", "license": "Apache-2.0",
     "heading_path": ["Charts"], "text": "Helm uses a packaging format called charts. A chart is a collection "
     "of files that describe a related set of Kubernetes resources."},
]


def tiny_assistant(model_dir: Path, index_dir: Path | None, **settings: Any) -> Any:
    """An Assistant over the tiny random model (no adapter) and, when given, a tiny retrieval index."""
    import torch
    from transformers import AutoModelForCausalLM

    from stages.common.inference import Assistant, load_chat_tokenizer
    from tests.pinned_params import inference_settings

    torch.set_num_threads(1)
    tokenizer = load_chat_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    retriever = None
    if index_dir is not None:
        from stages.common.retrieval import Retriever

        retriever = Retriever.load(index_dir)
    defaults = {"system_prompt": "You are an expert on the CNCF landscape.", "k": 2, "max_new_tokens": 16,
                "retrieval_mode": "bm25"}
    return Assistant(model, tokenizer, retriever, inference_settings(**{**defaults, **settings}),
                     versions={"base": "tiny", "adapter": "none", "index": "tiny", "dataset": "none"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a thread; yields the base URL (http://127.0.0.1:port)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def tiny_index(out_dir: Path, chunks: list[dict[str, Any]] = CHUNKS) -> Path:
    """A real retrieval index (the index stage's code, tests/fakes/tiny_index.py) over `chunks`."""
    from tests.fakes.tiny_index import build_tiny_index, make_chunk

    records = []
    for i, c in enumerate(chunks):
        record = make_chunk(i, c["project"], c["title"], c["text"], doc=c["doc_id"])
        record.update({k: c[k] for k in ("chunk_id", "url", "path", "license", "heading_path")})
        records.append(record)
    return Path(build_tiny_index(out_dir, records))

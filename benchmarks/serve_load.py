"""Serving load: N concurrent clients against `stages.serve` on 127.0.0.1 for a bounded time, with dynamic
batching on (up to N requests per generate call) and off (one at a time).

Prints requests/s, completion tokens/s, p50/p95 latency, errors and the mean batch size per mode, then the
throughput ratio. Each client sends the next question as soon as it has its answer (closed loop), greedy, a fixed
max_tokens, retrieval on.

    python -m benchmarks.serve_load                      # the tiny test model + tiny index (seconds)
    python -m benchmarks.serve_load --model real --seconds 60   # models/base + models/adapter + data/index

Run it alone: it measures CPU time, and another torch process on the same cores halves it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # also runnable as `python benchmarks/serve_load.py`
    sys.path.insert(0, str(REPO_ROOT))

log = logging.getLogger("benchmarks.serve_load")

QUESTIONS = [
    "What is a Pod in Kubernetes?", "How does Prometheus scrape metrics?", "What is a Helm chart?",
    "How do I roll back a Helm release?", "What does etcd store for Kubernetes?", "How do Pods share storage?",
    "What is a Prometheus time series?", "Which resources does a Helm chart describe?",
]


@dataclass
class ClientLog:
    done: list[tuple[float, float, int]] = field(default_factory=list)  # (finished at, latency, completion tokens)
    errors: int = 0


def client_loop(url: str, deadline: float, max_tokens: int, offset: int, out: ClientLog) -> None:
    import httpx

    with httpx.Client(timeout=1800) as http:  # a queued request waits for the ones before it
        i = offset
        while time.perf_counter() < deadline:
            body = {"model": "cncf-llm", "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
            start = time.perf_counter()
            try:
                response = http.post(f"{url}/v1/chat/completions", json=body)
                response.raise_for_status()
                end = time.perf_counter()
                out.done.append((end, end - start, int(response.json()["usage"]["completion_tokens"])))
            except Exception as exc:  # noqa: BLE001 - counted, the load goes on
                log.debug("request failed: %s", exc)
                out.errors += 1
            i += 1


def measure(assistant: Any, *, batching: bool, clients: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    from stages.serve.server import ServeConfig, create_app
    from tests.serve_helpers import running_server

    config = ServeConfig(max_batch=clients if batching else 1, batch_window_ms=20 if batching else 0,
                         max_queue=max(64, clients * 2), max_tokens_limit=max(1024, max_tokens))
    app = create_app(assistant, config, api_key="")
    with running_server(app) as url:
        client_loop(url, time.perf_counter() + 0.001, max_tokens, 0, ClientLog())  # warm-up: one request
        warm = app.state.batcher.stats.batches, app.state.batcher.stats.requests
        logs = [ClientLog() for _ in range(clients)]
        start = time.perf_counter()
        deadline = start + seconds
        threads = [threading.Thread(target=client_loop, args=(url, deadline, max_tokens, i, logs[i]))
                   for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()  # requests running at the deadline finish (they would hold the model in the next mode)
        stats = app.state.batcher.stats
        batches, batched = stats.batches - warm[0], stats.requests - warm[1]
    # Throughput counts what finished inside the window; the drain after it is not part of the load.
    finished = [d for log_ in logs for d in log_.done if d[0] <= deadline]
    latencies = sorted(d[1] for d in finished)
    done = len(latencies)
    return {
        "mode": f"batching on (<= {clients})" if batching else "one at a time", "clients": clients,
        "requests": done, "requests_per_s": done / seconds,
        "tokens_per_s": sum(d[2] for d in finished) / seconds,
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p95_s": latencies[min(done - 1, int(0.95 * done))] if latencies else float("nan"),
        "errors": sum(log_.errors for log_ in logs), "mean_batch": batched / batches if batches else 0.0,
    }


def load_assistant(which: str, args: argparse.Namespace) -> tuple[Any, str]:
    if which == "tiny":
        from tests.fakes.tiny_model import build_tiny_model
        from tests.serve_helpers import tiny_assistant, tiny_index

        tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
        model_dir = build_tiny_model(tmp / "model")
        return tiny_assistant(model_dir, tiny_index(tmp)), "tiny random Llama (2 layers, hidden 64) + 3-chunk index"
    from stages.common.inference import Assistant

    assistant = Assistant.from_params(args.params, base_dir=args.base, adapter_dir=args.adapter, index_dir=args.index,
                                      use_adapter=not args.base_only)
    index = "no index (closed-book)" if assistant.retriever is None else f"{len(assistant.retriever.chunks)}-chunk index"
    return assistant, f"{args.base}{'' if args.base_only else ' + ' + args.adapter} + {index}"


def table(rows: list[dict[str, Any]]) -> str:
    header = "| mode | clients | requests done | req/s | completion tok/s | p50 s | p95 s | errors | mean batch |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.1f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['errors']} | "
                     f"{r['mean_batch']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--base", default="models/base", help="with --model real")
    parser.add_argument("--adapter", default="models/adapter", help="with --model real")
    parser.add_argument("--index", default="data/index", help="with --model real (missing = closed-book)")
    parser.add_argument("--base-only", action="store_true", help="with --model real: no adapter")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration per mode")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.clients < 1 or args.seconds <= 0 or args.max_tokens < 1:
        parser.error("--clients, --seconds and --max-tokens must be positive")
    import torch

    from stages.common.modeling import setup_cpu_threads

    assistant, what = load_assistant(args.model, args)
    setup_cpu_threads(args.threads or None)
    rows = [measure(assistant, batching=b, clients=args.clients, seconds=args.seconds, max_tokens=args.max_tokens)
            for b in (False, True)]
    print(f"Model: {what}; {args.clients} closed-loop clients, {args.seconds:.0f} s per mode, max_tokens "
          f"{args.max_tokens}, greedy, retrieval on, torch threads {torch.get_num_threads()}.\n")
    print(table(rows))
    ratio = rows[1]["requests_per_s"] / rows[0]["requests_per_s"] if rows[0]["requests_per_s"] else float("inf")
    print(f"\nThroughput with batching / one at a time: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

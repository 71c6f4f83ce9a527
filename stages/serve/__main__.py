"""Serve the tuned model as an OpenAI-compatible chat API (retrieval on by default; answers cite sources).

  python -m stages.serve                       # http://127.0.0.1:8000/v1 ; any OpenAI client works
  CNCF_LLM_API_KEY=secret python -m stages.serve --host 0.0.0.0   # require Authorization: Bearer secret

Reads models/base, models/adapter and data/index (see params.yaml `inference`). On a GPU box, vLLM serves the
same endpoint with the adapter: see the README, "Use the model".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.serve.server import ServeConfig, create_app

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--base", default="models/base", help="base model dir")
    parser.add_argument("--adapter", default="models/adapter", help="LoRA adapter dir")
    parser.add_argument("--index", default="data/index", help="retrieval index dir (missing = closed-book)")
    parser.add_argument("--base-only", action="store_true", help="serve the base model without the adapter")
    parser.add_argument("--max-batch", type=int, default=ServeConfig.max_batch,
                        help="requests per generate call; 1 = one at a time (default: %(default)s)")
    parser.add_argument("--batch-window-ms", type=float, default=ServeConfig.batch_window_ms,
                        help="how long an idle server waits for more requests to batch (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=ServeConfig.max_queue,
                        help="requests inside the server before it answers 503 (default: %(default)s)")
    parser.add_argument("--max-tokens-limit", type=int, default=ServeConfig.max_tokens_limit,
                        help="largest max_tokens a request may ask for (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.max_batch < 1 or args.max_queue < 1 or args.batch_window_ms < 0 or args.max_tokens_limit < 1:
        raise StageError("--max-batch, --max-queue and --max-tokens-limit must be >= 1, --batch-window-ms >= 0")
    if not 0 < args.port < 65536:
        raise StageError(f"--port {args.port} is not a TCP port")
    import uvicorn

    from stages.common.inference import Assistant

    assistant = Assistant.from_params(args.params, base_dir=args.base, adapter_dir=args.adapter,
                                      index_dir=args.index, use_adapter=not args.base_only)
    config = ServeConfig(max_batch=args.max_batch, batch_window_ms=args.batch_window_ms, max_queue=args.max_queue,
                         max_tokens_limit=args.max_tokens_limit)
    app = create_app(assistant, config)
    log.info("serving %s on http://%s:%d/v1 (batch %d, queue %d, API key %s)", assistant.name, args.host,
             args.port, args.max_batch, args.max_queue, "required" if app.state.api_key_required else "not required")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

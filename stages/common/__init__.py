"""Code shared by several stages: params, JSONL I/O, HTTP, logging, metrics."""

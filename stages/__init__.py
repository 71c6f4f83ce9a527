"""cncf-llm pipeline stages; each submodule runs as `python -m stages.<name>`."""

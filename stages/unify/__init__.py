"""unify: scraped files (markdown, PDF, YAML/JSON, HTML) -> clean documents -> heading-aware chunks.

A package rather than one module because each input format has its own cleanup rules; the stage itself is
`python -m stages.unify` (see __main__.py) and the plain functions live in `pipeline`.
"""

"""index: hybrid retrieval index (BM25 + dense embeddings) over the English chunks; `evaluate` measures it."""

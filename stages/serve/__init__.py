"""`python -m stages.serve`: an OpenAI-compatible chat server over the inference core (stages.common.inference).

Retrieval is on by default; every answer carries `sources` and ends with numbered links. Requests arriving
together go through one batched `Assistant.answer_batch` call; a bounded queue answers 503 when full.
"""

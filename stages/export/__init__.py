"""export stage: models/base + models/adapter -> a merged full model, GGUF files (f16, q8_0), an Ollama
Modelfile and a LocalAI config, each GGUF checked against the merged model by next-token logits.

Why a stage: people run models in llama.cpp, Ollama and LocalAI, which read GGUF, not a peft adapter. Writing
the GGUF with the `gguf` package's writer (no llama.cpp checkout needed) and loading it back with transformers
proves the file holds the model we trained, not just a file with the right name.
"""

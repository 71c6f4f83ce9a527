"""Runtime configs beside the GGUF files: an Ollama Modelfile and a LocalAI model YAML.

Both runtimes render prompts with Go templates, not Jinja, so the ChatML turn format the model was trained on is
spelled out here; generation must stop at the turn end (`<|im_end|>`) or the model keeps talking as the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stages.common.cli import StageError

CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")

# Ollama: .Messages holds the conversation (the Modelfile's SYSTEM is prepended when the request has none).
OLLAMA_CHATML = (
    '{{- range $i, $_ := .Messages }}\n'
    '{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n'
    '<|im_start|>{{ .Role }}\n'
    '{{ .Content }}<|im_end|>\n'
    '{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n'
    '{{ end }}\n'
    '{{- end }}'
)

# LocalAI: each message is rendered by chat_message, the joined turns are .Input of the chat template.
LOCALAI_CHAT_MESSAGE = "<|im_start|>{{ .RoleName }}\n{{ if .Content }}{{ .Content }}{{ end }}<|im_end|>"
LOCALAI_CHAT = "{{ .Input }}\n<|im_start|>assistant\n"


def check_chatml(chat_template: str | None) -> None:
    """The Go templates below are ChatML; refuse a model whose own template is something else."""
    if not chat_template or not all(m in chat_template for m in CHATML_MARKERS):
        raise StageError("Ollama/LocalAI configs are written for ChatML models (<|im_start|>/<|im_end|>); this "
                         "model's chat template is different")


def stop_tokens(tokenizer: Any) -> list[str]:
    """The turn markers and end-of-text tokens the runtime must stop on, those the vocabulary has."""
    vocab = tokenizer.get_vocab()
    wanted = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", tokenizer.eos_token]
    return sorted({t for t in wanted if t and t in vocab})


def write_modelfile(path: Path, gguf_name: str, system_prompt: str, stops: list[str],
                    options: dict[str, Any]) -> None:
    """`ollama create cncf-llm -f Modelfile` in the folder of the GGUF file."""
    if '"""' in system_prompt:
        raise StageError('export.system_prompt must not contain """ (Ollama string delimiter)')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_CHATML}"""', f'SYSTEM """{system_prompt}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER {key} {value}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_localai_config(path: Path, name: str, gguf_name: str, system_prompt: str, stops: list[str],
                         context_size: int, options: dict[str, Any]) -> None:
    """A LocalAI model YAML (put it and the GGUF in LocalAI's models folder)."""
    config = {
        "name": name,
        "backend": "llama-cpp",
        "context_size": context_size,
        "parameters": {"model": gguf_name, **options},
        "stopwords": stops,
        "system_prompt": system_prompt,
        "template": {"chat_message": LOCALAI_CHAT_MESSAGE, "chat": LOCALAI_CHAT, "completion": "{{ .Input }}"},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")

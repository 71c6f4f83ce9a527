"""Chat templates made training-ready by what they can do, not by which model they came from.

Two capabilities matter for LoRA SFT on `messages` records (system?/user/assistant):

- a system role: Gemma-2's template raises "System role not supported" and others silently drop the turn; such a
  template gets a preamble that folds the system turn into the first user turn (the way Gemma-3 does natively), so
  every record trains and every prompt at eval/serve time renders the same way;
- `{% generation %}` markers around what the assistant writes (its content and its end-of-turn token), which trl's
  assistant-only loss needs. A template without them is swapped for a training variant that renders *identically*
  on probe conversations: SmolLM2's ChatML rewritten here, or one of trl's shipped `*_training.jinja` files (Gemma,
  Gemma-3, Llama-3, Qwen2.5, ...), or our own (Llama-3.1/3.2, which trl lacks). Identity is checked by rendering, so
  a template that differs only in whitespace still matches and one that renders differently never does.

After the change the assistant mask is checked on a probe: the masked tokens must be exactly the answer and its
end-of-turn token(s), or the stage stops with one line. The end-of-turn tokens found there are also the stop
tokens generation needs (`turn_end_token_ids`).

Llama-3.2's template writes today's date (`strftime_now`) into every prompt; our training variant defaults
`date_string` to the fixed date Llama-3.1 uses, so the same data tokenizes the same way on any day.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from stages.common.cli import StageError

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).with_name("templates")
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
FIXED_DATE = "26 Jul 2024"  # Llama-3.1's own default; pins Llama-3.2's strftime_now date
RENDER_KWARGS = {"date_string": FIXED_DATE}

# SmolLM2-Instruct's ChatML template, as shipped in its GGUF and tokenizer_config.json.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_DEFAULT_SYSTEM = re.compile(r"\{\{ '<\|im_start\|>system\n(.*?)<\|im_end\|>\n' \}\}", re.DOTALL)

# Gemma's turn format for a model that ships no template (gemma3-270m base): system folded, generation markers.
GEMMA_TRAINING_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<start_of_turn>model\n' }}{% generation %}{{ message['content'] + '<end_of_turn>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}{{ '<start_of_turn>' + message['role'] + '\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Prepended to a template without a system role: the system turn becomes the head of the first user turn.
SYSTEM_FOLD_PREAMBLE = (
    "{#- cncf-llm: this model's template has no system role; the system turn is folded into the first user turn -#}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages | length > 1 and messages[1]['role'] == 'user' -%}"
    "{%- set messages = [{'role': 'user', 'content': messages[0]['content'] + '\\n\\n' + messages[1]['content']}]"
    " + messages[2:] -%}"
    "{%- else -%}{%- set messages = [{'role': 'user', 'content': messages[0]['content']}] + messages[1:] -%}"
    "{%- endif -%}{%- endif -%}"
)

PROBE_SYSTEM, PROBE_USER, PROBE_ANSWER = "Probe system text.", "Probe question one?", "Probe answer one."
PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": PROBE_USER}, {"role": "assistant", "content": PROBE_ANSWER}],
    [{"role": "system", "content": PROBE_SYSTEM}, {"role": "user", "content": PROBE_USER},
     {"role": "assistant", "content": PROBE_ANSWER}],
    [{"role": "user", "content": "Hi there?"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "  Trailing spaces  "}, {"role": "assistant", "content": " Bye! "}],
]


def chatml_training_template(default_system: str | None) -> str:
    """ChatML that renders exactly like SmolLM2's, with the assistant content and its <|im_end|> inside
    `{% generation %}` so trl's assistant-only loss trains the model to answer and to stop."""
    system = ""
    if default_system is not None:
        system = ("{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\n" + default_system.replace("'", "\\'") + "<|im_end|>\n' }}{% endif %}")
    return (
        "{% for message in messages %}" + system
        + "{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{{ '\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


def current_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    return template.get("default") if isinstance(template, dict) else template


def has_generation_markers(template: str | None) -> bool:
    return bool(template and GENERATION_MARKER.search(template))


def render(tokenizer: Any, messages: Sequence[dict[str, str]], template: str | None = None,
           add_generation_prompt: bool = False) -> str:
    """The template's text for `messages` (the tokenizer's own template unless `template` is given)."""
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **RENDER_KWARGS)


def _render_or_error(tokenizer: Any, messages: list[dict[str, str]], template: str, gen: bool) -> str:
    try:
        return render(tokenizer, messages, template, gen)
    except Exception as exc:  # noqa: BLE001 - a template's raise_exception is a TemplateError; any failure counts
        return f"\x00error:{type(exc).__name__}"


def renders_like(tokenizer: Any, original: str, candidate: str) -> bool:
    """True when `candidate` gives byte-identical text to `original` on every probe, with and without the
    generation prompt (a probe both refuse, e.g. a system turn on Gemma-2, counts as identical)."""
    for probe in PROBES:
        for messages, gen in ((probe, False), (probe[:-1], True)):
            if _render_or_error(tokenizer, messages, original, gen) != _render_or_error(tokenizer, messages,
                                                                                        candidate, gen):
                return False
    return True


def supports_system_role(tokenizer: Any, template: str | None = None) -> bool:
    """Render a system + user probe: a template that raises or drops the system text has no system role."""
    messages = [{"role": "system", "content": PROBE_SYSTEM}, {"role": "user", "content": PROBE_USER}]
    try:
        text = render(tokenizer, messages, template or current_template(tokenizer), add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - "System role not supported" and its kin
        return False
    return PROBE_SYSTEM in text


def fold_system_turn(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Python twin of SYSTEM_FOLD_PREAMBLE, for prompts sent to a model whose template has no system role."""
    messages = [dict(m) for m in messages]
    if not messages or messages[0]["role"] != "system":
        return messages
    system = messages.pop(0)["content"]
    if messages and messages[0]["role"] == "user":
        messages[0]["content"] = f"{system}\n\n{messages[0]['content']}"
    else:
        messages.insert(0, {"role": "user", "content": system})
    return messages


def messages_for(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """`messages` as this tokenizer's template can take them (system folded where it has no system role)."""
    has_system = any(m["role"] == "system" for m in messages)
    return list(messages) if not has_system or supports_system_role(tokenizer) else fold_system_turn(messages)


@lru_cache(maxsize=1)
def _candidate_files() -> tuple[Path, ...]:
    """Our own training variants first, then every training template trl ships."""
    ours = sorted(TEMPLATE_DIR.glob("*_training.jinja"))
    try:
        import trl

        trl_dir = Path(trl.__file__).parent / "chat_templates"
        theirs = sorted(trl_dir.glob("*_training.jinja"))
    except ImportError:
        theirs = []
    return (*ours, *theirs)


def find_training_variant(tokenizer: Any, original: str) -> tuple[str, str] | None:
    """(template, name) of a marked template that renders exactly like `original`, or None."""
    match = CHATML_DEFAULT_SYSTEM.search(original)
    if _chatml_equivalent(original):
        return chatml_training_template(match.group(1) if match else None), "chatml"
    for path in _candidate_files():
        candidate = path.read_text(encoding="utf-8")
        if renders_like(tokenizer, original, candidate):
            return candidate, path.name
    return None


def _chatml_equivalent(template: str) -> bool:
    """SmolLM2's template with another default system prompt (other SmolLM2 sizes): same rendering otherwise."""
    return CHATML_DEFAULT_SYSTEM.sub("", template) == CHATML_DEFAULT_SYSTEM.sub("", SMOLLM2_TEMPLATE)


def ensure_training_template(tokenizer: Any, family: str = "auto") -> str:
    """Give the tokenizer a template with generation markers and a (possibly folded) system role; returns what
    was done. Raises StageError when no training variant renders like the model's template, or the assistant
    mask of the result is wrong."""
    template = current_template(tokenizer)
    if not template:
        if family == "gemma" or "<start_of_turn>" in tokenizer.get_vocab():
            tokenizer.chat_template, action = GEMMA_TRAINING_TEMPLATE, "gemma template added (model had none)"
        else:
            tokenizer.chat_template, action = chatml_training_template(None), "chatml template added (model had none)"
    elif has_generation_markers(template):
        action = "kept (has generation markers)"
    else:
        found = find_training_variant(tokenizer, template)
        if found is None:
            raise StageError("the chat template of this model has no {% generation %} markers and no training "
                             "variant renders like it; add the markers and point train.base_model at that local dir")
        tokenizer.chat_template = found[0]
        action = ("chatml template rewritten with generation markers" if found[1] == "chatml"
                  else f"training variant {found[1]} (renders identically)")
    if not supports_system_role(tokenizer):
        tokenizer.chat_template = SYSTEM_FOLD_PREAMBLE + current_template(tokenizer)
        action += "; system turn folded into the first user turn"
    turn_end_token_ids(tokenizer)  # raises when the assistant mask is not exactly answer + end of turn
    return action


def assistant_mask(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, **RENDER_KWARGS)
    return list(out["input_ids"]), list(out["assistant_masks"])


def turn_end_token_ids(tokenizer: Any) -> list[int]:
    """The special tokens the template puts at the end of an assistant turn (<|im_end|>, <end_of_turn>,
    <|eot_id|>), read from the assistant mask of a probe; checks that the mask is the answer and its end only."""
    ids, mask = assistant_mask(tokenizer, PROBES[0])
    trained = [t for t, m in zip(ids, mask, strict=True) if m]
    if not trained:
        raise StageError("chat template: the assistant mask is empty")
    first, last = mask.index(1), len(mask) - 1 - mask[::-1].index(1)
    if not all(mask[first:last + 1]):
        raise StageError("chat template: the assistant mask is not one contiguous span")
    text = tokenizer.decode(trained, skip_special_tokens=False)
    if not text.lstrip().startswith(PROBE_ANSWER) or PROBE_USER in text:
        raise StageError(f"chat template: the assistant mask covers {text!r}, not the answer and its end of turn")
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ends = sorted({t for t in trained if t in special})
    if not ends:
        raise StageError(f"chat template: the assistant turn {text!r} ends with no special token, so the model "
                         "would never learn to stop")
    return ends

"""A tiny Llama-shaped causal LM with a byte-level BPE tokenizer trained on corpus text.

Tests of qa_gen (llm path), train and eval need a real transformers model that loads from a local path, has a
chat template with `{% generation %}` markers (for assistant-only loss) and runs in milliseconds on CPU.
It is random, so tests assert plumbing (files, shapes, finite losses), never quality.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_TEXT = [
    "Kubernetes is an open source system for automating deployment, scaling and management of containers.",
    "Prometheus scrapes metrics from instrumented jobs and stores them as time series.",
    "Helm is the package manager for Kubernetes; a chart describes a set of Kubernetes resources.",
    "etcd is a distributed, reliable key-value store for the most critical data of a distributed system.",
    "kubectl apply -f deployment.yaml creates a Deployment with three replicas of the nginx Pod.",
    "How do I configure a liveness probe? Add a livenessProbe with an httpGet on the container port.",
]


def corpus_text(corpus_dir: Path | None, max_files: int = 200) -> list[str]:
    """Some English markdown from the shared corpus (sorted, bounded), else a small built-in text."""
    texts = list(DEFAULT_TEXT)
    if corpus_dir and corpus_dir.is_dir():
        for path in sorted(corpus_dir.rglob("*.md"))[:max_files]:
            texts.append(path.read_text(encoding="utf-8", errors="replace")[:4000])
    return texts


def build_tiny_model(out_dir: str | Path, texts: Iterable[str] | None = None, vocab_size: int = 512,
                     hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """Train the tokenizer, build a random LlamaForCausalLM, save both to `out_dir`; returns the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts or DEFAULT_TEXT), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    return out


TEMPLATE_FIXTURES = Path(__file__).resolve().parents[1] / "data" / "chat_templates"

# Per architecture: the config class, special tokens (bos, eos, pad, turn tokens) and the stop ids of the real
# model's generation_config.json (by token), with the real chat template text from tests/data/chat_templates/.
ARCHITECTURES: dict[str, dict] = {
    "gemma2": {"template": "gemma-2-2b-it.jinja", "bos": "<bos>", "eos": "<eos>", "pad": "<pad>",
               "special": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
               "stops": ["<eos>", "<end_of_turn>"]},
    "gemma3": {"template": "gemma-3-it.jinja", "bos": "<bos>", "eos": "<eos>", "pad": "<pad>",
               "special": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
               "stops": ["<eos>", "<end_of_turn>"]},
    "llama3": {"template": "llama-3.2-3b-instruct.jinja", "bos": "<|begin_of_text|>", "eos": "<|eot_id|>",
               "pad": "<|finetune_right_pad_id|>",
               "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eom_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"],
               "stops": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]},
    "qwen2": {"template": "qwen2.5-0.5b-instruct.jinja", "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>",
              "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              "stops": ["<|im_end|>", "<|endoftext|>"]},
    "smollm2": {"template": None, "bos": "<|im_start|>", "eos": "<|im_end|>", "pad": "<|im_end|>",
                "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "stops": ["<|im_end|>"]},
}


def build_tiny_arch(out_dir: str | Path, arch: str, dtype: str = "float32", seed: int = 0) -> Path:
    """A tiny random model of `arch` (gemma2 | gemma3 | llama3 | qwen2 | smollm2) with that family's special
    tokens, its real chat template and a generation_config whose eos_token_id lists every stop token."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    spec = ARCHITECTURES[arch]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=spec["special"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(DEFAULT_TEXT, trainer=trainer)
    if spec["bos"] and arch != "smollm2":  # Gemma and Llama-3 tokenizers prepend their BOS to plain text
        from tokenizers.processors import TemplateProcessing

        bos = spec["bos"]
        tok.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                special_tokens=[(bos, tok.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"],
                                        pad_token=spec["pad"])
    if spec["template"]:
        tokenizer.chat_template = (TEMPLATE_FIXTURES / spec["template"]).read_text(encoding="utf-8")
    else:
        from stages.common.chat_templates import SMOLLM2_TEMPLATE

        tokenizer.chat_template = SMOLLM2_TEMPLATE
    tokenizer.save_pretrained(out)

    vocab = tokenizer.get_vocab()
    common = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
              "bos_token_id": vocab.get(spec["bos"]) if spec["bos"] else None,
              "eos_token_id": vocab[spec["eos"]], "pad_token_id": vocab[spec["pad"]], "tie_word_embeddings": True}
    torch.manual_seed(seed)
    if arch == "gemma2":
        from transformers import Gemma2Config, Gemma2ForCausalLM

        model = Gemma2ForCausalLM(Gemma2Config(head_dim=16, sliding_window=64, **common))
    elif arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        model = Gemma3ForCausalLM(Gemma3TextConfig(head_dim=16, sliding_window=64, **common))
    elif arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**common))
    stops = [vocab[t] for t in spec["stops"]]
    model.generation_config = GenerationConfig(bos_token_id=common["bos_token_id"], pad_token_id=common["pad_token_id"],
                                               eos_token_id=stops if len(stops) > 1 else stops[0])
    model.to(getattr(torch, dtype)).save_pretrained(out)
    return out

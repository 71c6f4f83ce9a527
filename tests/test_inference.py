"""The inference core on a tiny model + tiny index: batch == one by one, stream == answer, sources, budgets."""

from __future__ import annotations

import re

import pytest

from stages.common.inference import Answer, Assistant, GenerationOptions, format_sources
from tests.fakes.tiny_index import build_tiny_index, make_chunk
from tests.pinned_params import inference_settings

OPTIONS = GenerationOptions(max_new_tokens=12, repetition_penalty=1.1)


@pytest.fixture(scope="module")
def assistant(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from stages.common.inference import load_chat_tokenizer
    from stages.common.retrieval import Retriever

    chunks = [make_chunk(0, "Helm", "Rollback", "helm rollback returns a release to an earlier revision."),
              make_chunk(1, "etcd", "Ports", "etcd listens for clients on port 2379."),
              make_chunk(2, "Prometheus", "Scraping", "Prometheus scrapes targets over HTTP.")]
    index = build_tiny_index(tmp_path_factory.mktemp("inference"), chunks)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    settings = inference_settings(system_prompt="You answer questions.", k=2, excerpt_words=30, max_prompt_tokens=600)
    return Assistant(model, load_chat_tokenizer(tiny_model_dir), Retriever.load(index), settings)


def test_answer_has_numbered_sources_and_counts(assistant):
    answer = assistant.answer("Which port does etcd use for clients?", options=OPTIONS)
    assert [s.n for s in answer.sources] == [1, 2]
    assert answer.sources[0].project == "etcd" and answer.sources[0].url.startswith("https://github.com/")
    assert answer.prompt_tokens > 50 and 0 < answer.completion_tokens <= 12
    assert answer.finish_reason in ("stop", "length")
    public = answer.to_dict()["sources"][0]
    assert set(public) == {"n", "url", "project", "title", "license", "chunk_id"}
    assert format_sources(answer.sources).startswith("\n\nSources:\n[1] Ports - https://github.com/")
    closed = assistant.answer("Which port does etcd use for clients?", closed_book=True, options=OPTIONS)
    assert closed.sources == [] and closed.prompt_tokens < answer.prompt_tokens


def test_batch_equals_one_by_one_and_stream_equals_answer(assistant):
    questions = ["How do I roll back a Helm release?", "What does Prometheus scrape?", "etcd port?"]
    batch = assistant.answer_batch(questions, options=OPTIONS)
    single = [assistant.answer(q, options=OPTIONS) for q in questions]
    assert [a.text for a in batch] == [a.text for a in single]
    assert [(a.prompt_tokens, a.completion_tokens) for a in batch] == [(a.prompt_tokens, a.completion_tokens)
                                                                        for a in single]
    pieces = list(assistant.stream(questions[0], options=OPTIONS))
    final = pieces[-1]
    assert isinstance(final, Answer) and all(isinstance(p, str) for p in pieces[:-1])
    assert "".join(pieces[:-1]).strip() == final.text == single[0].text
    assert [s.chunk_id for s in final.sources] == [s.chunk_id for s in single[0].sources]


def test_stop_strings_and_seeded_sampling(assistant):
    # the random tiny model's greedy answer is blank: seeded sampling gives real text to cut
    sampled = GenerationOptions(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    free = assistant.answer("What does Prometheus scrape?", closed_book=True, options=sampled).text
    assert free == assistant.answer("What does Prometheus scrape?", closed_book=True, options=sampled).text
    runs = [m for m in re.finditer(r"[A-Za-z]{2,}", free) if m.start() > 0]
    assert runs, free
    stop = runs[0].group()
    cut = assistant.answer("What does Prometheus scrape?", closed_book=True,
                           options=GenerationOptions(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3,
                                                     stop=(stop,))).text
    assert stop not in cut and free.startswith(cut)


def test_history_is_dropped_before_the_question(assistant):
    long_turn = "words " * 400
    conversation = [{"role": "user", "content": long_turn}, {"role": "assistant", "content": long_turn},
                    {"role": "user", "content": "Which port does etcd use?"}]
    prompt = assistant.build_prompt(conversation, None)
    assert "Which port does etcd use?" in prompt and long_turn.strip() not in prompt
    with pytest.raises(ValueError):
        assistant.answer([{"role": "assistant", "content": "hi"}])


def test_repetition_penalty_spares_the_prompt():
    """Tokens of the prompt (retrieved excerpts) stay as likely as they were; only the answer's own repeats pay."""
    import torch

    from stages.common.inference import answer_repetition_penalty

    processors = answer_repetition_penalty(1.5, prompt_length=3)
    input_ids = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])  # 3 prompt tokens, then 1 generated
    scores = processors(input_ids, torch.full((2, 10), 3.0))
    assert scores[0, 5] == scores[0, 6] == scores[0, 7] == 3.0 and scores[0, 8] == 2.0
    assert scores[1, 1] == 3.0 and scores[1, 4] == 2.0 and scores[1, 8] == 3.0
    assert len(answer_repetition_penalty(1.0, 3)) == 0


def test_bf16_autocast_reaches_the_model_in_every_generation_path(assistant):
    """`inference.autocast: bf16` runs the linear layers in bf16, also in the streaming path's worker thread
    (autocast state is per thread); `none` leaves them in fp32."""
    import dataclasses

    import torch

    bf16 = Assistant(assistant.model, assistant.tokenizer, assistant.retriever,
                     dataclasses.replace(assistant.settings, autocast="bf16"))
    linear = next(m for m in assistant.model.modules() if isinstance(m, torch.nn.Linear))
    seen: list[torch.dtype] = []
    hook = linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    try:
        list(bf16.stream("etcd port?", options=OPTIONS))
        streamed, seen[:] = set(seen), []
        bf16.answer("etcd port?", options=OPTIONS)
        batched, seen[:] = set(seen), []
        assistant.answer("etcd port?", options=OPTIONS)
        plain = set(seen)
    finally:
        hook.remove()
    assert streamed == batched == {torch.bfloat16}
    assert plain == {torch.float32}

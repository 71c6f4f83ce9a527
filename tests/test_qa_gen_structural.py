"""qa_gen structural generator and stage plumbing: rules on literal strings, quality on the shared corpus."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stages.common.cli import run_cli
from stages.common.jsonl import read_json, read_jsonl, write_jsonl
from stages.common.metrics import StageMetrics
from stages.qa_gen import finalize_pairs, generate_pairs
from stages.qa_gen.__main__ import main
from stages.qa_gen.grounding import grounding_score
from stages.qa_gen.structural import (
    command_name,
    definition_question,
    describe_manifest,
    generate_structural,
    skip_reason,
    task_phrase,
)
from stages.qa_gen.textutil import bounded_answer, display_name, is_self_contained, n_words, sentences
from tests.test_qa_gen_helpers import corpus_chunks, landscape_projects, qa_gen_params

PARAMS = qa_gen_params(
    generators=["structural"],
    min_grounding=0.6,
    min_answer_words=8,
    max_answer_words=180,
    max_manifest_words=250,
    max_pairs_per_chunk=3,
    seed=42,
)
DEIXIS = re.compile(r"\b(?:this page|this section|this document|the following|following|above|below)\b", re.I)


def chunk(
    text: str,
    heading_path: list[str],
    project: str = "Kubernetes",
    kind: str = "markdown",
    path: str = "content/en/docs/tasks/x.md",
    chunk_id: str = "c1",
    title: str = "",
) -> dict[str, Any]:
    return {
        "chunk_id": chunk_id,
        "doc_id": "d1",
        "project": project,
        "kind": kind,
        "title": title or (heading_path[0] if heading_path else "T"),
        "url": "https://example.org/x",
        "path": path,
        "license": "CC-BY-4.0",
        "heading_path": heading_path,
        "text": text,
        "n_words": n_words(text),
    }


# ---------------------------------------------------------------- rules on literal strings


def test_task_phrase_lowercases_heading_and_keeps_names() -> None:
    assert task_phrase("Configure a Liveness Probe", "Kubernetes") == "configure a liveness probe"
    assert (
        task_phrase("Configuring a Pod to Use a ConfigMap", "Kubernetes")
        == "configure a pod to use a ConfigMap"
    )
    assert task_phrase("Install Helm", "Helm") == "install Helm"
    assert task_phrase("Use of JSON in templates", "Helm") == ""
    assert task_phrase("Label names (attributes)", "OpenTelemetry") == ""
    assert task_phrase("Overview", "Kubernetes") == ""
    assert task_phrase("Getting started", "Kubernetes") == ""


def test_definition_question_needs_a_clear_term() -> None:
    assert (
        definition_question("A Pod is the smallest deployable unit of computing.", "Kubernetes", ["Pods"])
        == "What is a Pod in Kubernetes?"
    )
    assert (
        definition_question("Prometheus is an open-source monitoring system.", "Prometheus", [])
        == "What is Prometheus?"
    )
    assert definition_question("It is a tool for everything.", "Kubernetes", []) == ""
    assert (
        definition_question(
            "Resource quotas are a tool to address this concern.", "Kubernetes", ["Resource quotas"]
        )
        == ""
    )
    assert (
        definition_question("Fluentd is a data collector.", "CNCF TAG Security", [], frozenset({"fluentd"}))
        == "What is Fluentd?"
    )


def test_bounded_answer_cuts_at_sentence_and_drops_meta_sentences() -> None:
    text = "This page shows how to do it.\n\nThe kubelet restarts the container. " + "It waits a while. " * 30
    answer = bounded_answer(text, max_words=20, min_words=5)
    assert not answer.startswith("This page")
    assert answer.startswith("The kubelet restarts the container.")
    assert n_words(answer) <= 20 and answer.endswith(".")
    assert bounded_answer("Too short.", max_words=20, min_words=5) == ""
    templated = (
        "Install the kubelet on every node first.\n\nRun:\n\n```shell\nget v{{< skew latest >}}\n```\n\nDone."
    )
    assert bounded_answer(templated, max_words=50, min_words=3) == "Install the kubelet on every node first."


def test_sentences_keep_abbreviations_and_versions() -> None:
    assert sentences("Use e.g. Helm v3.1 here. Then run it.") == ["Use e.g. Helm v3.1 here.", "Then run it."]


def test_self_contained_questions() -> None:
    names = ["Kubernetes", "Helm"]
    assert is_self_contained("How do I install Helm?", names)
    assert is_self_contained("Write a Kubernetes manifest that defines a Pod named `web`.", names)
    assert not is_self_contained("What does this page describe about Helm?", names)
    assert not is_self_contained("How do I do the following with Helm?", names)
    assert not is_self_contained("How do I install it?", names)
    assert not is_self_contained("How do I install Helm", names)


def test_skip_reason_for_navigation_and_changelogs() -> None:
    links = "\n".join(f"- [Page {i}](/docs/page-{i}/)" for i in range(10))
    assert skip_reason(chunk(links, ["Docs"])) in ("mostly_links", "short_item_list")
    assert skip_reason(chunk("Fixed a bug in the thing.", ["v1.2.3"])) == "changelog_or_nav_heading"
    assert (
        skip_reason(chunk("Fixed a bug in the thing.", ["Changes"], path="CHANGELOG.md"))
        == "changelog_or_nav_path"
    )
    assert skip_reason(chunk("Kubernetes restarts failed containers automatically.", ["Probes"])) == ""


def test_task_chunk_becomes_a_how_do_i_question() -> None:
    text = (
        "Many applications eventually transition to broken states and cannot recover except by being "
        "restarted. Kubernetes provides liveness probes to detect and remedy such situations.\n\n"
        "```yaml\napiVersion: v1\nkind: Pod\n```\n"
    )
    pairs = list(
        generate_structural(
            [chunk(text, ["Configure Probes", "Configure a Liveness Probe"])], PARAMS, StageMetrics("t")
        )
    )
    assert [p["question"] for p in pairs] == ["How do I configure a liveness probe with Kubernetes?"]
    assert pairs[0]["answer"].startswith("Many applications")
    assert grounding_score(pairs[0]["answer"], text) > 0.95


def test_option_table_and_flag_block() -> None:
    table = (
        "| Key | Description | Default |\n|---|---|---|\n"
        "| `interval_sec` | Specifies the interval between service checks, in seconds. | `1` |\n"
    )
    pairs = list(
        generate_structural(
            [
                chunk(
                    table,
                    ["Process metrics", "Configuration parameters"],
                    project="Fluent Bit (Fluentd sub-project)",
                    title="Process metrics",
                )
            ],
            PARAMS,
            StageMetrics("t"),
        )
    )
    assert (
        pairs[0]["question"] == "What does the `interval_sec` parameter of Process metrics in Fluent Bit do?"
    )
    assert "Default: `1`." in pairs[0]["answer"]
    flags = (
        "```\n      --verify                     verify the package before using it\n"
        "  -h, --help                       help for pull\n```"
    )
    pairs = list(
        generate_structural(
            [chunk(flags, ["helm pull", "Options"], project="Helm", title="helm pull")],
            PARAMS,
            StageMetrics("t"),
        )
    )
    assert [p["question"] for p in pairs] == ["What does the `--verify` flag of `helm pull` do?"]
    assert command_name("`argocd proj` Command Reference") == "argocd proj"


def test_manifest_chunk_becomes_a_write_instruction() -> None:
    manifest = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: nginx-deployment\nspec:\n  replicas: 3\n"
        "  template:\n    spec:\n      containers:\n      - name: nginx\n        image: nginx:1.14.2\n"
    )
    text = f"Example manifest controllers/nginx-deployment.yaml.\n```yaml\n{manifest}```"
    pairs = list(generate_structural([chunk(text, [], kind="yaml")], PARAMS, StageMetrics("t")))
    assert pairs[0]["question"] == (
        "Write a Kubernetes manifest that defines a Deployment named "
        "`nginx-deployment` with 3 replicas, the `nginx:1.14.2` image."
    )
    assert "kind: Deployment" in pairs[0]["answer"] and pairs[0]["answer"].startswith("```")
    assert (
        describe_manifest({"kind": "Service", "metadata": {"name": "web"}, "spec": {"type": "NodePort"}})
        == "a Service named `web` with type NodePort"
    )


HELM_ANSWER = "Helm installs charts into Kubernetes clusters and tracks each release."


def test_finalize_drops_low_grounding_and_duplicates() -> None:
    c = chunk(
        "Helm installs charts into Kubernetes clusters and tracks each release.", ["Helm"], project="Helm"
    )
    base = {
        "project": "Helm",
        "doc_id": "d1",
        "chunk_id": "c1",
        "url": "u",
        "license": "l",
        "generator": "llm",
    }
    candidates = [
        {**base, "question": "What does Helm install?", "answer": HELM_ANSWER},
        {**base, "question": "What does `Helm` install?", "answer": HELM_ANSWER},
        {
            **base,
            "question": "Who wrote Helm?",
            "answer": "Bananas grow quickly on tropical mountain farms every single year.",
        },
        {**base, "question": "Does Helm track releases?", "answer": "Helm tracks each release."},
        {**base, "question": "What does it install?", "answer": HELM_ANSWER},
        {**base, "question": "What does Helm track?", "answer": ""},
    ]
    metrics = StageMetrics("t")
    out = finalize_pairs(candidates, {"c1": c}, PARAMS, metrics, ["Helm"])
    assert [r["question"] for r in out] == ["What does Helm install?"]
    assert out[0]["grounding"] >= 0.9 and len(out[0]["qa_id"]) == 16
    assert metrics.counts["dropped.low_grounding"] == 1
    assert metrics.counts["dropped.duplicate_in_chunk"] == 1
    assert metrics.counts["dropped.not_self_contained"] == 1
    assert metrics.counts["dropped.empty"] == 1
    assert metrics.counts["dropped.short_answer"] == 1


def test_missing_chunks_is_one_clear_error(
    tmp_path: Path, repo_root: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(
        main,
        [
            "--params",
            str(repo_root / "params.yaml"),
            "--chunks",
            str(tmp_path / "none.jsonl"),
            "--out",
            str(tmp_path / "qa.jsonl"),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
    )
    assert code == 1
    err = capfd.readouterr().err
    assert "langfilter" in err and "Traceback" not in err


# ---------------------------------------------------------------- the shared corpus, end to end


@pytest.fixture(scope="module")
def corpus_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("qa_corpus")
    write_jsonl(root / "chunks.jsonl", corpus_chunks(corpus))
    write_jsonl(root / "projects.jsonl", landscape_projects(corpus))
    params_path = root / "params.yaml"
    import yaml

    params_path.write_text(yaml.safe_dump({"qa_gen": PARAMS.model_dump()}), encoding="utf-8")
    args = [
        "--params",
        str(params_path),
        "--chunks",
        str(root / "chunks.jsonl"),
        "--ner-dir",
        str(root / "ner"),
        "--projects",
        str(root / "projects.jsonl"),
        "--out",
        str(root / "qa.jsonl"),
        "--metrics",
        str(root / "metrics.json"),
    ]
    assert run_cli(main, args) == 0
    return {
        "root": root,
        "args": args,
        "records": list(read_jsonl(root / "qa.jsonl")),
        "metrics": read_json(root / "metrics.json"),
    }


def test_corpus_yields_well_over_a_thousand_pairs(corpus_run: dict[str, Any]) -> None:
    records = corpus_run["records"]
    assert len(records) >= 2000
    projects = {r["project"] for r in records}
    assert {"Kubernetes", "Helm", "Prometheus", "Argo"} <= projects
    metrics = corpus_run["metrics"]
    assert metrics["pairs_by_generator"]["structural"] == len(records)
    assert metrics["chunks_in"] > 10000 and "dropped" in metrics


def test_corpus_pairs_are_self_contained_and_grounded(corpus_run: dict[str, Any]) -> None:
    records = corpus_run["records"]
    keys = {
        "qa_id",
        "question",
        "answer",
        "project",
        "doc_id",
        "chunk_id",
        "url",
        "license",
        "generator",
        "grounding",
    }
    for r in records:
        q = r["question"]
        assert set(r) == keys
        assert q.endswith("?") or (q.startswith("Write a Kubernetes manifest") and q.endswith(".")), q
        assert not DEIXIS.search(q), q
        assert (
            display_name(r["project"]).lower() in q.lower()
            or "kubernetes" in q.lower()
            or q.startswith("What is")
        ), q
        assert n_words(r["answer"]) >= PARAMS.min_answer_words, r
        assert r["grounding"] >= PARAMS.min_grounding
        assert r["url"].startswith("https://") and r["license"]
    assert len({r["qa_id"] for r in records}) == len(records)
    assert len({r["question"].lower() for r in records}) == len(records)
    prose = [r for r in records if not r["answer"].startswith("```")]
    assert max(n_words(r["answer"]) for r in prose) <= PARAMS.max_answer_words


def test_corpus_has_the_expected_kinds_of_questions(corpus_run: dict[str, Any]) -> None:
    questions = {r["question"] for r in corpus_run["records"]}
    assert "How do I define a liveness command with Kubernetes?" in questions
    assert any(re.fullmatch(r"What does the `--[\w-]+` flag of `helm pull` do\?", q) for q in questions)
    assert any(
        q.startswith("Write a Kubernetes manifest that defines a Pod named `liveness-exec`")
        for q in questions
    )
    assert any(q.startswith("What is a Pod in Kubernetes") for q in questions)
    assert any(re.match(r"What does the `\w+` parameter of .* in Fluent Bit do\?", q) for q in questions)


@pytest.mark.slow
def test_corpus_run_is_deterministic(corpus_run: dict[str, Any]) -> None:
    root = corpus_run["root"]
    args = list(corpus_run["args"])
    args[args.index("--out") + 1] = str(root / "qa2.jsonl")
    assert run_cli(main, args) == 0
    assert (root / "qa.jsonl").read_bytes() == (root / "qa2.jsonl").read_bytes()


def test_generate_pairs_rejects_unknown_generator() -> None:
    from stages.common.cli import StageError

    with pytest.raises(StageError, match="unknown generator"):
        generate_pairs([], [], [], [], PARAMS.model_copy(update={"generators": ["nope"]}), StageMetrics("t"))

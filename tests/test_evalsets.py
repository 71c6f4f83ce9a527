"""The hand-written eval sets: well-formed, spread over every corpus source, and paraphrased, not copied.

The paraphrase check compares each item with the one document it names (`checked_against`): an item that shares a
word 13-gram with it (the eval stage's contamination rule) would be a copy of the docs, which a model trained on
those docs could recite without knowing anything. 10-grams are counted too and must stay rare.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stages.common.text import words

log = logging.getLogger(__name__)

EVALSETS = Path(__file__).resolve().parents[1] / "evalsets"
QA_PATH = EVALSETS / "cncf_qa.jsonl"
MCQ_PATH = EVALSETS / "cncf_mcq.jsonl"
MIN_ITEMS = 150
MIN_PER_SOURCE = 8
MAX_SHARED_10GRAM_SHARE = 0.02
OPTION_IDS = ("a", "b", "c", "d")
LANG_DIR = re.compile(r"[a-z]{2}(-[a-z]{2,4})?")  # content/<lang>/ of a translated site
TRANSLATED_README = re.compile(r"README-[a-z]{2}(-[a-z]{2,4})?\.md", re.IGNORECASE)  # README-ko.md and the like

# corpus tree -> the project name the pipeline gives it (scrape.repo_projects, else the landscape entry whose
# repo or GitHub owner matches: fluent/* is the landscape's "Fluentd", argoproj/* its "Argo")
SOURCE_PROJECTS = {
    "argoproj__argo-cd": "Argo",
    "cncf__tag-security": "CNCF TAG Security",
    "containerd__containerd": "containerd",
    "coredns__coredns.io": "CoreDNS",
    "etcd-io__website": "etcd",
    "fluent__fluent-bit-docs": "Fluentd",
    "helm__helm-www": "Helm",
    "jaegertracing__documentation": "Jaeger",
    "k8sgpt-ai__docs": "K8sGPT",
    "karmada-io__website": "Karmada",
    "kubernetes__community": "Kubernetes",
    "kubernetes__website": "Kubernetes",
    "linkerd__website": "Linkerd",
    "open-telemetry__opentelemetry.io": "OpenTelemetry",
    "prometheus__docs": "Prometheus",
}


def load(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{path.name}:{number}: blank line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{path.name}:{number}: not an object"
        rows.append(row)
    return rows


def item_text(row: dict[str, Any]) -> str:
    """What could have been copied: question + answer, or question + every option (as the eval stage reads it)."""
    if "options" in row:
        return row["question"] + "\n" + "\n".join(row["options"][k] for k in sorted(row["options"]))
    return f"{row['question']}\n{row['answer']}"


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text, lower=True)
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def is_translation(checked_against: str) -> bool:
    """A page of a translated site (content/<lang>/ other than en, i18n/, README-ko.md): not an English source."""
    parts = Path(checked_against).parts
    return "i18n" in parts or TRANSLATED_README.fullmatch(parts[-1]) is not None or any(
        a == "content" and LANG_DIR.fullmatch(b) is not None and b != "en" for a, b in zip(parts, parts[1:], strict=False))


def source(row: dict[str, Any]) -> str:
    return row["checked_against"].split("/", 1)[0]


@pytest.fixture(scope="module", params=["qa", "mcq"])
def evalset(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, load(QA_PATH if request.param == "qa" else MCQ_PATH)


def test_rows_well_formed(evalset: tuple[str, list[dict[str, Any]]]) -> None:
    kind, rows = evalset
    required = {"id", "project", "question", "answer", "checked_against"} | ({"options"} if kind == "mcq" else set())
    for row in rows:
        assert required <= row.keys(), f"{row.get('id')}: missing {sorted(required - row.keys())}"
        for field in required - {"options"}:
            assert isinstance(row[field], str) and row[field].strip(), f"{row['id']}: empty {field}"
        assert row["id"].startswith(f"cncf-{kind}-"), row["id"]
        if kind == "mcq":
            options = row["options"]
            assert sorted(options) == list(OPTION_IDS), f"{row['id']}: options {sorted(options)}"
            assert row["answer"] in options, f"{row['id']}: answer {row['answer']!r} is not an option"
            texts = [options[k].strip().lower() for k in OPTION_IDS]
            assert all(texts) and len(set(texts)) == 4, f"{row['id']}: empty or repeated options"
        else:
            assert row["answer"].strip().lower() != row["question"].strip().lower(), row["id"]
    ids = Counter(row["id"] for row in rows)
    assert not [i for i, c in ids.items() if c > 1], f"duplicate ids: {[i for i, c in ids.items() if c > 1]}"
    questions = Counter(row["question"].strip().lower() for row in rows)
    assert not [q for q, c in questions.items() if c > 1], "a question appears twice"


def test_size_and_spread(evalset: tuple[str, list[dict[str, Any]]]) -> None:
    kind, rows = evalset
    n = len(rows)
    assert n >= MIN_ITEMS, f"{kind}: {n} items < {MIN_ITEMS}"
    per_source = Counter(source(row) for row in rows)
    thin = {s: per_source.get(s, 0) for s in SOURCE_PROJECTS if per_source.get(s, 0) < MIN_PER_SOURCE}
    assert not thin, f"{kind}: sources under {MIN_PER_SOURCE} items: {thin}"
    unknown = set(per_source) - set(SOURCE_PROJECTS)
    assert not unknown, f"{kind}: items checked against unknown sources {unknown}"
    if kind == "mcq":
        keys = Counter(row["answer"] for row in rows)
        # a fixed position would let a position bias score; each letter carries 15-35 % of the keys
        assert all(0.15 <= keys[k] / len(rows) <= 0.35 for k in OPTION_IDS), f"answer keys {dict(keys)}"


def test_project_names_match_the_pipeline(evalset: tuple[str, list[dict[str, Any]]]) -> None:
    _, rows = evalset
    wrong = [(row["id"], row["project"], SOURCE_PROJECTS.get(source(row))) for row in rows
             if row["project"] != SOURCE_PROJECTS.get(source(row))]
    assert not wrong, f"project differs from the pipeline's name for the source: {wrong[:5]}"


def test_sources_exist_and_are_english(evalset: tuple[str, list[dict[str, Any]]], corpus: Path) -> None:
    _, rows = evalset
    for row in rows:
        path = corpus / "repos" / row["checked_against"]
        assert path.is_file(), f"{row['id']}: {row['checked_against']} is not in the corpus"
        translated = is_translation(row["checked_against"])
        assert not translated, f"{row['id']}: {row['checked_against']} is a translation"


def test_paraphrased_not_copied(evalset: tuple[str, list[dict[str, Any]]], corpus: Path) -> None:
    """No item shares a word 13-gram with its source document; 10-gram overlaps stay rare (counted, logged)."""
    kind, rows = evalset
    copied, close = [], []
    for row in rows:
        doc = (corpus / "repos" / row["checked_against"]).read_text(encoding="utf-8", errors="replace")
        text = item_text(row)
        if ngrams(text, 13) & ngrams(doc, 13):
            copied.append(row["id"])
        if ngrams(text, 10) & ngrams(doc, 10):
            close.append(row["id"])
    log.info("%s: %d/%d items share a 10-gram with their source: %s", kind, len(close), len(rows), close)
    assert not copied, f"{kind}: items copying a 13-gram of their source: {copied}"
    assert len(close) <= MAX_SHARED_10GRAM_SHARE * len(rows), f"{kind}: 10-gram overlaps: {close}"


def test_paraphrase_check_can_fail(corpus: Path) -> None:
    """The n-gram check catches a sentence lifted from a document (so the test above is not vacuous)."""
    doc_path = corpus / "repos" / "prometheus__docs" / "docs" / "introduction" / "overview.md"
    doc = doc_path.read_text(encoding="utf-8")
    lifted = " ".join(words(doc, lower=True)[200:215])
    assert ngrams(f"What is this?\n{lifted}", 13) & ngrams(doc, 13)
    assert not ngrams("What is this?\nSomething said in other words entirely.", 13) & ngrams(doc, 13)


def test_translation_detector() -> None:
    assert is_translation("kubernetes__website/content/zh-cn/docs/concepts/overview/components.md")
    assert is_translation("open-telemetry__opentelemetry.io/content/es/docs/collector/_index.md")
    assert is_translation("kubernetes__community/contributors/guide/contributor-cheatsheet/README-ko.md")
    assert not is_translation("kubernetes__website/content/en/docs/concepts/overview/components.md")
    assert not is_translation("jaegertracing__documentation/content/docs/v2/2.20/getting-started.md")
    assert not is_translation("coredns__coredns.io/content/plugins/forward.md")

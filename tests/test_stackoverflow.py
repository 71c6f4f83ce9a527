"""stackoverflow stage against a local fake StackExchange API (real question pages + answer fixtures) and replay.

Covers: tags from the landscape, HTML/markdown conversion, answer choice, embedded vs separately fetched answers,
the API's backoff field, quota exhaustion, 502/429 retries, malformed JSON, the key staying secret, the replay
layout written by `save_dir` and read by `source=dir`, the answer-less corpus pages and the offline message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages import stackoverflow as S
from stages.common.cli import StageError, run_cli
from stages.common.http import HttpClient
from stages.common.jsonl import read_jsonl, write_jsonl
from stages.common.metrics import StageMetrics
from tests.fakes.stackexchange_server import ANSWERS_FIXTURES, CUSTOM_FILTER, FakeStackExchange

# Questions of corpus page 001 with a fixture answer that passes the default thresholds (score >= 1):
EXPECTED_QUESTIONS = {76940461, 76905630, 76874346, 76872751, 76850938, 76832251, 76799224, 76780191}

PROJECTS = [
    {"project": "Kubernetes", "stack_overflow_url": "https://stackoverflow.com/questions/tagged/kubernetes"},
    {"project": "Argo", "stack_overflow_url": "https://stackoverflow.com/questions/tagged/argoproj+or+argo"},
    {"project": "Carvel", "stack_overflow_url": "https://stackoverflow.com/search?q=carvel&s=f98"},
]


class Clock:
    """A fake monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


@pytest.fixture
def fake(corpus: Path) -> Any:
    with FakeStackExchange(corpus / "stackexchange", max_pages=1) as api:
        yield api


def base_cfg(repo_root: Path, **overrides: Any) -> dict[str, Any]:
    cfg = yaml.safe_load((repo_root / "params.yaml").read_text())["stackoverflow"]
    cfg.update({"page_size": 10, **overrides})
    return cfg


def run_api(fake: FakeStackExchange, tmp: Path, cfg: dict[str, Any], projects: list[dict[str, Any]] = PROJECTS,
            clock: Clock | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    clock = clock or Clock()
    write_jsonl(tmp / "projects.jsonl", projects)
    metrics = StageMetrics("stackoverflow")
    cfg = {**cfg, "source": "api", "api_url": fake.url}
    client = HttpClient(max_retries=3, sleep=clock.sleep, timeout=5)
    source = S.make_source(cfg, metrics, client=client, sleep=clock.sleep, clock=clock)
    pairs = S.run(tmp / "projects.jsonl", tmp / "qa.jsonl", cfg, metrics, source=source)
    return pairs, metrics.as_dict()


def question_id(pair: dict[str, Any]) -> int:
    return int(pair["url"].split("/")[4])


# ------------------------------------------------------------------------------------------- pure helpers
def test_tags_come_from_the_landscape_with_overrides() -> None:
    assert S.tags_from_url("https://stackoverflow.com/questions/tagged/kubernetes") == ["kubernetes"]
    assert S.tags_from_url("https://stackoverflow.com/questions/tagged/argoproj+or+argo") == ["argoproj", "argo"]
    assert S.tags_from_url("https://stackoverflow.com/questions/tagged/nats.io") == ["nats.io"]
    assert S.tags_from_url("https://stackoverflow.com/search?q=carvel") == []
    assert S.slug_tag("Open Policy Agent (OPA)") == "open-policy-agent-opa"
    tags = S.project_tags([*PROJECTS, {"project": "Helm"}, {"project": ""}],
                          {"Helm": "kubernetes-helm", "Argo": ["argocd", "argo-workflows"]})
    assert tags == {"Argo": ["argo-workflows", "argocd"], "Carvel": ["carvel"], "Helm": ["kubernetes-helm"],
                    "Kubernetes": ["kubernetes"]}


def test_html_to_markdown_keeps_code_fenced_and_unescapes() -> None:
    body = ('<p>Use <code>kubectl get pods -l app=web</code> &amp; check <a href="https://k8s.io/docs">the '
            'docs</a>:</p>\n<pre class="lang-yaml"><code>spec:\n  replicas: 2\n  # a &lt;comment&gt;\n'
            '</code></pre>\n<ul>\n<li>first <strong>bold</strong></li>\n<li>second</li>\n</ul>\n'
            '<blockquote><p>quoted</p></blockquote>')
    text = S.html_to_markdown(body)
    assert "Use `kubectl get pods -l app=web` & check [the docs](https://k8s.io/docs):" in text
    assert "```yaml\nspec:\n  replicas: 2\n  # a <comment>\n```" in text
    assert "- first **bold**\n- second" in text
    assert "> quoted" in text


def test_body_markdown_indented_code_becomes_fenced() -> None:
    raw = ("Try this:\r\n\r\n<!-- language: lang-go -->\r\n\r\n    ns, _, err := cfg.Namespace()\r\n"
           "    if err != nil {\r\n        return err\r\n    }\r\n\r\nThen it&#39;s &quot;done&quot;.\r\n\r\n"
           "- a list\r\n\r\n    continued item text\r\n")
    text = S.markdown_from_api(raw)
    assert "```go\nns, _, err := cfg.Namespace()\nif err != nil {\n    return err\n}\n```" in text
    assert "Then it's \"done\"." in text
    assert "    continued item text" in text  # list continuation is not code
    assert text.count("```") == 2


def test_answer_choice_prefers_accepted_then_score() -> None:
    metrics = StageMetrics("stackoverflow")
    answers = [{"answer_id": 1, "score": 9, "is_accepted": False}, {"answer_id": 2, "score": 2, "is_accepted": True},
               {"answer_id": 3, "score": 0, "is_accepted": False}, {"answer_id": 4, "score": 9, "is_accepted": False}]
    assert [a["answer_id"] for a in S.pick_answers(answers, 1, 2, metrics)] == [2, 1]
    assert metrics.counts["dropped.low_answer_score"] == 1 and metrics.counts["dropped.extra_answers"] == 1


# ------------------------------------------------------------------------------------------------ fake API
def test_api_with_custom_filter_embeds_answers(fake: FakeStackExchange, tmp_path: Path, repo_root: Path) -> None:
    pairs, m = run_api(fake, tmp_path, base_cfg(repo_root))
    assert {question_id(p) for p in pairs} == EXPECTED_QUESTIONS
    assert [p["qa_id"] for p in pairs] == sorted(p["qa_id"] for p in pairs)
    by_q = {question_id(p): p for p in pairs}
    replicasets = by_q[76874346]  # accepted (score 2) wins over the higher-scored (4) other answer
    assert replicasets["is_accepted"] and replicasets["score"] == 2 and replicasets["author"] == "Priya N"
    assert by_q[76872751]["author"] == "José Ortega"  # display_name arrives HTML-escaped
    for p in pairs:
        assert set(p) == {"qa_id", "question", "answer", "project", "url", "score", "is_accepted", "tags",
                          "author", "license"}
        assert p["license"] == "CC BY-SA 4.0" and p["project"] == "Kubernetes" and "kubernetes" in p["tags"]
        assert p["url"].startswith("https://stackoverflow.com/questions/")
        assert p["question"].strip() and p["answer"].strip() and "&quot;" not in p["answer"]
    assert "```go\npods, err := clientset.CoreV1().Pods(namespace)" in by_q[76940461]["answer"]
    assert by_q[76905630]["question"].startswith("Can ArgoCD deploy a Helm chart from Git repository")
    assert m["dropped"]["unknown_tag"] == 3  # argoproj, argo, carvel are not in this site's tags
    assert m["dropped"]["low_answer_score"] == 1  # 76841889's only answer has score 0
    assert m["out"]["pairs"] == len(pairs) == len(list(read_jsonl(tmp_path / "qa.jsonl")))
    assert len(fake.calls("filters/create")) == 1
    questions = fake.calls("questions")
    assert [q["page"] for q in questions] == ["1", "2"]  # 17 questions with score >= 1, pagesize 10
    assert all(q["filter"] == CUSTOM_FILTER and q["sort"] == "votes" and q["min"] == "1" for q in questions)
    # Questions answered upstream but absent from the fixtures are looked up once per page, not per question.
    assert len(fake.calls("questions/answers")) <= len(questions)


def test_withbody_fetches_answers_and_saved_pages_replay_identically(fake: FakeStackExchange, tmp_path: Path,
                                                                     repo_root: Path) -> None:
    save = tmp_path / "saved"
    pairs, m = run_api(fake, tmp_path, base_cfg(repo_root, filter="withbody", save_dir=str(save)))
    assert {question_id(p) for p in pairs} == EXPECTED_QUESTIONS
    assert not fake.calls("filters/create") and len(fake.calls("questions/answers")) == 2
    assert sorted(p.name for p in save.iterdir()) == ["answers_kubernetes_page_001.json",
                                                      "answers_kubernetes_page_002.json",
                                                      "questions_kubernetes_page_001.json",
                                                      "questions_kubernetes_page_002.json"]
    # Without body_markdown the answer comes from HTML: code is still fenced, its language kept.
    by_q = {question_id(p): p for p in pairs}
    assert "```go\npods, err := clientset.CoreV1().Pods(namespace)" in by_q[76940461]["answer"]

    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    write_jsonl(replay_dir / "projects.jsonl", PROJECTS)
    metrics = StageMetrics("stackoverflow")
    S.run(replay_dir / "projects.jsonl", replay_dir / "qa.jsonl",
          base_cfg(repo_root, source="dir", dir=str(save)), metrics)
    assert (replay_dir / "qa.jsonl").read_bytes() == (tmp_path / "qa.jsonl").read_bytes()
    assert metrics.counts["dropped.unknown_tag"] == 3


def test_more_specific_tag_owns_the_question(fake: FakeStackExchange, tmp_path: Path, repo_root: Path) -> None:
    projects = [*PROJECTS, {"project": "Helm"}]
    pairs, m = run_api(fake, tmp_path, base_cfg(repo_root, tags={"Helm": "kubernetes-helm"}), projects)
    owners = {question_id(p): p["project"] for p in pairs}
    assert owners[76905630] == "Helm"  # tagged kubernetes-helm as well as kubernetes
    assert m["dropped"]["duplicate"] == 1 and len(pairs) == len(EXPECTED_QUESTIONS)


def test_backoff_field_delays_the_next_call_of_that_method(fake: FakeStackExchange, tmp_path: Path,
                                                          repo_root: Path) -> None:
    fake.backoff["questions"] = [7]
    clock = Clock()
    pairs, m = run_api(fake, tmp_path, base_cfg(repo_root), clock=clock)
    assert clock.sleeps == [7.0]  # one wait, before page 2 of /questions (answers calls were not held back)
    assert m["backoff"] == {"received": 1, "waits": 1}
    assert len(fake.calls("questions")) == 2 and len(pairs) == len(EXPECTED_QUESTIONS)


def test_quota_exhaustion_stops_cleanly(corpus: Path, tmp_path: Path, repo_root: Path) -> None:
    # filters/create, tags/info, questions p1 (its answers are embedded), then the quota is spent.
    with FakeStackExchange(corpus / "stackexchange", max_pages=1, quota=3) as api:
        pairs, m = run_api(api, tmp_path, base_cfg(repo_root))
        assert api.quota_remaining == 0  # never pushed into throttle_violation
        assert len(api.calls("questions")) == 1 and not api.calls("questions/answers")
    assert m["stopped"]["quota_exhausted"] == 1 and m["quota_remaining"] == 0
    assert 0 < len(pairs) < len(EXPECTED_QUESTIONS)
    assert len(list(read_jsonl(tmp_path / "qa.jsonl"))) == len(pairs)


def test_502_and_429_are_retried(fake: FakeStackExchange, tmp_path: Path, repo_root: Path) -> None:
    fake.fail["questions"] = [502, 429]
    clock = Clock()
    pairs, m = run_api(fake, tmp_path, base_cfg(repo_root), clock=clock)
    assert len(pairs) == len(EXPECTED_QUESTIONS)
    assert m["http"]["errors"]["http_502"] == 1 and m["http"]["rate_limited"] == 1 and m["http"]["retries"] == 2
    assert len(clock.sleeps) == 2


def test_malformed_json_is_counted_and_the_run_goes_on(fake: FakeStackExchange, tmp_path: Path,
                                                       repo_root: Path) -> None:
    fake.malformed["questions"] = 1  # page 1 arrives broken
    pairs, m = run_api(fake, tmp_path, base_cfg(repo_root))
    assert m["errors"]["bad_json"] == 1
    assert [q["page"] for q in fake.calls("questions")] == ["1", "2"]
    assert {question_id(p) for p in pairs} < EXPECTED_QUESTIONS  # page 2's pairs are still there
    assert pairs


def test_key_is_sent_but_never_written(fake: FakeStackExchange, tmp_path: Path, repo_root: Path,
                                       monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    secret = "k3y-Sup3rSecret(("
    monkeypatch.setenv("STACKEXCHANGE_KEY", secret)
    fake.fail["questions"] = [502]  # a retry warning is logged: it must not carry the key
    save = tmp_path / "saved"
    with caplog.at_level("DEBUG"):
        run_api(fake, tmp_path, base_cfg(repo_root, save_dir=str(save)))
    assert all(params.get("key") == secret for _, params in fake.requests)
    assert secret not in caplog.text
    written = [tmp_path / "qa.jsonl", *save.iterdir()]
    assert all(secret not in p.read_text() for p in written)


# ------------------------------------------------------------------------------------------------- replay
def test_replay_of_the_answerless_corpus_succeeds_with_no_pairs(corpus: Path, tmp_path: Path,
                                                                repo_root: Path) -> None:
    write_jsonl(tmp_path / "projects.jsonl", PROJECTS[:1])
    metrics = StageMetrics("stackoverflow")
    cfg = base_cfg(repo_root, source="dir", dir=str(corpus / "stackexchange"), max_questions_per_tag=10_000)
    pairs = S.run(tmp_path / "projects.jsonl", tmp_path / "qa.jsonl", cfg, metrics)
    m = metrics.as_dict()
    assert pairs == [] and (tmp_path / "qa.jsonl").read_text() == ""
    assert m["questions"]["seen"] == 6000
    assert m["dropped"]["no_answers"] + m["dropped"]["low_question_score"] == 6000
    assert m["dropped"]["no_answers"] > 2000


def test_replay_with_answer_fixtures_matches_the_api(fake: FakeStackExchange, corpus: Path, tmp_path: Path,
                                                     repo_root: Path) -> None:
    replay = tmp_path / "replay"
    replay.mkdir()
    # Links, not copies: the corpus stays in one place.
    (replay / "questions_kubernetes_page_001.json").symlink_to(corpus / "stackexchange" /
                                                                "questions_kubernetes_page_001.json")
    (replay / "answers_kubernetes_page_001.json").symlink_to(ANSWERS_FIXTURES / "answers_kubernetes_page_001.json")
    write_jsonl(tmp_path / "projects.jsonl", PROJECTS[:1])
    metrics = StageMetrics("stackoverflow")
    replayed = S.run(tmp_path / "projects.jsonl", tmp_path / "qa_replay.jsonl",
                     base_cfg(repo_root, source="dir", dir=str(replay)), metrics)
    live, _ = run_api(fake, tmp_path, base_cfg(repo_root), projects=PROJECTS[:1])
    assert replayed == live
    assert metrics.counts["dropped.low_question_score"] == 83  # replay applies min_question_score itself


def test_offline_is_one_line_naming_the_replay_option(tmp_path: Path, repo_root: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["stackoverflow"].update(source="api", api_url="http://127.0.0.1:9/2.3")  # nothing listens on port 9
    Path("params.yaml").write_text(yaml.safe_dump(params))
    write_jsonl(Path("data/scrape/projects.jsonl"), PROJECTS[:1])
    assert run_cli(S.main, []) == 1
    err = capfd.readouterr().err
    assert "-S stackoverflow.source=dir -S stackoverflow.dir=" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "ERROR" in line]) == 1


def test_cli_replay_writes_output_and_metrics(corpus: Path, tmp_path: Path, repo_root: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["stackoverflow"].update({"source": "dir", "dir": str(corpus / "stackexchange")})
    Path("params.yaml").write_text(yaml.safe_dump(params))
    write_jsonl(Path("data/scrape/projects.jsonl"), PROJECTS)
    assert run_cli(S.main, []) == 0
    metrics = json.loads(Path("metrics/stackoverflow.json").read_text())
    assert metrics["out"]["pairs"] == 0 and metrics["questions"]["seen"] == 300
    assert Path("data/stackoverflow/qa.jsonl").read_text() == ""
    with pytest.raises(StageError, match="stackoverflow.dir"):
        S.make_source({"source": "dir", "dir": ""}, StageMetrics("stackoverflow"))


def test_a_client_error_ends_the_tag_without_hammering(fake: FakeStackExchange, tmp_path: Path,
                                                       repo_root: Path) -> None:
    fake.fail["questions"] = [400]
    pairs, m = run_api(fake, tmp_path, base_cfg(repo_root))
    assert pairs == [] and m["errors"]["http_400"] == 1
    assert len(fake.calls("questions")) == 1


def test_replay_skips_a_broken_page_and_goes_on(corpus: Path, tmp_path: Path, repo_root: Path) -> None:
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "questions_kubernetes_page_001.json").write_text('{"items": [{"question_id": 1, "tit')
    for page in (2, 3):
        name = f"questions_kubernetes_page_{page:03d}.json"
        (replay / name).symlink_to(corpus / "stackexchange" / name)
    write_jsonl(tmp_path / "projects.jsonl", PROJECTS[:1])
    metrics = StageMetrics("stackoverflow")
    S.run(tmp_path / "projects.jsonl", tmp_path / "qa.jsonl", base_cfg(repo_root, source="dir", dir=str(replay)),
          metrics)
    assert metrics.counts["errors.bad_json"] == 1
    assert metrics.counts["questions.seen"] == 200  # pages 2 and 3, 100 questions each

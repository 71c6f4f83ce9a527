"""merge stage: invariants, decontamination, dedup, grouped split, determinism and the dataset card.

Inputs are built to the data contracts from the real corpus (docs paragraphs, Stack Overflow question pages), with
planted duplicates, near-duplicates, empty pairs and eval-set leaks whose fate the tests check.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages import merge as M
from stages.common.cli import StageError, run_cli
from stages.common.jsonl import read_jsonl, stable_id, write_jsonl
from stages.common.metrics import StageMetrics
from stages.common.text import words

REPOS = ("prometheus__docs", "helm__helm-www", "etcd-io__website", "linkerd__website")
LEAKED_SENTENCE_WORDS = 16


# ------------------------------------------------------------------------------------------ input builders
def _paragraphs(text: str) -> list[str]:
    """Plain prose paragraphs of a markdown file (no front matter, headings, code, tables or shortcodes)."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.DOTALL)
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if para[:1] in "#|<{-*>![" or len(para.split()) < 25:
            continue
        out.append(para)
    return out


def build_docs(corpus: Path, n_docs: int = 24) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """qa_gen records (two pairs per document) and the manifest records of those documents."""
    with (corpus / "MANIFEST.csv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh)
                if r["kind"] == "markdown" and r["lang"] == "en" and r["local_path"].split("/")[1] in REPOS]
    qa, manifest = [], []
    per_repo: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: r["local_path"]):
        if per_repo.get(row["source_repo"], 0) >= n_docs // len(REPOS):
            continue
        paras = _paragraphs((corpus / row["local_path"]).read_text(encoding="utf-8", errors="replace"))
        if len(paras) < 2:
            continue
        url = f"https://github.com/{row['source_repo']}/blob/{row['commit']}/{row['source_path']}"
        doc_id = stable_id(url)
        per_repo[row["source_repo"]] = per_repo.get(row["source_repo"], 0) + 1
        manifest.append({"project": row["project"], "source": "mirror", "url": url, "repo": row["source_repo"],
                         "path": row["source_path"], "commit": row["commit"], "license": row["license"],
                         "sha256": row["sha256"], "bytes": int(row["bytes"]), "kind": "markdown",
                         "local_path": "files/" + row["local_path"].removeprefix("repos/")})
        title = Path(row["source_path"]).stem.replace("-", " ").replace("_", " ")
        for i, para in enumerate(paras[:2]):
            qa.append({"qa_id": stable_id(doc_id, str(i)), "question": f"What does the {row['project']} "
                       f"documentation say about {title} (part {i + 1})?", "answer": para,
                       "project": row["project"], "doc_id": doc_id, "chunk_id": stable_id(doc_id, "c", str(i)),
                       "url": url, "license": row["license"], "generator": "structural",
                       "grounding": round(0.7 + 0.01 * i, 2)})
    return qa, manifest


def build_stackoverflow(corpus: Path, n: int = 30) -> list[dict[str, Any]]:
    page = json.loads((corpus / "stackexchange" / "questions_kubernetes_page_001.json").read_text())
    out = []
    for item in page["items"][:n]:
        body = item["body"]
        answer = (f"Check the events first with `kubectl describe` on the object named in the question "
                  f"({item['question_id']}), then read the controller logs; "
                  f"the tags {', '.join(item['tags'])} point at where the configuration lives.")
        out.append({"qa_id": stable_id("so", str(item["question_id"])),
                    "question": f"{item['title']}\n\n{body}", "answer": answer, "project": "Kubernetes",
                    "url": item["link"], "score": item["score"], "is_accepted": item["question_id"] % 2 == 0,
                    "tags": item["tags"], "author": f"user{item['question_id'] % 97}", "license": "CC BY-SA 4.0"})
    return out


@pytest.fixture(scope="module")
def inputs(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Contract-shaped inputs with planted problems; returns paths and the planted records."""
    root = tmp_path_factory.mktemp("merge_inputs")
    qa, manifest = build_docs(corpus)
    so = build_stackoverflow(corpus)
    assert len(qa) >= 40 and len(so) == 30

    best = qa[0]
    exact = {**best, "qa_id": "planted-exact", "grounding": 0.61,
             "question": "  " + best["question"].replace(" ", "  ") + " ",
             "answer": "<p>" + best["answer"].replace("&", "&amp;") + "</p>"}
    near_text = qa[2]["answer"] + " Indeed."  # one word more: Jaccard of 5-gram shingles stays > 0.9
    near = {**so[0], "qa_id": "planted-near", "question": qa[2]["question"], "answer": near_text, "score": 50}
    empty = [{**qa[4], "qa_id": "planted-empty-answer", "answer": "<p>  </p>"},
             {**so[1], "qa_id": "planted-empty-question", "question": " \n "}]
    leak_source = qa[6]
    leaked = " ".join(leak_source["answer"].split()[3:3 + LEAKED_SENTENCE_WORDS])
    mcq_source = so[5]

    write_jsonl(root / "qa_gen.jsonl", [*qa, exact, empty[0]])
    with (root / "qa_gen.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")  # a broken line is a warning and a counter, not a failed run
    write_jsonl(root / "so.jsonl", [*so, near, empty[1]])
    write_jsonl(root / "manifest.jsonl", manifest)
    write_jsonl(root / "eval_qa.jsonl", [{"question": f"Explain: {leaked}?", "answer": "Some reference answer."},
                                         {"question": "Which object schedules pods onto nodes in a cluster "
                                                      "according to resource requests and affinity?",
                                          "answer": "The kube-scheduler."}])
    write_jsonl(root / "eval_mcq.jsonl", [{"question": mcq_source["question"].split("\n")[0],
                                           "options": ["A", "B", "C", "D"], "answer": "A"}])
    write_jsonl(root / "entities.jsonl", [{"entity": "Prometheus", "type": "PROJECT", "text": "Prometheus",
                                           "chunk_id": q["chunk_id"], "span": [0, 10]} for q in qa[:10]]
                + [{"entity": "Pod", "type": "K8S_RESOURCE", "text": "pod", "chunk_id": qa[1]["chunk_id"],
                    "span": [0, 3]}])
    params = yaml.safe_load((Path(M.__file__).resolve().parents[1] / "params.yaml").read_text())
    params["merge"]["validation_fraction"] = 0.1
    params["merge"]["test_fraction"] = 0.1
    params["eval"]["sets"] = [{"name": "k8s-faq", "path": "eval_qa.jsonl", "format": "qa"},
                              {"name": "k8s-mcq", "path": "eval_mcq.jsonl", "format": "mcq"}]
    return {"root": root, "params": params, "qa": qa, "so": so, "best": best, "near_of": qa[2],
            "leak_source": leak_source, "mcq_source": mcq_source}


def run_merge(inputs: dict[str, Any], out: Path, **merge_overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    root = inputs["root"]
    params = json.loads(json.dumps(inputs["params"]))
    params["merge"].update(merge_overrides)
    metrics = StageMetrics("merge")
    splits = M.merge(root / "qa_gen.jsonl", root / "so.jsonl", out, params, metrics,
                     manifest_path=root / "manifest.jsonl", entities_path=root / "entities.jsonl", base_dir=root)
    return splits, metrics.as_dict()


@pytest.fixture(scope="module")
def merged(inputs: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("merge_out")
    splits, metrics = run_merge(inputs, out)
    records = {s: list(read_jsonl(out / f"{s}.jsonl")) for s in M.SPLITS}
    return {"out": out, "splits": splits, "metrics": metrics, "records": records}


# ------------------------------------------------------------------------------------------------- tests
def test_records_hold_the_contract(merged: dict[str, Any], inputs: dict[str, Any]) -> None:
    records = [r for s in M.SPLITS for r in merged["records"][s]]
    total_in = len(inputs["qa"]) + len(inputs["so"]) + 4
    assert 50 < len(records) < total_in
    system = inputs["params"]["merge"]["system_prompt"]
    for r in records:
        assert set(r) == {"messages", "qa_id", "project", "source", "generator", "doc_id", "chunk_id", "url", "license"}
        assert r["chunk_id"] or r["source"] == "stackoverflow"  # docs pairs name the chunk RAFT puts in the prompt
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == system
        assert all(m["content"].strip() for m in r["messages"])
        assert r["url"].startswith("https://") and r["license"] and r["doc_id"] and r["project"]
        assert r["source"] in ("docs", "stackoverflow")
        assert "<p>" not in r["messages"][2]["content"]
    qa_ids = [r["qa_id"] for r in records]
    assert len(qa_ids) == len(set(qa_ids))
    pairs = [(" ".join(words(r["messages"][1]["content"], lower=True)),
              " ".join(words(r["messages"][2]["content"], lower=True)))
             for r in records]
    assert len(pairs) == len(set(pairs))
    for s in M.SPLITS:  # records are sorted, so reruns and diffs are stable
        assert [r["qa_id"] for r in merged["records"][s]] == sorted(r["qa_id"] for r in merged["records"][s])


def test_no_document_in_two_splits(merged: dict[str, Any]) -> None:
    docs = {s: {r["doc_id"] for r in merged["records"][s]} for s in M.SPLITS}
    urls = {s: {r["url"] for r in merged["records"][s] if r["source"] == "stackoverflow"} for s in M.SPLITS}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not docs[a] & docs[b]
        assert not urls[a] & urls[b]
    assert all(merged["records"][s] for s in M.SPLITS)
    sizes = merged["metrics"]["out"]
    assert sizes["train"] > sizes["validation"] + sizes["test"]


def test_drops_are_counted_by_reason(merged: dict[str, Any], inputs: dict[str, Any]) -> None:
    m = merged["metrics"]
    assert m["in"] == {"docs": len(inputs["qa"]) + 2, "stackoverflow": len(inputs["so"]) + 2,
                       "total": len(inputs["qa"]) + len(inputs["so"]) + 4}
    assert m["errors"]["bad_json"] == 1
    assert m["dropped"]["empty"] == 2
    assert m["dropped"]["exact_dup"] >= 1
    assert m["dropped"]["near_dup"] >= 1
    dropped = m["dropped"]["empty"] + m["dropped"]["exact_dup"] + m["dropped"]["near_dup"] \
        + m["dropped"]["contaminated"]["total"] + sum(m["dropped"]["heldout_overlap"].values())
    assert m["out"]["total"] == m["in"]["total"] - dropped
    assert sum(m["by_source"].values()) == m["out"]["total"]
    ids = {r["qa_id"] for s in M.SPLITS for r in merged["records"][s]}
    assert not ids & {"planted-exact", "planted-near", "planted-empty-answer", "planted-empty-question"}


def test_duplicates_keep_the_best_of_their_cluster(merged: dict[str, Any], inputs: dict[str, Any]) -> None:
    ids = {r["qa_id"] for s in M.SPLITS for r in merged["records"][s]}
    assert inputs["best"]["qa_id"] in ids  # grounding 0.70 beats the 0.61 copy with HTML and extra spaces
    assert inputs["near_of"]["qa_id"] in ids  # docs preferred over the near-identical Stack Overflow copy
    assert merged["metrics"]["near_dup_by_source"]["stackoverflow"] >= 1


def test_near_dup_keeps_higher_score_within_stackoverflow(inputs: dict[str, Any], tmp_path: Path) -> None:
    so = inputs["so"]
    a = {**so[3], "qa_id": "so-low", "score": 1, "url": "https://stackoverflow.com/questions/1/low"}
    b = {**so[3], "qa_id": "so-high", "score": 9, "url": "https://stackoverflow.com/questions/2/high",
         "answer": so[3]["answer"] + " Also check quotas."}
    write_jsonl(tmp_path / "qa.jsonl", [])
    write_jsonl(tmp_path / "so.jsonl", [a, b])
    metrics = StageMetrics("merge")
    pairs = M.normalize_pairs(M.load_pairs(tmp_path / "qa.jsonl", tmp_path / "so.jsonl", metrics), metrics)
    kept = M.near_dedup(pairs, 0.7, 128, 42, ["docs", "stackoverflow"], metrics)
    assert [p["qa_id"] for p in kept] == ["so-high"]
    assert metrics.counts["dropped.near_dup"] == 1


def test_decontamination_removes_planted_eval_leaks(merged: dict[str, Any], inputs: dict[str, Any]) -> None:
    ids = {r["qa_id"] for s in M.SPLITS for r in merged["records"][s]}
    assert inputs["leak_source"]["qa_id"] not in ids
    assert inputs["mcq_source"]["qa_id"] not in ids
    contaminated = merged["metrics"]["dropped"]["contaminated"]
    assert contaminated["k8s-faq"] == 1 and contaminated["k8s-mcq"] == 1 and contaminated["total"] == 2


def test_contamination_index_ngrams_and_short_texts() -> None:
    index = M.ContaminationIndex(n=13, min_words=3)
    long_q = "How do I roll back a Deployment to a previous revision when the new pods crash on start"
    index.add("faq", long_q)
    index.add("faq", "What is etcd?")  # shorter than n: the whole text is one gram
    index.add("faq", "Pod")  # too short to mean anything: ignored
    assert index.hits("Question: how do I ROLL back a deployment, to a previous revision when the new pods?") \
        == {"faq"}
    assert index.hits("how do I roll back a Deployment to a previous revision") == {"faq"}  # short, inside
    assert index.hits("So, what is etcd? It is a key-value store.") == {"faq"}
    assert index.hits("A pod is the smallest deployable unit; etcd stores cluster state.") == set()


def test_normalize_text_strips_markup_but_keeps_code_and_placeholders() -> None:
    raw = ("<p>Run&nbsp;this   command:</p>\n\n\n\n```bash\nkubectl logs <pod-name>   -c  app\n```\n"
           "Then <b>check</b> &lt;namespace&gt; and <!-- hidden --> done.<br>Next line")
    text = M.normalize_text(raw)
    assert "kubectl logs <pod-name>   -c  app" in text  # code is left exactly as written
    assert "Run this command:" in text
    assert "Then check <namespace> and done." in text
    assert "Next line" in text.splitlines()
    assert "\n\n\n" not in text and "<p>" not in text and "<b>" not in text
    assert M.normalize_text("```\nopen fence") == "```\nopen fence\n```"
    nested = M.normalize_text("- a\n  - nested   item\n\n    indented &amp; code\n```sh\necho '&amp;'\n```")
    assert nested == "- a\n  - nested item\n\n    indented & code\n```sh\necho '&amp;'\n```"


def test_split_is_grouped_and_seeded() -> None:
    pairs = [{"qa_id": f"q{i}", "group": f"doc:{i // 3}"} for i in range(300)]
    a = M.split_pairs(pairs, 0.1, 0.1, seed=1)
    b = M.split_pairs(list(reversed(pairs)), 0.1, 0.1, seed=1)
    c = M.split_pairs(pairs, 0.1, 0.1, seed=2)
    assert a == b
    assert a != c
    assert 30 <= len(a["test"]) <= 33 and 30 <= len(a["validation"]) <= 33
    groups = [{p["group"] for p in a[s]} for s in M.SPLITS]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    with pytest.raises(StageError):
        M.split_pairs(pairs, 0.5, 0.5, seed=1)


def test_heldout_pairs_sharing_an_ngram_with_train_are_dropped() -> None:
    boiler = "Use this flag to set the name of the Redis HA proxy when the label differs from the default one"
    pair = lambda i, g, text: {"qa_id": f"q{i}", "group": g, "question": f"Question {i}?", "answer": text}  # noqa: E731
    splits = {"train": [pair(0, "a", boiler + " for the server.")],
              "validation": [pair(1, "b", "Completely different words about Prometheus scraping targets here.")],
              "test": [pair(2, "c", boiler + " for the controller."), pair(3, "d", "etcd stores keys.")]}
    metrics = StageMetrics("merge")
    out = M.decontaminate_heldout(splits, 13, 3, metrics)
    assert [p["qa_id"] for p in out["test"]] == ["q3"]
    assert [p["qa_id"] for p in out["validation"]] == ["q1"] and out["train"] == splits["train"]
    assert metrics.as_dict()["dropped"]["heldout_overlap"] == {"test": 1, "validation": 0}


def test_merge_is_deterministic(inputs: dict[str, Any], merged: dict[str, Any], tmp_path: Path) -> None:
    run_merge(inputs, tmp_path)
    for name in [*(f"{s}.jsonl" for s in M.SPLITS), "README.md"]:
        assert (tmp_path / name).read_bytes() == (merged["out"] / name).read_bytes(), name


def test_empty_system_prompt_is_omitted(inputs: dict[str, Any], tmp_path: Path) -> None:
    run_merge(inputs, tmp_path, system_prompt="")
    rec = next(read_jsonl(tmp_path / "train.jsonl"))
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]


def test_dataset_card(merged: dict[str, Any], inputs: dict[str, Any]) -> None:
    card = (merged["out"] / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "other"
    assert header["task_categories"] == ["question-answering", "text-generation"]
    assert header["language"] == ["en"]
    assert header["size_categories"] == ["n<1K"]
    assert [f["split"] for f in header["configs"][0]["data_files"]] == list(M.SPLITS)
    m = merged["metrics"]
    for split in M.SPLITS:
        assert f"| {split} | {m['out'][split]} |" in card
    assert f"| docs | {m['by_source']['docs']} |" in card
    assert f"| stackoverflow | {m['by_source']['stackoverflow']} |" in card
    assert f"| structural | {m['by_generator']['structural']} |" in card
    assert "CC BY-SA 4.0" in card and M.SO_LICENSE_URL in card
    kept_so = [r for r in merged["records"]["train"] if r["source"] == "stackoverflow"][0]
    assert f"<{kept_so['url']}> answer by user" in card
    assert "| prometheus/docs | Apache-2.0 |" in card  # per-repo licence from the manifest
    assert "min_grounding: 0.6" in card and "near_dup_threshold: 0.85" in card and "k8s-faq" in card
    assert "## Entity-type coverage" in card and "| PROJECT |" in card and "| K8S_RESOURCE | 1 |" in card
    assert "## Project coverage" in card


def test_cli_runs_in_repo_layout_and_fails_in_one_line(inputs: dict[str, Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    root = inputs["root"]
    monkeypatch.chdir(tmp_path)
    params = json.loads(json.dumps(inputs["params"]))
    params["eval"]["sets"] = [{**s, "path": str(root / s["path"])} for s in params["eval"]["sets"]]
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert run_cli(M.main, []) == 1  # no inputs yet
    err = capfd.readouterr().err  # setup_logging replaces handlers, so read stderr itself
    assert "data/qa_gen/qa.jsonl not found" in err and "Traceback" not in err
    for src, dst in (("qa_gen.jsonl", "data/qa_gen/qa.jsonl"), ("so.jsonl", "data/stackoverflow/qa.jsonl"),
                     ("manifest.jsonl", "data/scrape/manifest.jsonl")):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(dst).write_bytes((root / src).read_bytes())
    assert run_cli(M.main, []) == 0
    metrics = json.loads(Path("metrics/merge.json").read_text())
    assert metrics["out"]["total"] == sum(1 for s in M.SPLITS for _ in read_jsonl(f"data/merge/{s}.jsonl"))
    assert "## Entity-type coverage" not in Path("data/merge/README.md").read_text()  # no NER output here

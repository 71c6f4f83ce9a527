"""merge: docs Q&A + Stack Overflow Q&A -> one clean, decontaminated, chat-format dataset with a card.

Why one stage sees every source at once: duplicates and near-duplicates cross sources (a docs FAQ answer
quoted on Stack Overflow), benchmark questions must be removed from all training text before any split, and
the split must keep every source document on one side so validation/test measure generalisation, not recall.

Inputs: data/qa_gen/qa.jsonl, data/stackoverflow/qa.jsonl, data/scrape/manifest.jsonl (licences per repo),
optional data/ner/entities.jsonl (coverage). Outputs: data/merge/{train,validation,test}.jsonl + README.md
(Hugging Face dataset card) and metrics/merge.json.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.jsonl import atomic_write, iter_jsonl_lenient, stable_id, write_jsonl
from stages.common.metrics import StageMetrics, recorded_failure
from stages.common.params import load_params
from stages.common.progress import progress
from stages.common.schema import EvalParams, MergeParams, load_stage_params
from stages.common.text import drop_html_comments, fenced_lines, split_fences, words

log = logging.getLogger(__name__)

QA_GEN_PATH = Path("data/qa_gen/qa.jsonl")
STACKOVERFLOW_PATH = Path("data/stackoverflow/qa.jsonl")
MANIFEST_PATH = Path("data/scrape/manifest.jsonl")
ENTITIES_PATH = Path("data/ner/entities.jsonl")
OUT_DIR = Path("data/merge")
SPLITS = ("train", "validation", "test")
SO_LICENSE_URL = "https://creativecommons.org/licenses/by-sa/4.0/"

# HTML tags that leak into scraped docs and Stack Overflow bodies. Only these are stripped: a bare
# `<pod-name>` placeholder in a command line is content, not markup.
_HTML_TAGS = (
    "a|abbr|b|blockquote|br|caption|code|dd|del|details|div|dl|dt|em|figcaption|figure|font|h[1-6]|hr|i|img|"
    "ins|kbd|li|ol|p|pre|s|small|span|strike|strong|sub|summary|sup|table|tbody|td|tfoot|th|thead|tr|tt|u|ul"
)
_TAG_RE = re.compile(rf"</?(?:{_HTML_TAGS})(?:\s[^<>]*)?/?>", re.IGNORECASE)
_BREAK_RE = re.compile(r"<(?:br|hr)\s*/?>|</(?:p|div|li|tr|h[1-6]|blockquote|pre)>", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- reading
def records(path: Path, metrics: StageMetrics) -> Iterator[dict[str, Any]]:
    """Yield records; a broken line is a WARNING naming path:line and an `errors.<kind>` counter."""
    return iter_jsonl_lenient(path, lambda kind: metrics.inc(f"errors.{kind}"))


def pair_from_docs(rec: dict[str, Any]) -> dict[str, Any]:
    """A qa_gen record in the merge's internal shape; `quality` ranks duplicates (grounding 0..1)."""
    return {
        "qa_id": str(rec.get("qa_id") or stable_id("docs", str(rec.get("question")), str(rec.get("answer")))),
        "question": str(rec.get("question") or ""),
        "answer": str(rec.get("answer") or ""),
        "project": str(rec.get("project") or ""),
        "source": "docs",
        "generator": str(rec.get("generator") or "unknown"),
        "doc_id": str(rec.get("doc_id") or ""),
        "chunk_id": str(rec.get("chunk_id") or ""),
        "url": str(rec.get("url") or ""),
        "license": str(rec.get("license") or ""),
        "quality": float(rec.get("grounding") or 0.0),
        "group": "doc:" + str(rec.get("doc_id") or rec.get("url") or ""),
    }


def pair_from_stackoverflow(rec: dict[str, Any]) -> dict[str, Any]:
    """A stackoverflow record in the internal shape; one question page is one 'document' for the split."""
    url = str(rec.get("url") or "")
    return {
        "qa_id": str(rec.get("qa_id") or stable_id("stackoverflow", url, str(rec.get("answer")))),
        "question": str(rec.get("question") or ""),
        "answer": str(rec.get("answer") or ""),
        "project": str(rec.get("project") or ""),
        "source": "stackoverflow",
        "generator": "stackoverflow",
        "doc_id": "so-" + stable_id("stackoverflow", url) if url else "",
        "chunk_id": "",
        "url": url,
        "license": str(rec.get("license") or ""),
        "quality": float(rec.get("score") or 0) + (0.5 if rec.get("is_accepted") else 0.0),
        "group": "so:" + url,
        "author": str(rec.get("author") or ""),
    }


def load_pairs(qa_gen_path: Path, stackoverflow_path: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    """Both sources in one list; a missing input is an error because DVC declares both as deps."""
    pairs: list[dict[str, Any]] = []
    for path, source, convert in ((qa_gen_path, "docs", pair_from_docs),
                                  (stackoverflow_path, "stackoverflow", pair_from_stackoverflow)):
        if not path.is_file():
            stage = "qa_gen" if source == "docs" else "stackoverflow"
            raise StageError(f"{path} not found: run `dvc repro {stage}` first")
        n = 0
        for rec in records(path, metrics):
            pairs.append(convert(rec))
            n += 1
        metrics.inc(f"in.{source}", n)
        log.info("read %d %s pairs from %s", n, source, path)
    metrics.inc("in.total", len(pairs))
    return pairs


# ------------------------------------------------------------------------------------------ normalising
def normalize_text(text: str) -> str:
    """Unescape entities, drop HTML tags/comments and collapse whitespace, leaving fenced code untouched.

    Leading indentation is kept outside fences too: it carries nested lists and indented code blocks.
    """
    out: list[str] = []
    for is_code, block in _fence_segments(text.replace("\r\n", "\n").replace("\r", "\n")):
        if is_code:
            out.extend(line.rstrip() for line in block)
            continue
        prose = _TAG_RE.sub("", _BREAK_RE.sub("\n", html.unescape(drop_html_comments("\n".join(block)))))
        for line in prose.split("\n"):
            indent = len(line) - len(line.lstrip(" \t"))
            body = re.sub(r"[ \t\u00a0\u200b]+", " ", line[indent:]).strip()
            out.append(line[:indent].replace("\t", "    ") + body if body else "")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _fence_segments(text: str) -> list[tuple[bool, list[str]]]:
    """(is_code, lines) runs; fence lines trimmed, an unclosed fence closed (it would swallow the rest of a chat
    turn in most renderers)."""
    return [(True, fenced_lines(seg)) if is_code else (False, seg.split("\n")) for is_code, seg in split_fences(text)]


def normalize_pairs(pairs: Iterable[dict[str, Any]], metrics: StageMetrics) -> list[dict[str, Any]]:
    """Clean text and drop pairs that cannot be trained on or attributed (counted by reason)."""
    kept: list[dict[str, Any]] = []
    for pair in pairs:
        pair = {**pair, "question": normalize_text(pair["question"]), "answer": normalize_text(pair["answer"])}
        if not words(pair["question"], lower=True) or not words(pair["answer"], lower=True):
            metrics.inc("dropped.empty")
            continue
        if not pair["url"] or not pair["license"]:
            log.warning("pair %s (%s) has no url or licence; dropped", pair["qa_id"], pair["source"])
            metrics.inc("dropped.no_provenance")
            continue
        kept.append(pair)
    return kept


# ---------------------------------------------------------------------------------------- decontamination
def read_eval_texts(path: Path, fmt: str) -> list[str]:
    """The texts of one eval set that must not appear in training: questions, qa answers, mcq options."""
    if not path.is_file():
        raise StageError(f"eval set {path} not found (params eval.sets)")
    if fmt not in ("qa", "mcq"):
        raise StageError(f"eval set {path}: format must be qa or mcq, not {fmt!r}")
    raw = path.read_text(encoding="utf-8")
    rows: list[Any]
    if path.suffix == ".json":
        data = json.loads(raw)
        rows = data if isinstance(data, list) else data.get("data", [])
    else:
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    texts: list[str] = []
    for row in rows:
        question = str(row.get("question") or "")
        texts.append(question)
        if fmt == "qa":
            texts.append(str(row.get("answer") or ""))
        else:
            options = row.get("options") or []
            if isinstance(options, dict):
                options = [options[k] for k in sorted(options)]
            texts.append(" ".join([question, *map(str, options)]))
    return [t for t in texts if t.strip()]


class ContaminationIndex:
    """Word n-grams of every eval text; a text shorter than n contributes itself as one shorter gram."""

    def __init__(self, n: int, min_words: int) -> None:
        self.n = n
        self.min_words = min_words
        self.full: dict[tuple[str, ...], set[str]] = defaultdict(set)
        # Shorter grams are found by their first token, so a check costs one dict lookup per token.
        self.short: dict[str, dict[tuple[str, ...], set[str]]] = defaultdict(lambda: defaultdict(set))
        self._texts: list[tuple[str, str]] = []  # (" tok tok ... ", set name) for short training texts

    def __bool__(self) -> bool:
        return bool(self.full or self.short)

    def add(self, set_name: str, text: str) -> None:
        toks = words(text, lower=True)
        if len(toks) < self.min_words:
            return  # "Pod" alone would contaminate every Kubernetes answer
        self._texts.append((" " + " ".join(toks) + " ", set_name))
        if len(toks) < self.n:
            self.short[toks[0]][tuple(toks)].add(set_name)
            return
        for i in range(len(toks) - self.n + 1):
            self.full[tuple(toks[i:i + self.n])].add(set_name)

    def hits(self, text: str) -> set[str]:
        """Names of the eval sets that share a gram with `text`."""
        toks = words(text, lower=True)
        found: set[str] = set()
        for i in range(len(toks) - self.n + 1):
            found |= self.full.get(tuple(toks[i:i + self.n]), set())
        for i, tok in enumerate(toks):
            for gram, names in self.short.get(tok, {}).items():
                if tuple(toks[i:i + len(gram)]) == gram:
                    found |= names
        if self.min_words <= len(toks) < self.n:  # a short training text is one gram: is it inside an eval text?
            needle = " " + " ".join(toks) + " "
            found |= {name for haystack, name in self._texts if needle in haystack}
        return found


def build_contamination_index(eval_sets: Sequence[dict[str, Any]], n: int, min_words: int,
                              base_dir: Path = Path(".")) -> ContaminationIndex:
    index = ContaminationIndex(n, min_words)
    for spec in eval_sets:
        name, path = str(spec["name"]), str(spec["path"])
        if not name or not path:
            raise StageError(f"eval.sets entry needs name and path: {spec!r}")
        full = Path(path) if Path(path).is_absolute() else base_dir / path
        texts = read_eval_texts(full, str(spec["format"]))
        for text in texts:
            index.add(name, text)
        log.info("eval set %s: %d texts from %s", name, len(texts), full)
    return index


def decontaminate(pairs: list[dict[str, Any]], index: ContaminationIndex,
                  metrics: StageMetrics) -> list[dict[str, Any]]:
    """Drop every pair whose question+answer shares an n-gram with an eval set (counted per set)."""
    if not index:
        return pairs
    kept = []
    for pair in progress(pairs, desc="decontaminate", unit="pair"):
        hits = index.hits(pair["question"] + "\n" + pair["answer"])
        if hits:
            metrics.inc("dropped.contaminated")
            for name in sorted(hits):
                metrics.inc(f"dropped.contaminated.{_metric_key(name)}")
            continue
        kept.append(pair)
    return kept


# ----------------------------------------------------------------------------------------------- dedup
def rank_key(pair: dict[str, Any], source_priority: Sequence[str]) -> tuple[Any, ...]:
    """Best first: preferred source, then higher grounding/score, then qa_id (so ties are deterministic)."""
    order = list(source_priority)
    prio = order.index(pair["source"]) if pair["source"] in order else len(order)
    return (prio, -pair["quality"], pair["qa_id"])


def exact_dedup(pairs: list[dict[str, Any]], source_priority: Sequence[str],
                metrics: StageMetrics) -> list[dict[str, Any]]:
    """Keep the best-ranked pair of every identical (normalised question, answer)."""
    seen: set[str] = set()
    kept = []
    for pair in sorted(pairs, key=lambda p: rank_key(p, source_priority)):
        key = " ".join(words(pair["question"], lower=True)) + "\x1f" + " ".join(words(pair["answer"], lower=True))
        if key in seen:
            metrics.inc("dropped.exact_dup")
            continue
        seen.add(key)
        kept.append(pair)
    return kept


def shingles(text: str, n: int = 5) -> set[bytes]:
    toks = words(text, lower=True)
    if len(toks) <= n:
        return {" ".join(toks).encode()}
    return {" ".join(toks[i:i + n]).encode() for i in range(len(toks) - n + 1)}


def near_dedup(pairs: list[dict[str, Any]], threshold: float, num_perm: int, seed: int,
               source_priority: Sequence[str], metrics: StageMetrics) -> list[dict[str, Any]]:
    """MinHash LSH over word 5-gram shingles; visiting best-first keeps the best pair of each cluster."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    template = MinHash(num_perm=num_perm, seed=seed)  # permutations seeded once, shared by every hash
    hashes: dict[str, Any] = {}
    kept = []
    ordered = sorted(pairs, key=lambda p: rank_key(p, source_priority))
    for pair in progress(ordered, desc="near-dup", unit="pair"):
        mh = MinHash(num_perm=num_perm, seed=seed, permutations=template.permutations, scheme=template.scheme)
        mh.update_batch(sorted(shingles(pair["question"] + "\n" + pair["answer"])))
        # LSH candidates are probable matches; the estimated Jaccard confirms them.
        if any(mh.jaccard(hashes[c]) >= threshold for c in sorted(lsh.query(mh))):
            metrics.inc("dropped.near_dup")
            metrics.inc(f"near_dup_by_source.{pair['source']}")
            continue
        lsh.insert(pair["qa_id"], mh)
        hashes[pair["qa_id"]] = mh
        kept.append(pair)
    return kept


# ----------------------------------------------------------------------------------------------- split
def _group_order(group: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x1f{group}".encode()).hexdigest()


def split_pairs(pairs: list[dict[str, Any]], validation_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[dict[str, Any]]]:
    """Whole groups (source document / question page) go to one split, in a seeded hash order."""
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise StageError("merge.validation_fraction + merge.test_fraction must be in [0, 1)")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pair in pairs:
        groups[pair["group"]].append(pair)
    order = sorted(groups, key=lambda g: (_group_order(g, seed), g))
    total = len(pairs)
    targets = {"test": test_fraction * total, "validation": validation_fraction * total}
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for group in order:
        members = groups[group]
        name = next((s for s in ("test", "validation") if len(splits[s]) < targets[s]), "train")
        splits[name].extend(members)
    for name in SPLITS:
        splits[name].sort(key=lambda p: p["qa_id"])
    return splits


def decontaminate_heldout(splits: dict[str, list[dict[str, Any]]], n: int, min_words: int,
                          metrics: StageMetrics) -> dict[str, list[dict[str, Any]]]:
    """Drop validation/test pairs that share a word n-gram with the train split.

    Grouping by document is not enough: one project's pages repeat boilerplate (CLI reference pages, option
    tables), so a test pair from one page could be answered from another page's training pair. Scores on
    held-out pairs should measure what the model learned, not what it memorised.
    """
    index = ContaminationIndex(n, min_words)
    for pair in splits["train"]:
        index.add("train", pair["question"] + "\n" + pair["answer"])
    out = {"train": splits["train"]}
    for name in ("validation", "test"):
        kept = [p for p in splits[name] if not index.hits(p["question"] + "\n" + p["answer"])]
        metrics.inc(f"dropped.heldout_overlap.{name}", len(splits[name]) - len(kept))
        out[name] = kept
    return out


def to_chat_record(pair: dict[str, Any], system_prompt: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    messages += [{"role": "user", "content": pair["question"]}, {"role": "assistant", "content": pair["answer"]}]
    return {"messages": messages, **{k: pair[k] for k in
                                     ("qa_id", "project", "source", "generator", "doc_id", "chunk_id", "url", "license")}}


# ------------------------------------------------------------------------------------------------ card
def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "1M<n<10M"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _counts(counter: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def manifest_licences(manifest_path: Path, metrics: StageMetrics) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Per repo: licences and file count; and url -> repo, so docs pairs can be traced to their repo."""
    repos: dict[str, dict[str, Any]] = {}
    url_repo: dict[str, str] = {}
    if not manifest_path.is_file():
        log.warning("%s not found: the card will have no per-repo licence table", manifest_path)
        metrics.inc("errors.no_manifest")
        return repos, url_repo
    for rec in records(manifest_path, metrics):
        repo = str(rec.get("repo") or "unknown")
        entry = repos.setdefault(repo, {"licenses": set(), "files": 0, "projects": set()})
        entry["licenses"].add(str(rec.get("license") or "unknown"))
        entry["projects"].add(str(rec.get("project") or ""))
        entry["files"] += 1
        if rec.get("url"):
            url_repo[str(rec["url"])] = repo
    return repos, url_repo


def entity_type_coverage(entities_path: Path, chunk_ids: set[str], metrics: StageMetrics) -> dict[str, int] | None:
    """How many of the dataset's source chunks mention each entity type (None when NER did not run)."""
    if not entities_path.is_file():
        return None
    per_type: dict[str, set[str]] = defaultdict(set)
    for rec in records(entities_path, metrics):
        if rec.get("chunk_id") in chunk_ids and rec.get("type"):
            per_type[str(rec["type"])].add(str(rec["chunk_id"]))
    return {t: len(c) for t, c in sorted(per_type.items())}


def render_card(splits: dict[str, list[dict[str, Any]]], params: dict[str, Any],
                repos: dict[str, dict[str, Any]], url_repo: dict[str, str],
                entity_types: dict[str, int] | None) -> str:
    """A Hugging Face dataset card: YAML header for the Hub, then the counts, params and licence notes."""
    records = [p for name in SPLITS for p in splits[name]]
    n = len(records)
    header = {
        "license": "other",
        "license_name": "mixed",
        "license_details": "Per-record `license` field: upstream documentation licences (see table) and "
                           "CC BY-SA 4.0 for Stack Overflow content.",
        "language": ["en"],
        "task_categories": ["question-answering", "text-generation"],
        "size_categories": [_size_category(n)],
        "pretty_name": "CNCF landscape Q&A",
        "tags": ["cncf", "kubernetes", "cloud-native", "chat"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"{s}.jsonl"} for s in SPLITS]}],
    }
    by_source = Counter(p["source"] for p in records)
    by_generator = Counter(p["generator"] for p in records)
    by_project = Counter(p["project"] or "(none)" for p in records)
    by_licence = Counter(p["license"] for p in records)
    split_rows = [(s, len(splits[s]), len({p["group"] for p in splits[s]})) for s in SPLITS]

    sections = [
        "---\n" + yaml.safe_dump(header, sort_keys=True, allow_unicode=True) + "---",
        "# CNCF landscape Q&A",
        "Question/answer pairs about CNCF projects in chat format (`messages`), built by the cncf-llm DVC "
        "pipeline from project documentation (generated, grounded pairs) and Stack Overflow (human answers). "
        "Every record carries `qa_id, project, source, generator, doc_id, url, license` for attribution.",
        "## Splits\nGrouped by source document (docs) or question page (Stack Overflow): no document is in two "
        "splits.\n\n" + _table(("split", "pairs", "documents"), split_rows),
        "## Counts\n### By source\n" + _table(("source", "pairs"), _counts(by_source))
        + "\n\n### By generator\n" + _table(("generator", "pairs"), _counts(by_generator))
        + "\n\n### By licence\n" + _table(("licence", "pairs"), _counts(by_licence)),
        _coverage_section(by_project, repos),
    ]
    if entity_types is not None:
        n_chunks = len({p["chunk_id"] for p in records if p["chunk_id"]})
        sections.append(f"## Entity-type coverage\nSource chunks of the dataset ({n_chunks}) that mention each "
                        "entity type (from data/ner/entities.jsonl).\n\n"
                        + _table(("entity type", "chunks"), sorted(entity_types.items())))
    used = {k: params[k] for k in ("qa_gen", "merge")}
    used["eval.sets"] = [s["name"] for s in params["eval"]["sets"]]
    sections.append("## Generation parameters\nFrom the params file of this run (`qa_gen`, `merge`, and the "
                    "eval sets used for decontamination):\n\n```yaml\n"
                    + yaml.safe_dump(used, sort_keys=True, allow_unicode=True).rstrip() + "\n```")
    sections.append(_licence_section(records, repos, url_repo))
    return "\n\n".join(sections) + "\n"


def _coverage_section(by_project: Counter[str], repos: dict[str, dict[str, Any]]) -> str:
    scraped = sorted({p for r in repos.values() for p in r["projects"] if p})
    missing = [p for p in scraped if p not in by_project]
    text = (f"## Project coverage\n{len(by_project)} projects have pairs"
            + (f"; {len(scraped)} projects had scraped documentation" if scraped else "") + ".\n\n"
            + _table(("project", "pairs"), _counts(by_project)))
    if missing:
        text += "\n\nProjects with scraped documentation but no pairs: " + ", ".join(missing) + "."
    return text


def _licence_section(records: list[dict[str, Any]], repos: dict[str, dict[str, Any]],
                     url_repo: dict[str, str]) -> str:
    pairs_per_repo = Counter(url_repo.get(p["url"], "(not in manifest)") for p in records if p["source"] == "docs")
    repo_rows = [(repo, ", ".join(sorted(repos[repo]["licenses"])) if repo in repos else "see records",
                  repos[repo]["files"] if repo in repos else 0, pairs_per_repo.get(repo, 0))
                 for repo in sorted(set(repos) | set(pairs_per_repo))]
    authors: dict[str, set[str]] = defaultdict(set)
    for p in records:
        if p["source"] == "stackoverflow":
            authors[p["url"]].add(p.get("author") or "unknown")
    so = sorted(authors)
    text = ("## Licences and attribution\n"
            "Each record's `license` applies to its text. Documentation pairs are derived from the upstream "
            "repositories below (licence from data/scrape/manifest.jsonl); reuse must follow each licence.\n\n"
            + _table(("repository", "licence", "files scraped", "pairs"), repo_rows))
    text += (f"\n\n### Stack Overflow\n{len(so)} question pages. Stack Overflow content is user-contributed and "
             f"licensed under [CC BY-SA 4.0]({SO_LICENSE_URL}); redistributing it requires attribution (the "
             "question link and the answer author, listed below) and sharing adaptations under the same licence.")
    if so:
        lines = [f"- <{url}> answer by {', '.join(sorted(authors[url]))}" for url in so]
        text += "\n\n<details><summary>Attribution list</summary>\n\n" + "\n".join(lines) + "\n\n</details>"
    return text


# ------------------------------------------------------------------------------------------------- run
def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def merge(qa_gen_path: Path, stackoverflow_path: Path, out_dir: Path, params: dict[str, Any],
          metrics: StageMetrics, manifest_path: Path = MANIFEST_PATH, entities_path: Path = ENTITIES_PATH,
          base_dir: Path = Path(".")) -> dict[str, list[dict[str, Any]]]:
    """The whole stage on explicit paths; `params` is the full params file (merge, qa_gen, eval sections)."""
    cfg = params["merge"]  # validated by MergeParams: every key present, defaults in params.yaml only
    priority = list(cfg["source_priority"])
    seed = int(cfg["seed"])
    ngram, min_words = int(cfg["decontam_ngram"]), int(cfg["decontam_min_words"])
    pairs = load_pairs(qa_gen_path, stackoverflow_path, metrics)
    pairs = normalize_pairs(pairs, metrics)
    eval_sets = params["eval"]["sets"]
    index = build_contamination_index(eval_sets, ngram, min_words, base_dir)
    pairs = decontaminate(pairs, index, metrics)
    pairs = exact_dedup(pairs, priority, metrics)
    pairs = near_dedup(pairs, float(cfg["near_dup_threshold"]), int(cfg["minhash_num_perm"]),
                       seed, priority, metrics)
    splits = split_pairs(pairs, float(cfg["validation_fraction"]), float(cfg["test_fraction"]),
                         seed)
    if cfg["decontaminate_heldout"]:
        splits = decontaminate_heldout(splits, ngram, min_words, metrics)

    system_prompt = str(cfg["system_prompt"])
    for name in SPLITS:
        n = write_jsonl(out_dir / f"{name}.jsonl", (to_chat_record(p, system_prompt) for p in splits[name]))
        metrics.inc(f"out.{name}", n)
        metrics.inc("out.total", n)
    repos, url_repo = manifest_licences(manifest_path, metrics)
    chunk_ids = {p["chunk_id"] for name in SPLITS for p in splits[name] if p["chunk_id"]}
    entity_types = entity_type_coverage(entities_path, chunk_ids, metrics)
    card = render_card(splits, params, repos, url_repo, entity_types)
    with atomic_write(out_dir / "README.md") as fh:
        fh.write(card)
    _record_breakdowns(splits, metrics)
    return splits


def _record_breakdowns(splits: dict[str, list[dict[str, Any]]], metrics: StageMetrics) -> None:
    records = [p for name in SPLITS for p in splits[name]]
    for key in ("project", "source", "generator"):
        counts = Counter(p[key] or "(none)" for p in records)
        metrics.set(f"by_{key}", dict(sorted(counts.items())))
    metrics.set("groups", {name: len({p["group"] for p in splits[name]}) for name in SPLITS})
    metrics.set("pairs_per_second", round(len(records) / max(metrics.elapsed, 1e-6), 1))


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_stage_params("merge", MergeParams, args.params)
    eval_cfg = load_stage_params("eval", EvalParams, args.params)  # eval.sets: the texts to decontaminate against
    params = {**load_params(None, args.params), "merge": cfg.model_dump(), "eval": eval_cfg.model_dump()}
    metrics = StageMetrics("merge")
    with recorded_failure(metrics):
        splits = merge(QA_GEN_PATH, STACKOVERFLOW_PATH, OUT_DIR, params, metrics)
    metrics.write()
    log.info("merge: train %d, validation %d, test %d -> %s", *(len(splits[s]) for s in SPLITS), OUT_DIR)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

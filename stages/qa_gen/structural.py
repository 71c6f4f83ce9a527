"""Structural Q&A: questions read off a document's own structure, answers cut from the section's own text.

Why this is the main source: it needs no model, runs offline in seconds on CPU, and its answers are the
documentation's words, so they are grounded by construction. Each rule looks for one shape that documentation
writers use on purpose: task headings ("Configure a Liveness Probe"), definition sentences ("A Pod is ..."),
headings that are questions, option/flag tables, and example manifests.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from stages.common.metrics import StageMetrics
from stages.common.schema import QaGenParams
from stages.qa_gen.textutil import (
    STOPWORDS,
    bounded_answer,
    clean_inline,
    display_name,
    is_table,
    n_words,
    prose_text,
    sentences,
    split_blocks,
    wordset,
)

log = logging.getLogger(__name__)

TASK_VERBS = wordset("""
access add allocate annotate apply assign attach audit authenticate authorize automate back build bootstrap cancel
change check choose clean collect combine configure connect control convert create customize debug declare define
delete deploy disable drain edit enable encrypt enforce expose extend filter find generate get give grant handle
implement import inject inspect install integrate isolate label limit list load manage map migrate modify monitor
mount move observe pause perform prevent promote protect provide provision publish pull push query read receive
recover register reload remove rename render replace request reserve reset resize restart restore restrict resume
retrieve roll rollback rotate route run scale schedule secure select send serve set share sign specify start stop
store switch sync tag test track transform troubleshoot tune uninstall update upgrade use validate verify view
visualize watch write
""")
GERUNDS = {
    "accessing": "access",
    "adding": "add",
    "applying": "apply",
    "assigning": "assign",
    "building": "build",
    "changing": "change",
    "checking": "check",
    "cleaning": "clean",
    "collecting": "collect",
    "configuring": "configure",
    "connecting": "connect",
    "controlling": "control",
    "creating": "create",
    "customizing": "customize",
    "debugging": "debug",
    "defining": "define",
    "deleting": "delete",
    "deploying": "deploy",
    "disabling": "disable",
    "enabling": "enable",
    "encrypting": "encrypt",
    "exposing": "expose",
    "generating": "generate",
    "getting": "get",
    "installing": "install",
    "integrating": "integrate",
    "managing": "manage",
    "migrating": "migrate",
    "monitoring": "monitor",
    "mounting": "mount",
    "provisioning": "provision",
    "removing": "remove",
    "rotating": "rotate",
    "running": "run",
    "scaling": "scale",
    "securing": "secure",
    "sending": "send",
    "setting": "set",
    "specifying": "specify",
    "troubleshooting": "troubleshoot",
    "uninstalling": "uninstall",
    "updating": "update",
    "upgrading": "upgrade",
    "using": "use",
    "verifying": "verify",
    "viewing": "view",
    "writing": "write",
}
# Headings that start with a verb but name a page part, not a task.
NON_TASK = re.compile(
    r"^(?:get(?:ting)? (?:started|involved|help)|see also|use cases?|set ?up$|"
    r"clean ?up$|check (?:it|this)|read more|learn more|find out more)",
    re.I,
)
SKIP_PATH = re.compile(
    r"(?:^|/)(?:changelog|changes|release[-_]?notes?|releases|history|news|authors|"
    r"contributors|owners|code[-_]of[-_]conduct|summary|sidebar|_sidebar|toc)(?:\.|/|$)",
    re.I,
)
SKIP_HEADING = re.compile(
    r"\b(?:changelog|release notes?|what'?s new|table of contents|see also|"
    r"what'?s next|further reading|references|acknowledg)|^v?\d+\.\d+",
    re.I,
)
PRONOUN_SUBJECT = wordset("""this it that there here these those each every which what your you we our its if
when such another other one example below following they he she all some many most""")
DEICTIC = re.compile(r"\b(?:this|these|that|it|its|they|them|here|above|below|following)\b", re.I)
NOUN_LIKE_VERBS = wordset("""check control filter label limit list load map move query read request route schedule
share sign store switch tag test track view watch""")
DETERMINERS = wordset("a an the your my our multiple all each every one two some")
TABLE_KEY_HEADERS = {
    "key",
    "option",
    "options",
    "flag",
    "flags",
    "parameter",
    "parameters",
    "name",
    "field",
    "setting",
    "property",
    "argument",
    "variable",
    "config",
    "configuration",
}
FLAG_LINE = re.compile(r"^\s*(?:-\w,\s+)?(--[A-Za-z0-9][\w-]*)(?:[ =]([\w.\[\]<>|-]+))?\s{2,}(\S.*)$")
MANIFEST_API = re.compile(r"^apiVersion:\s*\S+", re.M)


def generate_structural(
    chunks: Iterable[dict[str, Any]],
    cfg: QaGenParams,
    metrics: StageMetrics,
    known_names: Iterable[str] = (),
) -> Iterator[dict[str, Any]]:
    """Yield candidate pairs (before grounding and dedup), at most `max_pairs_per_chunk` per chunk.

    `known_names` (landscape project names) lets "Fluentd is a ..." in another project's docs become
    "What is Fluentd?" rather than "What is Fluentd in <that project>?".
    """
    names = frozenset(n.lower() for n in known_names)
    max_pairs = cfg.max_pairs_per_chunk
    seen_sections: set[tuple[str, tuple[str, ...]]] = set()
    for chunk in document_order(chunks):
        reason = skip_reason(chunk)
        if reason:
            metrics.inc(f"chunks_skipped.{reason}")
            continue
        section = (chunk.get("doc_id") or "", tuple(chunk.get("heading_path") or ()))
        first_of_section = section not in seen_sections
        seen_sections.add(section)
        pairs = list(_chunk_pairs(chunk, cfg, names, first_of_section))
        if not pairs:
            metrics.inc("chunks_without_pairs.structural")
        yield from pairs[:max_pairs]
        if len(pairs) > max_pairs:
            metrics.inc("dropped.over_max_pairs_per_chunk", len(pairs) - max_pairs)


def skip_reason(chunk: dict[str, Any]) -> str:
    """Why a chunk gives no structural questions: navigation, link lists, changelogs, empty prose."""
    path = chunk.get("path") or ""
    if SKIP_PATH.search(path):
        return "changelog_or_nav_path"
    headings = list(chunk.get("heading_path") or [])
    if any(SKIP_HEADING.search(h) for h in headings[-1:]):
        return "changelog_or_nav_heading"
    text = chunk.get("text") or ""
    if chunk.get("kind") in ("yaml", "json"):
        return ""
    link_words = sum(n_words(m) for m in re.findall(r"\[([^\]]*)\]\([^)]*\)", text))
    total = max(1, n_words(clean_inline(text)))
    if link_words / total > 0.5:
        return "mostly_links"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    list_lines = [ln for ln in lines if re.match(r"^\s*(?:[-*+]|\d+[.)])\s", ln)]
    if len(lines) >= 5 and len(list_lines) / len(lines) > 0.8 and total / max(1, len(list_lines)) < 8:
        return "short_item_list"
    return ""


def document_order(chunks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chunks in reading order: by an explicit position field when unify gives one, else as they came."""
    chunks = list(chunks)
    for field in ("chunk_index", "index", "position", "start"):
        if chunks and all(isinstance(c.get(field), int) for c in chunks):
            return sorted(chunks, key=lambda c: (c.get("doc_id") or "", c[field]))
    return chunks


def _chunk_pairs(
    chunk: dict[str, Any], cfg: QaGenParams, known_names: frozenset[str], first_of_section: bool
) -> Iterator[dict[str, Any]]:
    """Section-level questions (task, question heading) come only from a section's first chunk: a later chunk
    holds the middle of the answer, not its start."""
    project = display_name(chunk.get("project") or "")
    if chunk.get("kind") in ("yaml", "json"):
        yield from _manifest_pairs(chunk, project, cfg)
        return
    section_rules = (
        (_task_pair(chunk, project, cfg), _question_heading_pair(chunk, project, cfg))
        if first_of_section
        else ()
    )
    for pair in (*section_rules, _definition_pair(chunk, project, cfg, known_names)):
        if pair:
            yield pair
    yield from _option_pairs(chunk, project, cfg)


def make_pair(chunk: dict[str, Any], question: str, answer: str, rule: str) -> dict[str, Any]:
    return {
        "question": " ".join(question.split()),
        "answer": answer.strip(),
        "project": chunk.get("project") or "",
        "doc_id": chunk.get("doc_id") or "",
        "chunk_id": chunk["chunk_id"],
        "url": chunk.get("url") or "",
        "license": chunk.get("license") or "",
        "generator": "structural",
        "rule": rule,
    }


def _section_heading(chunk: dict[str, Any]) -> str:
    headings = [h for h in (chunk.get("heading_path") or []) if h and h.strip()]
    heading = headings[-1] if headings else (chunk.get("title") or "")
    heading = clean_inline(re.sub(r"\s*\{#[^}]*\}", "", heading))  # Hugo anchors: "Title {#anchor}"
    heading = re.sub(r"^(?:step\s*\d+\s*[:.)-]?|\d+(?:\.\d+)*[.)]?)\s*", "", heading, flags=re.I)
    heading = heading.strip(" :.-*")
    return heading if heading.count("`") % 2 == 0 else heading.replace("`", "")


def _names_in(text: str, project: str) -> bool:
    return bool(project) and project.lower() in text.lower()


def _lower_phrase(phrase: str, project: str) -> str:
    """'Configure a Liveness Probe' -> 'configure a liveness probe'; names and CamelCase words keep their case."""
    keep = {w.lower() for w in project.split()}
    out = []
    for word in phrase.split():
        core = word.strip("()[],.:;\"'")
        if (core[:1].isupper() and core[1:].islower() and core.lower() not in keep) or (
            core.isupper() and len(core) == 1
        ):
            out.append(word.lower())
        else:
            out.append(word)
    return " ".join(out)


def task_phrase(heading: str, project: str) -> str:
    """The lowercased verb phrase of a task heading, or '' when the heading is not a task."""
    heading = heading.strip().rstrip("?.!:")
    if "`" in heading[:1] or not heading or NON_TASK.search(heading) or DEICTIC.search(heading):
        return ""
    parts = heading.split()
    if not 2 <= len(parts) <= 12:
        return ""
    first = parts[0].lower()
    if parts[1].lower() in ("of", "cases", "case", "and", "or", "for", "is", "are", "-", "vs", "vs."):
        return ""  # "Use of JSON", "Use cases": the verb is a noun here
    parts = [
        GERUNDS.get(p.lower(), p) if i > 0 and parts[i - 1].lower() in ("and", "or") else p
        for i, p in enumerate(parts)
    ]
    if first in NOUN_LIKE_VERBS and parts[1].lower() not in DETERMINERS:
        return ""  # "Label names (attributes)": a noun phrase, not a task
    if first in GERUNDS:
        parts[0] = GERUNDS[first]
    elif first not in TASK_VERBS or not parts[0][:1].isupper():
        return ""
    if first in ("back", "roll", "set", "clean", "sign") and len(parts) > 1 and parts[1].lower() == "up":
        parts[0] = parts[0].lower()
    return _lower_phrase(" ".join(parts), project)


def _task_pair(chunk: dict[str, Any], project: str, cfg: QaGenParams) -> dict[str, Any] | None:
    phrase = task_phrase(_section_heading(chunk), project)
    if not phrase:
        return None
    answer = bounded_answer(chunk["text"], cfg.max_answer_words, cfg.min_answer_words)
    if not answer:
        return None
    ends_with_preposition = phrase.split()[-1].lower() in (
        "with",
        "to",
        "on",
        "in",
        "for",
        "from",
        "by",
        "into",
    )
    link = (
        "in" if ends_with_preposition else "with"
    )  # "... containers run with" + "in Kubernetes", not "with with"
    question = f"How do I {phrase}?" if _names_in(phrase, project) else f"How do I {phrase} {link} {project}?"
    return make_pair(chunk, question, answer, "task")


def _question_heading_pair(
    chunk: dict[str, Any], project: str, cfg: QaGenParams
) -> dict[str, Any] | None:
    heading = _section_heading(chunk)
    if not heading.endswith("?") or n_words(heading) < 3 or n_words(heading) > 20:
        return None
    if re.search(
        r"\b(?:this|these|that|it|its|here|above|below|following|they|them|you|your|we|our)\b", heading, re.I
    ):
        return None
    question = heading[0].upper() + heading[1:]
    if not _names_in(question, project):
        question = f"{question[:-1].rstrip()} in {project}?"
    answer = bounded_answer(chunk["text"], cfg.max_answer_words, cfg.min_answer_words)
    return make_pair(chunk, question, answer, "question_heading") if answer else None


_DEFINITION = re.compile(
    r"^(?:(?P<article>an?|the)\s+)?(?P<term>`[^`]{2,60}`|[A-Za-z0-9][\w.+/-]*(?:\s+[A-Za-z0-9][\w.+/-]*){0,4})"
    r"(?:\s*\([^)]{1,60}\))?\s+(?P<verb>is|are)\s+(?:an?|the|one)\s+\w",
    re.I,
)


def definition_question(
    sentence: str, project: str, headings: list[str], known_names: frozenset[str] = frozenset()
) -> str:
    """'A Pod is the smallest ...' -> 'What is a Pod in Kubernetes?', or '' when no clear term is defined."""
    m = _DEFINITION.match(sentence)
    if not m or re.search(r"\b(?:this|these|those|above|such|previous|former|latter)\b", sentence, re.I):
        return ""  # "... to address this concern" leans on the sentence before it
    term = m.group("term").strip()
    bare = term.strip("`")
    term_words = [w.lower() for w in bare.split()]
    if any(
        w in PRONOUN_SUBJECT or (w in STOPWORDS and w not in ("of", "for")) for w in term_words
    ) or term_words[0].endswith("ing"):
        return ""  # "This is a ...", "Allocating resources is a ...": no term is being defined
    heading_text = " ".join(headings).lower()
    singular = re.sub(r"s$", "", bare.lower())
    backticked = term.startswith("`")
    named = any(ch.isupper() for ch in bare) and not (
        bare[:1].isupper() and not m.group("article") and bare[1:].islower() and " " not in bare
    )
    if not (
        backticked
        or singular in heading_text
        or named
        or _names_in(bare, project)
        or bare.lower() in known_names
    ):
        return ""
    article = (m.group("article") or "").lower()
    verb = m.group("verb").lower()
    subject = f"{article} {term}".strip()
    if _names_in(bare, project) or bare.lower() in known_names:
        return f"What {verb} {subject}?"
    return f"What {verb} {subject} in {project}?"


def _definition_pair(
    chunk: dict[str, Any], project: str, cfg: QaGenParams, known_names: frozenset[str]
) -> dict[str, Any] | None:
    prose = prose_text(chunk["text"])
    paragraphs = [p for p in prose.split("\n\n") if p.strip()]
    if not paragraphs:
        return None
    headings = list(chunk.get("heading_path") or []) + [chunk.get("title") or ""]
    for p_index, paragraph in enumerate(paragraphs[:2]):
        if re.match(r"^\s*(?:[-*+]|\d+[.)])\s", paragraph):
            continue  # a list item is a step or an option, not a definition
        sents = sentences(paragraph)
        for s_index, sent in enumerate(sents[:2]):
            question = definition_question(sent, project, headings, known_names)
            if not question:
                continue
            rest = " ".join(sents[s_index:])
            following = "\n\n".join(paragraphs[p_index + 1 : p_index + 2])
            answer = bounded_answer(
                f"{rest}\n\n{following}",
                cfg.max_answer_words,
                cfg.min_answer_words,
                keep_code=False,
            )
            if answer:
                return make_pair(chunk, question, answer, "definition")
    return None


def _table_rows(block: str) -> list[list[str]]:
    rows = []
    for line in block.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if all(re.fullmatch(r":?-{2,}:?", c) or not c for c in cells):
            continue
        rows.append(cells)
    return rows


def _option_pairs(chunk: dict[str, Any], project: str, cfg: QaGenParams) -> Iterator[dict[str, Any]]:
    """Options from markdown tables (Key | Description | Default) and from CLI `--flag  description` blocks."""
    title = clean_inline(chunk.get("title") or "").strip() or _section_heading(chunk)
    context = title if _names_in(title, project) else f"{title} in {project}"
    min_words = cfg.min_answer_words
    heading = _section_heading(chunk).lower()
    for kind, block in split_blocks(chunk["text"]):
        if kind == "text" and is_table(block):
            yield from _table_option_pairs(chunk, _table_rows(block), context, min_words)
        elif kind == "code" and "inherited" not in heading:
            for line in block.splitlines():
                m = FLAG_LINE.match(line)
                if not m or m.group(1) == "--help":
                    continue
                flag, value, desc = m.group(1), m.group(2), m.group(3).strip()
                if n_words(desc) < 3:
                    continue
                desc_text = desc[0].upper() + desc[1:]
                tool = command_name(title)
                of_tool = f" of `{tool}`" if tool else ""
                where = "" if _names_in(tool, project) else f" in {project}"
                question = f"What does the `{flag}` flag{of_tool} do{where}?"
                takes = f" (takes a {value} value)" if value and value.isalpha() else ""
                answer = f"The `{flag}` flag{of_tool}{takes}: {desc_text.rstrip('.')}."
                if n_words(answer) >= min_words:
                    yield make_pair(chunk, question, answer, "flag")


def command_name(title: str) -> str:
    """'`argocd proj` Command Reference' -> 'argocd proj'; 'helm pull' -> 'helm pull'; prose titles -> ''."""
    m = re.search(r"`([a-z][\w.-]*(?: [a-z][\w.-]*)*)`", title)
    if m:
        return m.group(1)
    return title if re.fullmatch(r"[a-z][\w.-]*(?: [a-z][\w.-]*){0,5}", title) else ""


def _table_option_pairs(
    chunk: dict[str, Any], rows: list[list[str]], context: str, min_words: int
) -> Iterator[dict[str, Any]]:
    if len(rows) < 2:
        return
    header = [re.sub(r"[^a-z ]", "", c.lower()).strip() for c in rows[0]]
    key_col = next((i for i, h in enumerate(header) if h in TABLE_KEY_HEADERS), None)
    desc_col = next(
        (i for i, h in enumerate(header) if "description" in h or h in ("meaning", "purpose")), None
    )
    default_col = next((i for i, h in enumerate(header) if h.startswith("default")), None)
    if key_col is None or desc_col is None:
        return
    for cells in rows[1:]:
        if len(cells) <= max(key_col, desc_col):
            continue
        key = clean_inline(cells[key_col]).strip("` *")
        desc = clean_inline(cells[desc_col]).replace("<br>", " ").strip()
        if not key or len(key) > 60 or " " in key.strip() or n_words(desc) < 4:
            continue
        noun = "flag" if key.startswith("--") else header[key_col].rstrip("s") or "option"
        noun = {"key": "parameter", "name": "option", "config": "option", "configuration": "option"}.get(
            noun, noun
        )
        question = f"What does the `{key}` {noun} of {context} do?"
        default = ""
        if default_col is not None and default_col < len(cells):
            value = clean_inline(cells[default_col]).strip()
            if value and value.lower() not in ("none", "_none_", "-", "n/a"):
                default = f" Default: {value}."
        answer = f"The `{key}` {noun} of {context}: {desc.rstrip('.')}.{default}"
        if n_words(answer) >= min_words:
            yield make_pair(chunk, question, answer, "option_table")


def describe_manifest(doc: dict[str, Any]) -> str:
    """'a Deployment named `web` with 3 replicas': a Kubernetes object described from its own fields."""
    kind = str(doc.get("kind") or "")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = str(meta.get("name") or "")
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    article = "an" if kind[:1].upper() in "AEIOU" else "a"
    text = f"{article} {kind}" + (f" named `{name}`" if name else "")
    details: list[str] = []
    replicas = spec.get("replicas")
    if isinstance(replicas, int):
        details.append(f"{replicas} replica{'s' if replicas != 1 else ''}")
    pod_spec = spec
    template = spec.get("template") if isinstance(spec.get("template"), dict) else None
    if template and isinstance(template.get("spec"), dict):
        pod_spec = template["spec"]
    job_template = spec.get("jobTemplate")
    if isinstance(job_template, dict):
        pod_spec = ((job_template.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if isinstance(containers, list):
        images = sorted({str(c.get("image")) for c in containers if isinstance(c, dict) and c.get("image")})
        if images:
            details.append(
                "the " + ", ".join(f"`{i}`" for i in images[:2]) + f" image{'s' if len(images) > 1 else ''}"
            )
        probes = sorted(
            {
                k
                for c in containers
                if isinstance(c, dict)
                for k in c
                if k in ("livenessProbe", "readinessProbe", "startupProbe")
            }
        )
        if probes:
            details.append("a " + " and a ".join(probes))
    if isinstance(spec.get("schedule"), str):
        details.append(f"the schedule `{spec['schedule']}`")
    if kind == "Service" and isinstance(spec.get("type"), str):
        details.append(f"type {spec['type']}")
    if details:
        text += " with " + ", ".join(details)
    return text


def _manifest_code(text: str) -> str:
    for kind, block in split_blocks(text):
        if kind == "code":
            return block
    return ""


def _manifest_pairs(chunk: dict[str, Any], project: str, cfg: QaGenParams) -> Iterator[dict[str, Any]]:
    """Whole Kubernetes objects only: a YAML answer cut mid-block would teach broken YAML."""
    code = _manifest_code(chunk["text"])
    body = "\n".join(code.splitlines()[1:-1])
    if not MANIFEST_API.search(body):
        return
    try:
        docs = [d for d in yaml.safe_load_all(body) if isinstance(d, dict)]
    except yaml.YAMLError:
        return
    docs = [d for d in docs if d.get("kind") and d.get("apiVersion")]
    if not docs or n_words(body) > cfg.max_manifest_words or n_words(body) < cfg.min_answer_words:
        return
    described = [describe_manifest(d) for d in docs[:3]]
    what = "defines " + (
        described[0] if len(described) == 1 else "; ".join(described[:-1]) + "; and " + described[-1]
    )
    api = str(docs[0].get("apiVersion"))  # a CRD group (argoproj.io/v1alpha1) names the project that owns it
    owner = (
        ""
        if "." not in api.split("/")[0] or project == "Kubernetes" or _names_in(what, project)
        else f" for {project}"
    )
    question = f"Write a Kubernetes manifest{owner} that {what}."
    yield make_pair(chunk, question, code.strip(), "manifest")

"""Relations: typed patterns between neighbouring entities, landscape facts, co-occurrence, contract records."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stages.ner.extract import Mention
from stages.ner.landscape import LandscapeItem

# Relation patterns over the text between two entities of one sentence, tried in order; the first that fits wins.
# `reverse` turns "X is used by Y" into Y uses X.
RELATION_PATTERNS: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    ("alternative-to", re.compile(r"\b(?:alternative (?:to|for)|instead of|replacement for|replaces|rather than|"
                                  r"as opposed to|compared (?:to|with))\b"), False),
    ("integrates-with", re.compile(r"\b(?:integrat(?:es|ed|ion|ing|e)? (?:with|into)|works (?:well )?with|"
                                   r"compatible with|interoperates with|support(?:s)? for|supports|"
                                   r"exports? (?:\w+ )?(?:to|into)|sends? (?:\w+ )?to|scrapes?|"
                                   r"collects? (?:\w+ )?from|connects? to)\b"), False),
    ("extends", re.compile(r"\b(?:extends?|extending|extension (?:of|to|for)|plugin (?:for|to)|add-on (?:for|to)|"
                           r"addon for)\b"), False),
    ("part-of", re.compile(r"\b(?:part of|component of|sub-?project of|member of|included in|hosted by|"
                           r"donated to|maintained by|governed by)\b|"
                           r"\b(?:graduated|incubating|sandbox) project (?:of|at|in)\b"), False),
    ("runs-on", re.compile(r"(?:\bruns? (?:on|in|inside|atop)|\brunning (?:on|in|inside)|\bdeployed (?:on|to|in|into)|"
                           r"\binstalled (?:on|in|into)|\bhosted on|\bnative to|\bfor|\bon)"
                           r"(?: (?:a|an|the|any|top of|your|each))? $"), False),
    ("uses", re.compile(r"\b(?:is used by|are used by|used by|is consumed by)\b"), True),
    ("uses", re.compile(r"\b(?:uses|use|leverages?|relies on|rely on|built (?:on|with|upon)|based on|depends on|"
                        r"requires|powered by|backed by|stores? (?:\w+ )?in|on top of)\b"), False),
    ("is-a", re.compile(r"^ ,? ?(?:is|are) (?:a|an) (?:[\w-]+ ){0,2}$|^ , (?:a|an) (?:[\w-]+ ){0,2}$"), False),
)
RUNS_ON_VERB = re.compile(r"\b(?:runs?|running|deployed|installed|hosted|native)\b")
RUNS_ON_PLATFORMS = {"Kubernetes", "Docker", "Knative", "Red Hat OpenShift", "Linux"}
APPOSITION_PROJECT = re.compile(r"^ , (?:a|an|the) $")  # "X, a CNCF project": X part-of CNCF
MAX_BETWEEN_CHARS = 80
RELATION_ENTITY_TYPES = {"PROJECT", "K8S_RESOURCE", "CLI_TOOL", "API_OBJECT", "STANDARD", "ORGANIZATION",
                         "CATEGORY"}
IS_A_TAIL_TYPES = {"CATEGORY", "STANDARD", "K8S_RESOURCE", "API_OBJECT"}


@dataclass
class RelationAcc:
    """Evidence gathered for one (head, relation, tail)."""

    count: int = 0
    chunks: set[str] = field(default_factory=set)
    sentences: set[str] = field(default_factory=set)

    def add(self, chunk_id: str, sentence: str) -> None:
        """Count distinct sentences, so boilerplate repeated on a hundred CLI reference pages counts once."""
        self.chunks.add(chunk_id)
        self.sentences.add(" ".join(sentence.lower().split()))
        self.count = len(self.sentences)


RelKey = tuple[str, str, str, str, str, str]  # head, head_type, relation, tail, tail_type, source


def pattern_relations(text: str, mentions: Sequence[Mention]) -> list[tuple[Mention, str, Mention]]:
    """Typed relations between neighbouring entities of one sentence, read off the words between them."""
    found: list[tuple[Mention, str, Mention]] = []
    usable = [m for m in mentions if m.type in RELATION_ENTITY_TYPES]
    for left, right in zip(usable, usable[1:], strict=False):
        if left.sent != right.sent or left.entity.lower() == right.entity.lower():
            continue
        between = text[left.end:right.start]
        if len(between) > MAX_BETWEEN_CHARS or "\n" in between or left.type == "CATEGORY":
            continue  # categories are only ever the tail ("X is a service mesh")
        if "," in between.lstrip().lstrip(",") or ";" in between:
            continue  # across a clause boundary: "X, a CNCF project, extends Y" says nothing about CNCF
        rel = classify_between(between, right, text[right.end:right.end + 30], left.type)
        if rel is None:
            continue
        relation, reverse = rel
        head, tail = (right, left) if reverse else (left, right)
        if tail.type == "CLI_TOOL" and head.type not in ("PROJECT", "ORGANIZATION"):
            continue  # "Pod uses kubectl" is how a sentence reads, not a fact
        found.append((right, relation, left) if reverse else (left, relation, right))
    return found


def _runs_on_ok(low: str, head_type: str, tail: Mention) -> bool:
    """Software runs on a platform: a project head, a project tail; a bare "for"/"on" only before a platform."""
    if head_type != "PROJECT" or tail.type != "PROJECT":
        return False
    return bool(RUNS_ON_VERB.search(low)) or tail.entity in RUNS_ON_PLATFORMS


def classify_between(between: str, tail: Mention, after: str = "", head_type: str = "PROJECT") -> tuple[str, bool] | None:
    """The relation that the words between two entities express, if any; (relation, reversed)."""
    low = " " + " ".join(between.lower().split()) + " "  # padded: patterns anchor on word edges
    if APPOSITION_PROJECT.match(low) and tail.type in ("ORGANIZATION", "PROJECT"):
        is_project = re.match(r"\s*(?:sub-?)?project\b", after, re.I)
        return ("part-of", False) if is_project else None
    for relation, pattern, reverse in RELATION_PATTERNS:
        if not pattern.search(low):
            continue
        if relation == "is-a" and (tail.type not in IS_A_TAIL_TYPES or not _head_noun_ends(after)):
            continue
        if relation == "runs-on" and not _runs_on_ok(low, head_type, tail):
            continue
        return relation, reverse
    return None


def _head_noun_ends(after: str) -> bool:
    """In "X is a service mesh that ..." the tail is the head noun; in "X is a DNS server" it is a modifier."""
    stripped = after.lstrip()
    if not stripped or stripped[0] in ".,;:)!?":
        return True
    word = stripped.split()[0].lower()
    return word in {"that", "which", "for", "and", "or", "with", "built", "designed", "written", "to", "in", "on",
                    "from", "used", "providing", "by", "like", "project", "tool", "implementation", "solution"}


def landscape_relations(items: Sequence[LandscapeItem], wanted: set[str]) -> list[tuple[str, str, str, str, str]]:
    """in-category / has-maturity facts of the landscape items that matter (mentioned or selected)."""
    facts: set[tuple[str, str, str, str, str]] = set()
    for it in items:
        if it.is_org or it.canonical not in wanted:
            continue
        if it.subcategory:
            facts.add((it.canonical, "PROJECT", "in-category", it.subcategory, "CATEGORY"))
        if it.category:
            facts.add((it.canonical, "PROJECT", "in-category", it.category, "CATEGORY"))
        if it.maturity:
            facts.add((it.canonical, "PROJECT", "has-maturity", it.maturity, "MATURITY"))
    return sorted(facts)


def relation_records(acc: dict[RelKey, RelationAcc], max_per_type: int) -> list[dict[str, Any]]:
    """Contract records, strongest first within a relation type, capped, then in a stable sorted order."""
    by_type: dict[str, list[tuple[RelKey, RelationAcc]]] = defaultdict(list)
    for key, value in acc.items():
        by_type[key[2]].append((key, value))
    records: list[dict[str, Any]] = []
    for relation in sorted(by_type):
        ranked = sorted(by_type[relation], key=lambda kv: (-kv[1].count, kv[0]))
        if max_per_type > 0:
            ranked = ranked[:max_per_type]
        for (head, head_type, rel, tail, tail_type, source), value in ranked:
            chunk_ids = sorted(value.chunks)
            records.append({
                "head": head, "head_type": head_type, "relation": rel, "tail": tail, "tail_type": tail_type,
                "source": source, "count": value.count,
                "evidence_chunk_id": chunk_ids[0] if chunk_ids else None,
                "evidence_chunk_ids": chunk_ids[:20],
            })
    records.sort(key=lambda r: (r["relation"], r["head"], r["tail"], r["source"], r["head_type"], r["tail_type"]))
    return records


def count_cooccurrence(text: str, mentions: Sequence[Mention], chunk_id: str,
                       cooc: dict[tuple[tuple[str, str], tuple[str, str]], RelationAcc]) -> None:
    """Each unordered pair of distinct entities in one sentence counts once per distinct sentence."""
    by_sent: dict[tuple[int, int], set[tuple[str, str]]] = defaultdict(set)
    for m in mentions:
        if m.type in RELATION_ENTITY_TYPES:
            by_sent[m.sent_span].add((m.entity, m.type))
    for (start, end), ents in by_sent.items():
        ordered = sorted(ents)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                if a[0].lower() != b[0].lower():
                    cooc[(a, b)].add(chunk_id, text[start:end])

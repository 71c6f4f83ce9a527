"""Character spans: code regions, names glued into identifiers, regex shapes, and the non-overlapping choice."""

from __future__ import annotations

import bisect
import re

from stages.ner.gazetteer import Term
from stages.ner.vocab import (
    API_VERSION_RE,
    CODE_API_VERSION_RE,
    CODE_RE,
    CONFIG_ROOTS,
    DOTTED_RE,
    FLAG_RE,
    HYPHEN_SUFFIX_OK,
    NOT_CONFIG_TAILS,
    TYPE_PRIORITY,
    VERSION_PART,
)


def inside_identifier(text: str, start: int, end: int) -> bool:
    """`kube-proxy`, `karmada-controller`, `prometheus_rules`, `k8s.io`: a name glued into an identifier is not it.

    A capitalised name with an adjective suffix stays a mention ("Kubernetes-native", "Prometheus-compatible");
    "CRI-containerd" or "Argo-Workflows-Server" do not.
    """
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    after2 = text[end + 1] if end + 1 < len(text) else " "
    before2 = text[start - 2] if start > 1 else " "
    if (before in "_/." and before2.isalnum()) or (after in "_/" and after2.isalnum()):
        return True
    if after == "." and after2.isalpha():
        return True
    if before == "-" and before2.isalnum():
        return True
    if after == "-" and after2.isalnum():
        suffix = re.match(r"[A-Za-z]+", text[end + 1:end + 20])
        return not (text[start].isupper() and suffix and suffix.group() in HYPHEN_SUFFIX_OK)
    return False


def code_regions(text: str) -> list[tuple[int, int]]:
    """Character ranges of fenced blocks, inline code and `$ command` lines."""
    return [(m.start(), m.end()) for m in CODE_RE.finditer(text)]


def in_regions(regions: list[tuple[int, int]], pos: int) -> bool:
    i = bisect.bisect_right(regions, (pos, float("inf"))) - 1
    return i >= 0 and regions[i][0] <= pos < regions[i][1]


def regex_candidates(text: str, code: list[tuple[int, int]]) -> list[tuple[int, int, Term]]:
    """Flags, dotted config keys and apiVersion groups: shapes, not names, so regexes find them."""
    out: list[tuple[int, int, Term]] = []
    for m in FLAG_RE.finditer(text):
        out.append((m.start(), m.end(), Term(m.group(), "CONFIG")))
    for m in API_VERSION_RE.finditer(text):
        out.append((m.start(), m.end(), Term(m.group(), "API_OBJECT")))
    for m in CODE_API_VERSION_RE.finditer(text):  # `apiextensions/v1` in code: any group/version shape
        if in_regions(code, m.start()):
            out.append((m.start(), m.end(), Term(m.group(), "API_OBJECT")))
    for m in DOTTED_RE.finditer(text):
        root, rest = m.group(1), m.group(2)
        parts = [root, *rest[1:].split(".")]
        if parts[-1].lower() in NOT_CONFIG_TAILS or any(VERSION_PART.match(p) for p in parts):
            continue  # domains, files, `deployments.v1.apps`
        camel = any(re.search(r"[a-z][A-Z]", p) for p in parts)
        if root in CONFIG_ROOTS or (in_regions(code, m.start()) and (camel or len(parts) >= 3)):
            out.append((m.start(), m.end(), Term(m.group(), "CONFIG")))
    return out


def select_spans(candidates: list[tuple[int, int, Term]]) -> list[tuple[int, int, Term]]:
    """Non-overlapping spans: longest first, then type priority, then leftmost; returned in text order."""
    ranked = sorted(candidates, key=lambda c: (-(c[1] - c[0]), TYPE_PRIORITY[c[2].type], c[0], c[2].canonical))
    taken: list[tuple[int, int]] = []
    chosen: list[tuple[int, int, Term]] = []
    for start, end, term in ranked:
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        chosen.append((start, end, term))
    return sorted(chosen, key=lambda c: (c[0], c[1]))

"""The gazetteer: every surface form the matcher knows, its type, and whether context must confirm it."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stages.ner.landscape import LandscapeItem, load_categories
from stages.ner.vocab import (
    AMBIGUOUS_CLI,
    API_LINE,
    BUILTIN_API_OBJECTS,
    CATEGORY_EXTRA,
    CLI_TOOLS,
    CODE_RE,
    CORE_GROUPS,
    CORE_KINDS,
    EXTRA_ORGANIZATIONS,
    GENERIC_CATEGORY_WORDS,
    KIND_LINE,
    PROJECT_ALIASES,
    STANDARDS,
    TYPE_PRIORITY,
    WORD_RE,
    YAML_DOC_SPLIT,
)


@dataclass
class Term:
    """What a surface form means, and whether the context must confirm it."""

    canonical: str
    type: str
    ambiguous: bool = False


@dataclass
class Gazetteer:
    """Surface form -> {type: term}, matched case-sensitively (`exact`) or ignoring case (`folded`).

    A surface may carry several types ("containerd" the project and the command): the context rules and the
    type priority choose per mention.
    """

    exact: dict[str, dict[str, Term]] = field(default_factory=dict)
    folded: dict[str, dict[str, Term]] = field(default_factory=dict)

    def add(self, surface: str, term: Term, fold: bool = False) -> None:
        surface = surface.strip()
        if len(re.sub(r"[^A-Za-z0-9]", "", surface)) < 2:
            return
        table = self.folded if fold else self.exact
        key = surface.lower() if fold else surface
        table.setdefault(key, {}).setdefault(term.type, term)  # first writer wins: landscape order is stable

    def lookup(self, surface: str) -> list[Term]:
        """Every term a surface form may mean (exact forms first), for tests and debugging."""
        found = list(self.exact.get(surface, {}).values()) + list(self.folded.get(surface.lower(), {}).values())
        return sorted(found, key=lambda t: TYPE_PRIORITY[t.type])


def word_case_counts(texts: Iterable[str]) -> tuple[Counter[str], Counter[str]]:
    """How often each word is written lower case mid-sentence in prose, and how often capitalised.

    This is the "is it an English word here?" signal: a landscape name that the corpus mostly writes in lower
    case in running text ("service", "score", "canonical") needs context before it counts as a name.
    """
    lower: Counter[str] = Counter()
    upper: Counter[str] = Counter()
    for text in texts:
        prose = CODE_RE.sub(" ", text)
        for match in WORD_RE.finditer(prose):
            word = match.group()
            start = match.start()
            before = prose[max(0, start - 2):start]
            if start == 0 or re.search(r"[.!?:\n#*>-]\s*$", before):
                continue  # sentence or line start says nothing about case
            if word.islower():
                lower[word] += 1
            elif word[0].isupper() and word[1:].islower():
                upper[word.lower()] += 1
    return lower, upper


@dataclass
class WordStats:
    """Case statistics of the corpus words, the stand-in for an English dictionary (none is installable here)."""

    lower: Counter[str]
    upper: Counter[str]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordStats:
        return cls(*word_case_counts(texts))

    def common(self, word: str) -> bool:
        """Used as an ordinary word: often in lower case, at least as often as capitalised."""
        n = self.lower.get(word, 0)
        return n >= 3 and n >= self.upper.get(word, 0)

    def seen_lower(self, word: str) -> bool:
        """Written in lower case now and then: a company called that needs context."""
        n = self.lower.get(word, 0)
        return n >= 2 and 3 * n >= self.upper.get(word, 0)

    def name_like(self, word: str) -> bool:
        """Mostly capitalised mid-sentence: its rare lower-case uses ("kubernetes") are the name too."""
        up = self.upper.get(word, 0)
        return up >= 1 and up >= 2 * self.lower.get(word, 0)


def name_variants(canonical: str) -> list[str]:
    """Surface forms of a landscape name: itself, without "(ACRONYM)", the acronym, without " Project"."""
    out = [canonical]
    m = re.match(r"^(.*?)\s*\(([^)]+)\)$", canonical)
    if m:
        base, inner = m.group(1).strip(), m.group(2).strip()
        out.append(base)
        initials = "".join(w[0] for w in re.split(r"[\s-]+", base) if w and w[0].isalpha()).upper()
        if inner.upper() == initials or (inner.isupper() and len(inner) <= 6):
            out.append(inner)
    for form in list(out):
        if form.endswith(" Project"):
            out.append(form[: -len(" Project")])
        if form.startswith("The "):
            out.append(form[4:])
    return list(dict.fromkeys(v for v in out if v))


def build_gazetteer(items: Sequence[LandscapeItem], ambiguous_names: Iterable[str], stats: WordStats,
                    manifest_kinds: dict[str, str] | None = None) -> Gazetteer:
    """All surface forms the matcher knows, with their type and whether they need context.

    `stats` says which words the corpus uses as ordinary words ("Score", "Distribution", "Port"): those names
    need context, and only names the corpus treats as names are matched in any case.
    """
    gaz = Gazetteer()
    ambiguous = {n.lower() for n in ambiguous_names}

    def needs_context(surface: str) -> bool:
        """A title-case or lower-case name that is also an ordinary word ("Harbor", "Control Plane")."""
        words = surface.lower().split()
        if surface.lower() in ambiguous:
            return True
        if surface.islower():  # "etcd", "cert-manager": the name is lower case, so lower-case use says nothing
            return False
        plain_case = all(w[1:].islower() or w.islower() for w in surface.split())
        return plain_case and all(stats.common(w) for w in words)

    def foldable(surface: str) -> bool:
        """Match in any case: CamelCase/digits/punctuation ("CoreDNS", "K8sGPT") or a word the corpus capitalises."""
        if re.search(r"[a-z][A-Z]|\d|[-.]", surface) or " " in surface:
            return True
        return stats.name_like(surface.lower())


    for category in load_categories(items):
        _add_category(gaz, category, category)
    for surface, category in CATEGORY_EXTRA.items():
        _add_category(gaz, surface, category)
    for it in sorted(items, key=lambda i: (i.is_org, i.canonical)):
        kind = "ORGANIZATION" if it.is_org else "PROJECT"
        for surface in name_variants(it.canonical):
            org_word = it.is_org and " " not in surface and stats.seen_lower(surface.lower())
            _add_name(gaz, surface, Term(it.canonical, kind, needs_context(surface) or org_word), foldable(surface))
    for surface, canonical in EXTRA_ORGANIZATIONS.items():
        _add_name(gaz, surface, Term(canonical, "ORGANIZATION", needs_context(surface)), False)
    known = {it.canonical for it in items}
    for surface, canonical in PROJECT_ALIASES.items():
        if canonical in known:
            _add_name(gaz, surface, Term(canonical, "PROJECT", needs_context(surface)), foldable(surface))
    names = {it.canonical.lower() for it in items}
    kinds = {k: t for k, t in (manifest_kinds or {}).items() if k.lower() not in names}  # `kind: Karmada`
    kinds.update({k: "API_OBJECT" for k in BUILTIN_API_OBJECTS})
    kinds.update({k: "K8S_RESOURCE" for k in CORE_KINDS})
    for kind, etype in sorted(kinds.items()):
        term = Term(kind, etype, stats.common(kind.lower()) or kind in {"Application", "Workflow", "Sensor", "Issuer",
                                                                     "Certificate", "Sidecar", "Rollout"})
        for surface in (kind, plural(kind)):
            gaz.add(surface, term)
    for tool in CLI_TOOLS:
        gaz.add(tool, Term(tool, "CLI_TOOL", tool in AMBIGUOUS_CLI or tool in ambiguous))
    for surface, canonical in STANDARDS.items():
        gaz.add(surface, Term(canonical, "STANDARD"))
        if len(surface) > 3 and re.search(r"[a-z][A-Z]|[A-Z][a-z]+[A-Z]", surface):  # gRPC, eBPF, OpenMetrics
            gaz.add(surface, Term(canonical, "STANDARD"), fold=True)
        if surface.isupper() and surface.isalpha():  # JWTs, SBOMs, CVEs
            gaz.add(surface + "s", Term(canonical, "STANDARD"))
    return gaz


def _add_name(gaz: Gazetteer, surface: str, term: Term, foldable: bool) -> None:
    """A name is matched exactly; distinctive project names (not an English word, > 3 chars) in any case too.

    Companies are written with their capitals, so organisations are never matched case-insensitively.
    """
    gaz.add(surface, term)
    cli_name = surface.lower() in CLI_TOOLS  # lower-case "linkerd"/"argocd" is the command, decided by context
    if foldable and not term.ambiguous and len(surface) > 3 and term.type == "PROJECT" and not cli_name:
        gaz.add(surface, term, fold=True)
    elif surface.islower() and not term.ambiguous:
        gaz.add(surface[0].upper() + surface[1:], term)  # "etcd" opening a sentence


def _add_category(gaz: Gazetteer, surface: str, category: str) -> None:
    """Multi-word category names in any case and plural ("service meshes"); generic one-word names not at all."""
    low = surface.lower()
    if low in GENERIC_CATEGORY_WORDS and surface not in CATEGORY_EXTRA:
        return
    term = Term(category, "CATEGORY")
    parts = [p.strip() for p in re.split(r"\s+(?:&|and)\s+", surface)] if "&" in surface else [surface]
    for form in [surface, *parts]:
        if form.lower() in GENERIC_CATEGORY_WORDS or (form in parts and " " not in form):
            continue
        if " " in form:
            gaz.add(form, term, fold=True)
            gaz.add(plural(form), term, fold=True)
        elif form == surface:
            gaz.add(form, term)


def plural(word: str) -> str:
    """English plural of a kind or category name ("Ingress" -> "Ingresses", "Policy" -> "Policies")."""
    if word.endswith(("s", "x", "sh", "ch")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def manifest_kinds(texts: Iterable[str]) -> dict[str, str]:
    """Kinds declared in the chunks' manifests: core/k8s.io groups are K8S_RESOURCE, others API_OBJECT.

    A CustomResourceDefinition's own `names.kind` is an API object too.
    """
    found: dict[str, str] = {}
    for text in texts:
        if "kind:" not in text:
            continue
        for block in YAML_DOC_SPLIT.split(text):
            kinds = KIND_LINE.findall(block)
            if not kinds:
                continue
            api = API_LINE.search(block)
            group = api.group(1).rsplit("/", 1)[0] if api and "/" in api.group(1) else ""
            core = group in CORE_GROUPS or group.endswith("k8s.io")
            first = kinds[0]
            if first == "CustomResourceDefinition":
                found.setdefault(first, "API_OBJECT")
                for crd_kind in kinds[1:2]:
                    found.setdefault(crd_kind, "API_OBJECT")
            elif api:
                found.setdefault(first, "K8S_RESOURCE" if core else "API_OBJECT")
    return dict(sorted(found.items()))

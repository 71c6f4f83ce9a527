"""Entity extraction: spaCy tokenizer + sentencizer + PhraseMatchers over the gazetteer, and the context rules."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from stages.ner.gazetteer import Gazetteer, Term
from stages.ner.spans import code_regions, in_regions, inside_identifier, regex_candidates, select_spans
from stages.ner.vocab import (
    CLI_CUES,
    CLI_SUBCOMMANDS,
    CORE_KINDS,
    CUE_WORDS,
    KIND_SENTENCE_START_OK,
    NEGATIVE_CUES,
    NOT_COMMAND_NEXT,
    ORG_CUES,
)


@dataclass
class Mention:
    entity: str
    type: str
    text: str
    start: int
    end: int
    sent: int  # index of the sentence inside its text, for relations and co-occurrence
    sent_span: tuple[int, int] = (0, 0)  # the sentence's character range


class EntityExtractor:
    """spaCy tokenizer + sentencizer + two PhraseMatchers (ORTH, LOWER), regexes for flags/keys, context rules."""

    def __init__(self, gazetteer: Gazetteer) -> None:
        import spacy
        from spacy.language import Language
        from spacy.matcher import PhraseMatcher

        if "ner_line_breaks" not in Language.factories:
            Language.component("ner_line_breaks", func=_line_breaks)
        self.nlp = spacy.blank("en")
        self.nlp.add_pipe("sentencizer")
        self.nlp.add_pipe("ner_line_breaks")
        self.gaz = gazetteer
        self.exact = PhraseMatcher(self.nlp.vocab, attr="ORTH")
        self.folded = PhraseMatcher(self.nlp.vocab, attr="LOWER")
        self._terms: dict[int, Term] = {}
        for matcher, table in ((self.exact, gazetteer.exact), (self.folded, gazetteer.folded)):
            by_key: dict[str, list[str]] = defaultdict(list)
            for surface, terms in table.items():
                for term in terms.values():
                    by_key[f"{term.type}\x1f{term.canonical}\x1f{int(term.ambiguous)}"].append(surface)
            for key in sorted(by_key):
                canonical_type, canonical, amb = key.split("\x1f")
                term = Term(canonical, canonical_type, amb == "1")
                self._terms[self.nlp.vocab.strings.add(key)] = term
                matcher.add(key, list(self.nlp.tokenizer.pipe(sorted(by_key[key]))))

    def extract(self, texts: Sequence[str], projects: Sequence[str] | None = None,
                batch_size: int = 256) -> Iterator[list[Mention]]:
        """Mentions of each text, sorted by offset; `projects` is each text's own project (or "")."""
        projects = projects or [""] * len(texts)
        for doc, project in zip(self.nlp.pipe(texts, batch_size=batch_size), projects, strict=True):
            yield self._doc_mentions(doc, project)

    def _doc_mentions(self, doc: Any, project: str) -> list[Mention]:
        text = doc.text
        code = code_regions(text)
        sents = [(s.start_char, s.end_char) for s in doc.sents]
        sent_starts = [s for s, _ in sents]
        candidates: list[tuple[int, int, Term]] = []
        for matcher in (self.exact, self.folded):
            for match_id, start, end in matcher(doc):
                term = self._terms[match_id]
                span = doc[start:end]
                if inside_identifier(text, span.start_char, span.end_char):
                    continue
                if term.ambiguous and not self._context_ok(doc, span, term, project, code):
                    continue
                candidates.append((span.start_char, span.end_char, term))
        candidates.extend(regex_candidates(text, code))
        chosen = select_spans(candidates)
        out = []
        for s, e, t in chosen:
            i = max(0, bisect.bisect_right(sent_starts, s) - 1)
            out.append(Mention(t.canonical, t.type, text[s:e], s, e, i, sents[i] if sents else (0, len(text))))
        return out

    def _context_ok(self, doc: Any, span: Any, term: Term, project: str, code: list[tuple[int, int]]) -> bool:
        """Decide whether an ambiguous surface form is the entity here (see the package docstring)."""
        in_code = in_regions(code, span.start_char)
        if term.type == "CLI_TOOL":
            return _command_context(doc, span, in_code)
        if project and term.canonical == project and not span.text.islower():
            return True
        if span.text.islower():  # a lower-case landscape name ("kind", "cargo") only as code, not as `kind:`
            return in_code and not _yaml_key(doc, span)
        sent = span.sent
        words = {t.lower_ for t in sent if not t.is_punct}
        if term.type == "ORGANIZATION":  # "Port", "Block", "Canonical": only where companies are the topic
            return bool(words & ORG_CUES)
        sentence_start = _is_sentence_start(span)
        if term.type in ("K8S_RESOURCE", "API_OBJECT"):
            if in_code:
                if span.text.islower() or _yaml_key(doc, span):
                    return False
                # `Config{...}` in Go, "[Server #3]" in a log: a custom kind that is a word needs `kind:` or a cue
                return term.canonical in CORE_KINDS or _after_kind_key(doc, span) or _kind_cue_adjacent(doc, span)
            if term.canonical not in CORE_KINDS and not _kind_cue_adjacent(doc, span):
                return False
            if sentence_start:
                nxt = doc[span.end] if span.end < len(doc) else None
                return nxt is not None and nxt.lower_ in KIND_SENTENCE_START_OK
            return True
        if words & NEGATIVE_CUES and not (words & {"kubernetes", "cluster", "cncf", "k8s"}):
            return False
        if in_code:
            return True
        has_cue = bool((words - {span.text.lower()}) & CUE_WORDS)
        if sentence_start:
            return has_cue
        return has_cue or self._other_entity_near(sent, span)

    def _other_entity_near(self, sent: Any, span: Any) -> bool:
        """Another unambiguous name in the sentence ("Harbor integrates with Trivy") says the topic is software."""
        for matcher in (self.exact, self.folded):
            for match_id, start, end in matcher(sent.as_doc()):
                term = self._terms[match_id]
                if not term.ambiguous and sent[start:end].text != span.text:
                    return True
        return False


def _line_breaks(doc: Any) -> Any:
    """Markdown lines (list items, headings, table rows) are separate sentences."""
    for i, token in enumerate(doc[1:], start=1):
        if doc[i - 1].is_space and "\n" in doc[i - 1].text:
            token.is_sent_start = True
    return doc


def _is_sentence_start(span: Any) -> bool:
    for token in span.sent:
        if token.i >= span.start:
            return True
        if not (token.is_punct or token.is_space or token.text in {"-", "*", "#", "##", "###", ">", "1."}):
            return False
    return True


def _command_context(doc: Any, span: Any, in_code: bool) -> bool:
    """A lower-case tool name is the tool when it is used as a command: `helm install`, "the flux CLI"."""
    nxt = doc[span.end] if span.end < len(doc) else None
    prev = doc[span.start - 1] if span.start > 0 else None
    if nxt is not None and nxt.text in {":", "=", ".", "/"} and not doc[span.end - 1].whitespace_:
        return False  # `kind: Pod`, `helm.sh/chart`
    if prev is not None and (prev.text.startswith("-") or prev.text in {"=", "namespace"}):
        return False  # `kubectl -n linkerd get pods`: a flag's value
    if nxt is not None and (nxt.lower_ in CLI_SUBCOMMANDS or nxt.lower_ in CLI_CUES):
        return True
    after = doc[span.end + 1] if span.end + 1 < len(doc) else None
    if nxt is not None and nxt.text == "`" and after is not None and after.lower_ in NOT_COMMAND_NEXT:
        return False
    if in_code:
        line_start = prev is None or "\n" in prev.text or prev.text in {"$", "sudo", "`", "|", "&&", "(", "exec"}
        return line_start or nxt is None or nxt.text.startswith(("`", "-")) or nxt.is_space
    return False


def _yaml_key(doc: Any, span: Any) -> bool:
    nxt = doc[span.end] if span.end < len(doc) else None
    return nxt is not None and nxt.text == ":"


def _after_kind_key(doc: Any, span: Any) -> bool:
    return span.start >= 2 and doc[span.start - 1].text == ":" and doc[span.start - 2].lower_ == "kind"


def _kind_cue_adjacent(doc: Any, span: Any) -> bool:
    """A custom kind that is also a word ("Application", "Server") needs "resource", "CRD", ... right beside it."""
    cues = {"resource", "resources", "crd", "crds", "object", "objects", "kind", "custom", "manifest", "manifests",
            "spec", "cr", "crs", "controller"}
    before = [t.lower_ for t in doc[max(0, span.start - 6):span.start] if not (t.is_punct or t.is_space)][-2:]
    after = [t.lower_ for t in doc[span.end:span.end + 6] if not (t.is_punct or t.is_space)][:2]
    return bool(set(before + after) & cues)

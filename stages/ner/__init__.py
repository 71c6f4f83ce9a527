"""Named entities and relations of the cloud-native world, from the language-filtered chunks.

Why a rule-based spaCy pipeline (`spacy.blank("en")` + PhraseMatcher + regexes) and not a trained model: no model
can be downloaded here, and the names that matter are known in advance: every landscape item, the CNCF members,
the landscape categories, Kubernetes kinds (built in plus every `kind:` found in the chunks' manifests), CLI tools,
standards, flags and config keys. What a list cannot know is whether "Harbor" or "helm" in a sentence is the
project or the English word; context rules decide that (capitalisation, sentence position, code context, cue
words, the chunk's own project), and the hand-annotated gold set measures how well.

Outputs: data/ner/entities.jsonl (one mention a line), relations.jsonl (typed patterns, landscape facts,
co-occurrence), graph.json (networkx node-link) + graph.graphml, metrics/ner.json (counts, gold P/R/F1),
metrics/ner_graph.png (top relations).

Gold conventions (tests/data/ner_gold.jsonl): PROJECT = any landscape item or a known alias, sub-projects map to
their item ("Argo CD" -> Argo); K8S_RESOURCE = a capitalised Kubernetes kind, singular or plural ("Pods");
API_OBJECT = a custom resource kind, CustomResourceDefinition, or an apiVersion group/version; CLI_TOOL = a
command-line binary written as the command (lower case); CONFIG = a long flag or a dotted config key; STANDARD =
a protocol/specification/interface (wins over the landscape where the issue calls it a standard: gRPC, SPIFFE,
CNI); ORGANIZATION = a CNCF member, training/service partner or foundation; CATEGORY = a landscape category or
subcategory name (multi-word ones in any case: "service mesh").
"""

# The package, one job a module (import them directly; this file stays light so nothing heavy loads here):
#   vocab      built-in term lists, type priorities and the regexes for text shapes
#   landscape  landscape.yml items and categories
#   gazetteer  surface forms -> terms (names, aliases, kinds, tools, standards) and corpus word statistics
#   spans      code regions, identifier glue, regex candidates (flags, keys, apiVersions), span selection
#   extract    the spaCy pipeline and the context rules for ambiguous names (EntityExtractor, Mention)
#   relations  typed pattern relations, landscape facts, co-occurrence, relation records
#   gold       evaluation against the hand-annotated gold set
#   graph      networkx graph files and the PNG drawing
#   pipeline   reading the inputs and running the whole stage (run_ner)
#   __main__   the CLI: `python -m stages.ner`

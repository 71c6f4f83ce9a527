"""The relation graph: networkx node-link JSON + GraphML, and the PNG of the top relations."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.jsonl import atomic_write, write_json
from stages.ner.vocab import ENTITY_TYPES


def build_graph(relations: Sequence[dict[str, Any]]) -> Any:
    """A MultiDiGraph: nodes are canonical names (with their type), one edge per relation record."""
    import networkx as nx

    graph = nx.MultiDiGraph()
    for rec in relations:
        for name, etype in ((rec["head"], rec["head_type"]), (rec["tail"], rec["tail_type"])):
            if name not in graph:
                graph.add_node(name, type=etype)
        graph.add_edge(rec["head"], rec["tail"], key=f"{rec['relation']}|{rec['source']}|{rec['head_type']}|{rec['tail_type']}",
                       relation=rec["relation"], source=rec["source"], count=rec["count"],
                       evidence=" ".join(rec["evidence_chunk_ids"]))
    return graph


def write_graph(graph: Any, json_path: Path, graphml_path: Path) -> None:
    import networkx as nx

    write_json(json_path, nx.node_link_data(graph, edges="links"))
    with atomic_write(graphml_path, "wb", encoding=None) as fh:
        nx.write_graphml(graph, fh)


def draw_graph(relations: Sequence[dict[str, Any]], png_path: Path, top_nodes: int = 40) -> int:
    """Top nodes by degree over the typed relations read from text, drawn offline with matplotlib Agg.

    Pattern relations are preferred (landscape facts would make every category a hub), then any non-co-occurrence
    relation, then whatever there is, so a tiny run still draws something.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    pattern = [r for r in relations if r["source"] == "pattern"]
    typed = [r for r in relations if r["relation"] not in ("co-occurs-with", "has-maturity")]
    chosen = pattern if len(pattern) >= 10 else typed if len(typed) >= 10 else list(relations)
    types = {r["head"]: r["head_type"] for r in chosen} | {r["tail"]: r["tail_type"] for r in chosen}
    graph = nx.DiGraph()
    for rec in sorted(chosen, key=lambda r: (-r["count"], r["head"], r["tail"])):
        if not graph.has_edge(rec["head"], rec["tail"]):
            graph.add_edge(rec["head"], rec["tail"], relation=rec["relation"], count=rec["count"])
    ranked = sorted(graph.degree(weight="count"), key=lambda nd: (-nd[1], nd[0]))[:top_nodes]
    keep = {n for n, _ in ranked}
    # A plain graph in sorted order: a subgraph view walks big neighbourhoods through the kept-node set, whose
    # order follows the hash seed, so the drawing changed from run to run.
    sub = nx.DiGraph()
    sub.add_nodes_from(sorted(keep))
    sub.add_edges_from((u, v, d) for u, v, d in graph.edges(data=True) if u in keep and v in keep)
    fig, ax = plt.subplots(figsize=(16, 12), dpi=100)
    if len(sub):
        pos = nx.spring_layout(sub, seed=42, k=1.2)
        widths = [0.5 + min(4.0, d["count"] ** 0.5 / 3) for _, _, d in sub.edges(data=True)]
        palette = dict(zip(ENTITY_TYPES, ("#5dade2", "#58d68d", "#f5b041", "#af7ac5", "#d5dbdb", "#ec7063",
                                          "#f4d03f", "#aab7b8"), strict=True))
        colors = [palette.get(types.get(n, ""), "#cccccc") for n in sub.nodes]
        nx.draw_networkx_nodes(sub, pos, ax=ax, node_size=320, node_color=colors)
        nx.draw_networkx_edges(sub, pos, ax=ax, width=widths, alpha=0.5, arrows=True, arrowsize=8)
        nx.draw_networkx_labels(sub, pos, ax=ax, font_size=8)
        nx.draw_networkx_edge_labels(sub, pos, ax=ax, font_size=6,
                                     edge_labels={(u, v): d["relation"] for u, v, d in sub.edges(data=True)})
    ax.set_title(f"NER graph: top {len(sub)} entities by weighted degree over {len(chosen)} relations "
                 f"({'text patterns' if chosen is pattern else 'typed' if chosen is typed else 'all'}); "
                 "colour = entity type")
    ax.axis("off")
    with atomic_write(png_path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", metadata={"Software": None})
    plt.close(fig)
    return len(sub)

"""`perfmodel show graph DB --record N --out graph.png|.dot`: draw the stage graph of one measured record."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from perfmodel.featurize.schema import EDGE_INDEX, NODE_INDEX

# features printed on each stage node: (label, feature, undo log2(1+v))
_SHOWN = [
    ("iters", "prod_all", True), ("par", "prod_parallel", True), ("vec", "prod_vectorized", True),
    ("unroll", "auto_unroll_max_step", True), ("at", "compute_at_depth", False), ("red", "reduce_size", True),
    ("flop*", "op_float_mul", True), ("W", "w_bytes", True), ("R0", "r0_bytes", True),
]


def _raw(x: Any, name: str, log: bool) -> float:
    v = float(x[NODE_INDEX[name]])
    return 2.0 ** v - 1.0 if log else v


def _fmt(v: float) -> str:
    if v >= 1e9:
        return f"{v / 1e9:.3g}G"
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.0f}" if abs(v - round(v)) < 1e-6 else f"{v:.2g}"


def node_label(g: Any, n: Any) -> str:
    """A multi-line label with the node's name and main features."""
    d = g.nodes[n]
    x = d["x"]
    if d["kind"] == "loop":
        kind = next((k for k in ("parallel", "vectorized", "unrolled") if x[NODE_INDEX[f"loop_{k}"]]), "serial")
        return f"{d['name']}\n{_fmt(_raw(x, 'loop_extent', True))} {kind}"
    parts = [f"{lab}={_fmt(_raw(x, f, log))}" for lab, f, log in _SHOWN if _raw(x, f, log) not in (0.0, 1.0)]
    lines = [d["name"]] + [" ".join(parts[i:i + 3]) for i in range(0, len(parts), 3)]
    return "\n".join(lines)


def edge_label(g: Any, u: Any, v: Any) -> str:
    d = g.edges[u, v]
    if d["kind"] != "data":
        return ""
    return f"{d.get('buffer', '')}\n{_fmt(2.0 ** float(d['x'][EDGE_INDEX['bytes']]) - 1.0)}B"


def write_dot(g: Any, path: Path, title: str = "") -> None:
    """Graphviz text of the graph (no graphviz needed to write it)."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = ["digraph stage_graph {", f"  label={q(title)};", "  node [shape=box, fontname=monospace];"]
    for n in g.nodes:
        shape = "ellipse" if g.nodes[n]["kind"] == "loop" else "box"
        lines.append(f"  n{n} [label={q(node_label(g, n))}, shape={shape}];")
    for u, v in g.edges:
        style = "dashed" if g.edges[u, v]["kind"] == "nest" else "solid"
        lines.append(f"  n{u} -> n{v} [label={q(edge_label(g, u, v))}, style={style}];")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def draw_png(g: Any, path: Path, title: str = "") -> None:
    """Draw with matplotlib: stages left to right in program order (data edges arc between them),
    loop nodes (loop granularity) in rows above, outermost on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted(n for n in g.nodes if g.nodes[n]["kind"] == "stage")
    loops = [n for n in g.nodes if g.nodes[n]["kind"] == "loop"]
    pos = {n: (i * 4.0, 0.0) for i, n in enumerate(stages)}
    top = 0.0
    if loops:
        rows: dict[int, list] = {}
        for n in loops:
            rows.setdefault(int(g.nodes[n]["x"][NODE_INDEX["loop_depth"]]), []).append(n)
        top = float(len(rows))
        span = max(4.0 * (len(stages) - 1), 1.0)
        for dep, ns in rows.items():
            for j, n in enumerate(ns):
                pos[n] = (span * (j + 0.5) / len(ns) - 0.5 * span / len(ns) + 0.0, (top - dep) * 1.6)
    xs = [p[0] for p in pos.values()]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * (max(xs) - min(xs)) + 4), 3.5 + 1.2 * top))
    for u, v, d in g.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        if d["kind"] == "nest":
            ax.annotate("", xy=(x1, y1 + 0.3), xytext=(x0, y0 - 0.3),
                        arrowprops={"arrowstyle": "->", "color": "0.6", "linestyle": "--"})
            continue
        rad = 0.35 if x1 > x0 else -0.35
        ax.annotate("", xy=(x1 - 0.9, y1 - 0.2), xytext=(x0 + 0.9, y0 - 0.2),
                    arrowprops={"arrowstyle": "-|>", "lw": 2, "color": "#1f4e9c",
                                "connectionstyle": f"arc3,rad={rad}"})
        ax.text((x0 + x1) / 2, y0 - 0.55 - 0.12 * abs(x1 - x0), edge_label(g, u, v), ha="center", va="top",
                fontsize=7, color="#1f4e9c")
    for n in g.nodes:
        loop = g.nodes[n]["kind"] == "loop"
        ax.text(*pos[n], node_label(g, n), ha="center", va="center", fontsize=6 if loop else 7,
                family="monospace", bbox={"boxstyle": "round" if loop else "square,pad=0.4",
                                          "fc": "#eeeeee" if loop else "#cfe3ff", "ec": "0.3"})
    ax.set_xlim(min(xs) - 2.2, max(xs) + 2.2)
    ax.set_ylim(-1.2 - 0.15 * (max(xs) - min(xs)), 1.0 + 1.6 * top)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmd_show(args: argparse.Namespace) -> int:
    from perfmodel.collect.database import Database, iter_databases
    from perfmodel.featurize import FeaturizeError, stage_graph

    dbs = list(iter_databases(args.database))
    if len(dbs) > 1:
        names = ", ".join(map(str, dbs[:5]))
        raise ValueError(f"{args.database} holds {len(dbs)} databases; name one of them: {names}")
    db = Database.open(dbs[0])
    if not 0 <= args.record < len(db.records):
        raise ValueError(f"--record {args.record} out of range: {dbs[0]} has {len(db.records)} records (0-based)")
    raw = db.records[args.record]
    sch = db.tuning_record(raw).as_measure_candidate().sch
    try:
        g = stage_graph(sch, granularity=args.granularity)
    except FeaturizeError as e:
        raise ValueError(f"{dbs[0]} record {args.record}: {e}") from None
    from perfmodel.data.dataset import task_identity

    task = task_identity(db.workload(raw.workload).mod)[0]
    t = f"{min(raw.run_secs) * 1e6:.1f} us" if raw.ok else "failed"
    title = f"{task}  record {args.record} (line {raw.line})  {t}"
    out = Path(args.out)
    if out.suffix == ".dot":
        write_dot(g, out, title)
    elif out.suffix in (".png", ".svg", ".pdf"):
        draw_png(g, out, title)
    else:
        raise ValueError(f"--out {out}: use a .png, .svg, .pdf or .dot file")
    print(f"{out}: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges ({title})")
    if args.print:
        for n in sorted(g.nodes):
            print(node_label(g, n).replace("\n", " | "))
    return 0


def register(sub: Any) -> None:
    """Add ``show graph`` to the ``perfmodel`` subcommands."""
    p = sub.add_parser("show", help="draw things: `show graph DB --record N --out graph.png`")
    what = p.add_subparsers(dest="what", required=True)
    q = what.add_parser("graph", help="the stage graph of one record of a database")
    q.add_argument("database", help="a MetaSchedule database directory")
    q.add_argument("--record", type=int, default=0, help="0-based index of the tuning record")
    q.add_argument("--out", default="graph.png", help="output file: .png/.svg/.pdf (matplotlib) or .dot")
    q.add_argument("--granularity", default="stage", choices=["stage", "loop"])
    q.add_argument("--print", action="store_true", help="also print every node's label")
    q.set_defaults(fn=_cmd_show)

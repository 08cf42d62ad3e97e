"""The evaluation as text tables and as a Markdown page with plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from perfmodel.evaluate.evaluator import EvalResult
from perfmodel.metrics import METRICS, RANK_MIN_RECORDS

_MAX_SCATTER_TASKS = 24  # tasks drawn in the predicted-vs-measured grid (most records first)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def table(result: EvalResult | dict[str, Any]) -> str:
    """The overall metrics, one row per model, as a fixed-width text table."""
    j = result.to_json() if isinstance(result, EvalResult) else result
    head = f"{'model':12s}" + "".join(f"{m:>13s}" for m in METRICS) + f"{'tasks':>7s}{'records':>9s}"
    lines = [head]
    for name, m in j["models"].items():
        if m.get("error"):
            lines.append(f"{name:12s} not scored: {m['error']}")
            continue
        row = f"{name:12s}" + "".join(f"{_fmt(m[k], k == 'mape'):>13s}" for k in METRICS)
        lines.append(row + f"{m['n_tasks']:>7d}{m['n_records']:>9d}")
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_report(result: EvalResult, out_dir: str | os.PathLike) -> Path:
    """Write ``report.md`` and its PNG figures into ``out_dir``; returns the Markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j = result.to_json()
    scored = [r for r in result.runs if not r.error]
    md = ["# Cost-model evaluation", ""]
    md += [f"Databases: {', '.join(j['config']['db'])}; baselines trained on: "
           f"{', '.join(j['config']['train_db']) or '-'}.", ""]
    md += ["MAPE, RMSE (of natural-log seconds) and R² need predicted times: TVM's `xgb`/`mlp` predict "
           "normalized throughput and `random` a score, so theirs are `-`. Ranking metrics and R² are per task, "
           f"averaged over tasks with >= {RANK_MIN_RECORDS} records (each task counts once; MAPE and RMSE over "
           "every task). peak@k = best "
           "measured time / best measured time among the model's k top picks.", ""]
    md += ["## Overall", ""]
    rows = []
    for name, m in j["models"].items():
        if m.get("error"):
            rows.append([name] + ["-"] * len(METRICS) + [f"not scored: {m['error']}"])
        else:
            rows.append([name] + [_fmt(m[k], k == "mape") for k in METRICS] + [f"{m['n_tasks']} / {m['n_records']}"])
    md += [_md_table(["model", *METRICS, "tasks / records"], rows), ""]
    if j["notes"]:
        md += ["Notes:", ""] + [f"- {n}" for n in j["notes"]] + [""]

    md += ["## Per task", ""]
    names = [r.name for r in scored]
    rows = []
    for t in result.tasks:
        tj = j["tasks"][t.name]
        cells = [t.name, str(tj["n"]), f"{tj['best_s'] * 1e3:.4g} ms" if tj["best_s"] else "-"]
        for n in names:
            m = tj["models"].get(n, {})
            cells.append(f"{_fmt(m.get('kendall_tau'))} / {_fmt(m.get('peak1'))}")
        rows.append(cells)
    md += ["Cells: Kendall tau / peak@1.", "", _md_table(["task", "n", "best", *names], rows), ""]

    figs = []
    if any(r.absolute for r in scored):
        figs.append(("Predicted vs measured time", _scatter(result, out / "pred_vs_measured.png")))
        figs.append(("Error CDF", _error_cdf(result, out / "error_cdf.png")))
    if scored:
        figs.append(("Kendall tau per task", _tau_bars(result, out / "kendall_tau.png")))
    md += ["## Figures", ""]
    for title, path in figs:
        md += [f"### {title}", "", f"![{title}]({path.name})", ""]

    md += ["## Batch size", ""]
    b = j["batch"]
    if "by_batch" not in b:
        md += [b.get("note", "no batch information"), ""]
    else:
        rows = []
        for model, per_b in b["by_batch"].items():
            for size, m in per_b.items():
                rows.append([model, size, str(m["n_tasks"])] + [_fmt(m[k], k == "mape") for k in METRICS])
        md += ["Error by batch size:", "", _md_table(["model", "batch", "tasks", *METRICS], rows), ""]
        if b["friction"]:
            models = sorted({k for curve in b["friction"].values() for e in curve.values() for k in e} - {"measured"})
            rows = []
            for op, curve in b["friction"].items():
                for size, e in curve.items():
                    rows.append([op, size, _fmt(e["measured"])] + [_fmt(e.get(mo)) for mo in models])
            md += ["Friction r(b) = T(b) / (b T(1)) of the best schedule (1 = batching is free of "
                   "friction, < 1 = batching helps), measured and predicted:", "",
                   _md_table(["operator", "batch", "measured", *models], rows), ""]
            figs_path = _friction_plot(b["friction"], out / "friction.png")
            md += [f"![friction]({figs_path.name})", ""]
        else:
            md += [b.get("note", ""), ""]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _scatter(result: EvalResult, path: Path) -> Path:
    import matplotlib.pyplot as plt

    runs = [r for r in result.runs if r.absolute and not r.error]
    tasks = sorted(result.tasks, key=lambda t: -len(t.times))[:_MAX_SCATTER_TASKS]
    cols = min(6, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        true = t.times * 1e3
        for r in runs:
            ax.scatter(true, np.exp(r.preds[t.name]) * 1e3, s=6, alpha=0.6, label=r.name)
        lo, hi = true.min() / 1.5, true.max() * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(t.name[-28:], fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("measured (ms)")
    fig.supylabel("predicted (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _error_cdf(result: EvalResult, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in result.runs:
        if not r.absolute or r.error:
            continue
        err = np.concatenate([np.abs(np.exp(r.preds[t.name]) / t.times - 1) for t in result.tasks])
        err = np.sort(err[np.isfinite(err)])
        ax.plot(100 * err, np.arange(1, err.size + 1) / err.size, label=r.name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("|predicted / measured - 1| (%)")
    ax.set_ylabel("fraction of records")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tau_bars(result: EvalResult, path: Path) -> Path:
    import matplotlib.pyplot as plt

    runs = [r for r in result.runs if not r.error]
    tasks = [t for t in result.tasks if len(t.times) >= RANK_MIN_RECORDS]
    x = np.arange(len(tasks))
    w = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(tasks) * max(1, len(runs)) / 2), 3.8))
    for i, r in enumerate(runs):
        vals = [result.metrics[r.name]["per_task"][t.name]["kendall_tau"] for t in tasks]
        ax.bar(x + i * w, np.nan_to_num(vals), width=w, label=r.name)
    ax.set_xticks(x + w * (len(runs) - 1) / 2)
    ax.set_xticklabels([t.name[-24:] for t in tasks], rotation=70, ha="right", fontsize=6)
    ax.set_ylabel("Kendall tau")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _friction_plot(friction: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (op, curve) in enumerate(sorted(friction.items())[:10]):
        sizes = [int(b) for b in curve]
        line, = ax.plot(sizes, [curve[b]["measured"] for b in curve], "o-", label=op[-30:])
        for model in sorted({k for e in curve.values() for k in e} - {"measured"}):
            ax.plot(sizes, [curve[b].get(model, np.nan) for b in curve], "x--", color=line.get_color(), alpha=0.7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("r(b) = T(b) / (b T(1))  (o measured, x predicted)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""The accuracy report as a table (text and markdown, like the LLM.int8 blog's), JSON, and a PNG plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .runner import BASELINE, PERPLEXITY_TASK

__all__ = ["table_rows", "format_table", "format_outliers", "write_outputs", "plot"]


def _int8_names(report: dict) -> list[str]:
    return [name for name in report["variants"] if name != BASELINE]


def table_rows(report: dict) -> list[dict]:
    """One row per (task, metric): each variant's value, the 16-bit std err, and int8 minus 16-bit."""
    variants = report["variants"]
    base = variants[BASELINE]
    rows = []
    if "perplexity" in base:
        rows.append(_row(PERPLEXITY_TASK, "ppl", {n: v["perplexity"]["value"] for n, v in variants.items()},
                         float("nan"), report))
    for task, metrics in base["tasks"].items():
        for metric, stats in metrics.items():
            if metric in ("loglikelihoods", "acc_bytes"):
                continue
            values = {name: variant["tasks"][task][metric]["value"] for name, variant in variants.items()}
            rows.append(_row(task, metric, values, stats["stderr"], report))
    return rows


def _row(task: str, metric: str, values: dict, stderr: float, report: dict) -> dict:
    base = values[BASELINE]
    return {"task": task, "metric": metric, "values": values, "stderr": stderr,
            "difference": {name: values[name] - base for name in _int8_names(report)}}


def _number(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}" if metric == "ppl" else f"{value:.4f}"


def _signed(value: float, metric: str) -> str:
    return f"{value:+.3f}" if metric == "ppl" else f"{value:+.4f}"


def _table_cells(report: dict) -> tuple[list[str], list[list[str]]]:
    int8 = _int8_names(report)
    header = ["task", "metric", *int8, f"{BASELINE} ({report['baseline_dtype']})", "std err",
              *[f"Δ {name}" for name in int8]]
    body = []
    for row in table_rows(report):
        metric = row["metric"]
        body.append([row["task"], metric, *[_number(row["values"][n], metric) for n in int8],
                     _number(row["values"][BASELINE], metric), _number(row["stderr"], metric),
                     *[_signed(row["difference"][n], metric) for n in int8]])
    return header, body


def format_table(report: dict, markdown: bool = False) -> str:
    """The results table: aligned text, or a markdown table with ``markdown``."""
    header, body = _table_cells(report)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) if i > 1 else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(cells, widths)))
                     for cells in [header, *body])


def format_outliers(report: dict, layers: int = 5, columns: int = 3) -> str:
    """Per int8 variant with a threshold: how many layers and input columns crossed it, and where most."""
    lines = []
    for name, variant in report["variants"].items():
        stats = variant.get("outliers") or {}
        if not stats:
            continue
        touched = {layer: s for layer, s in stats.items() if s["outlier_columns"]}
        most = max((s["most_in_one_call"] for s in stats.values()), default=0)
        over = [layer for layer, s in stats.items() if s["most_in_one_call"] > s["capacity"]]
        lines.append(f"{name}: {len(touched)}/{len(stats)} layers had outlier columns "
                     f"(|x| >= {variant['threshold']:g}); {sum(s['outlier_columns'] for s in stats.values())} "
                     f"distinct (layer, column) pairs; at most {most} in one call"
                     + (f"; over capacity in {len(over)} layers: {', '.join(over[:3])}" if over else ""))
        ranked = sorted(touched.items(), key=lambda kv: -kv[1]["outlier_columns"])[:layers]
        for layer, s in ranked:
            top = ", ".join(f"{c['column']} ({c['fraction_of_calls']:.0%})" for c in s["top_columns"][:columns])
            lines.append(f"  {layer}: {s['outlier_columns']}/{s['in_features']} columns, "
                         f"max {s['most_in_one_call']}/call; most frequent: {top}")
    return "\n".join(lines) if lines else "no int8 variant with a threshold > 0 (no outlier statistics)"


def plot(report: dict, path: Path) -> None:
    """Accuracy per task and metric with ±1 std err bars, and perplexity, one bar per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(report)
    accuracy = [r for r in rows if r["metric"] != "ppl"]
    perplexity = [r for r in rows if r["metric"] == "ppl"]
    names = list(report["variants"])
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [4, 1]})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        positions = [k + (i - (len(names) - 1) / 2) * width for k in range(len(accuracy))]
        axes[0].bar(positions, [r["values"][name] for r in accuracy], width, label=name,
                    yerr=[r["stderr"] for r in accuracy], capsize=2)
        axes[1].bar([i], [r["values"][name] for r in perplexity] or [0], 0.7, label=name)
    axes[0].set_xticks(range(len(accuracy)), [f"{r['task']}\n{r['metric']}" for r in accuracy])
    axes[0].set_ylabel("accuracy (±1 std err of 16-bit)")
    axes[0].legend()
    axes[1].set_xticks(range(len(names)), names, rotation=30)
    axes[1].set_ylabel("WikiText-2 perplexity" if perplexity else "(no perplexity)")
    figure.suptitle(f"{report['model']} on {report['device']}: llmint8 vs {BASELINE}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(report: dict, out_dir: Path) -> dict[str, Path]:
    """``report.json``, ``report.md`` (table + outlier summary) and ``report.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "png": out_dir / "report.png"}
    paths["json"].write_text(json.dumps(report, indent=1, allow_nan=True))
    paths["markdown"].write_text(f"# {report['model']} ({report['device']}, baseline {report['baseline_dtype']})\n\n"
                                 f"{format_table(report, markdown=True)}\n\n```\n{format_outliers(report)}\n```\n")
    plot(report, paths["png"])
    return paths

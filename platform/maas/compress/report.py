"""The compression report: every variant against its parent, as JSON, a Markdown table and a PNG chart.

The chart plots speed (throughput at the largest timed batch size, x) against quality (mean cosine to the
parent, y), one point per variant sized by its artifact size; rejected variants are hollow. Files land in
the run folder: ``compression_report.{json,md,png}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def _row(r: dict, big: int, parent: dict) -> list[str]:
    m = r["metrics"]
    thr = m.get(f"throughput_b{big}", 0.0)
    base = parent["metrics"].get(f"throughput_b{big}", 0.0) or 1.0
    size = m["size_bytes"]
    return [r["method"], r["runtime"], r["ref"], f"{m['cosine_mean']:.4f}", f"{m['cosine_min']:.4f}",
            f"{m['sts_spearman']:.4f}", f"{size / 1e6:.1f}", f"{parent['metrics']['size_bytes'] / size:.2f}x",
            f"{m.get('latency_ms_p50', float('nan')):.2f}", f"{thr:.0f}", f"{thr / base:.2f}x",
            f"{m.get('peak_memory_mb', float('nan')):.0f}",
            "baseline" if r.get("baseline") else "pass" if r["passed"] else "REJECTED"]


HEADERS = ["variant", "runtime", "ref", "cos mean", "cos min", "STS rho", "MB", "smaller", "p50 ms (b1)",
           "sent/s", "faster", "peak MB", "gate"]


def markdown_table(records: list, batch_sizes: list) -> str:
    big = max(batch_sizes)
    parent = records[0]
    headers = [h if h != "sent/s" else f"sent/s (b{big})" for h in HEADERS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_row(r, big, parent)) + " |" for r in records]
    return "\n".join(lines)


def write_compression_report(records: list, folder: Path, batch_sizes: list, title: str = "compression",
                 picked: Optional[str] = None) -> dict:
    """Write compression_report.json/.md/.png into ``folder``; returns {kind: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "compression_report.json", "markdown": folder / "compression_report.md"}
    paths["json"].write_text(json.dumps({"title": title, "picked": picked, "variants": records}, indent=2,
                                        default=str))
    gates = "\n".join(f"- **{r['method']}** ({r['ref']}): {r['gate']}" for r in records[1:] if not r.get("baseline"))
    paths["markdown"].write_text(f"# {title}\n\n{markdown_table(records, batch_sizes)}\n\n"
                                 f"Picked: **{picked}**\n\nGate decisions:\n{gates}\n")
    try:
        paths["png"] = _chart(records, folder / "compression_report.png", max(batch_sizes), title)
    except ImportError:  # matplotlib is optional: the table and JSON carry the same figures
        pass
    return {k: str(v) for k, v in paths.items()}


def _chart(records: list, path: Path, big: int, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    biggest = max(r["metrics"]["size_bytes"] for r in records)
    for r in records:
        m = r["metrics"]
        x, y = m.get(f"throughput_b{big}", 0.0), m["cosine_mean"]
        size = 60 + 900 * m["size_bytes"] / biggest
        ax.scatter([x], [y], s=size, alpha=0.6 if r["passed"] else 1.0,
                   facecolors=None if r["passed"] else "none", edgecolors="black",
                   color=None if not r["passed"] else None)
        ax.annotate(f"{r['method']}\n{m['size_bytes'] / 1e6:.1f} MB", (x, y), fontsize=7,
                    xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel(f"throughput, sentences/s at batch {big} (higher is faster)")
    ax.set_ylabel("mean cosine to the fp32 parent")
    ax.set_title(f"{title}\n(marker area = artifact size; hollow = rejected by the gate)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

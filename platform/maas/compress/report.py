"""The compression report: every variant against its parent, as JSON, a Markdown table and a PNG chart.

The chart plots speed (x: an encoder's throughput at its largest batch, a decoder's tokens/s at its largest
concurrency under vLLM) against quality (y: mean cosine to the parent, or held-out perplexity), one point per
variant sized by its artifact size; rejected variants are hollow. Files land in the run folder:
``compression_report.{json,md,png}``.
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
            f"{m['batch_variance']:.0e}" if "batch_variance" in m else "-",
            "baseline" if r.get("baseline") else "pass" if r["passed"] else "REJECTED"]


HEADERS = ["variant", "runtime", "ref", "cos mean", "cos min", "STS rho", "MB", "smaller", "p50 ms (b1)",
           "sent/s", "faster", "peak MB", "batch Δ", "gate"]


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
    big = max(batch_sizes)
    return _write(records, folder, title, picked, markdown_table(records, batch_sizes),
                  lambda path: _chart(records, path, title, lambda m: m.get(f"throughput_b{big}", 0.0),
                                      lambda m: m["cosine_mean"],
                                      f"throughput, sentences/s at batch {big} (higher is faster)",
                                      "mean cosine to the fp32 parent"))


LLM_HEADERS = ["variant", "ref", "perplexity", "vs parent", "greedy agree", "MB", "smaller"]


def llm_markdown_table(records: list, concurrency: list) -> str:
    """The decoder variants' table: quality and size against the parent (first record), tokens/s per
    concurrency with the speed-up at the largest."""
    parent, top = records[0]["metrics"], max(concurrency)
    headers = LLM_HEADERS + [f"tokens/s c={c}" for c in concurrency] + [f"faster c={top}", "gate"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in records:
        m, size = r["metrics"], r["metrics"].get("size_bytes", 0)
        ppl = m.get("perplexity")
        cells = [r["method"], r["ref"], f"{ppl:.3f}" if ppl else "-",
                 f"{ppl / parent['perplexity'] - 1:+.2%}" if ppl else "-",
                 f"{m['greedy_agreement']:.3f}" if "greedy_agreement" in m else ("1.000" if r is records[0] else "-"),
                 f"{size / 1e6:.1f}" if size else "-", f"{parent['size_bytes'] / size:.2f}x" if size else "-"]
        cells += [f"{m[f'tokens_per_s_c{c}']:.0f}" if f"tokens_per_s_c{c}" in m else "-" for c in concurrency]
        speed = m.get(f"tokens_per_s_c{top}")
        cells += [f"{speed / parent[f'tokens_per_s_c{top}']:.2f}x" if speed else "-",
                  "parent" if r is records[0] else "pass" if r["passed"] else "REJECTED"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_llm_report(records: list, folder: Path, concurrency: list, title: str, picked: Optional[str] = None
                     ) -> dict:
    """compression_report.json/.md/.png of a decoder's variants (tokens/s at the largest concurrency against
    held-out perplexity)."""
    top = max(concurrency)
    measured = [r for r in records if "perplexity" in r["metrics"]]
    return _write(records, folder, title, picked, llm_markdown_table(records, concurrency),
                  lambda path: _chart(measured, path, title, lambda m: m.get(f"tokens_per_s_c{top}", 0.0),
                                      lambda m: m["perplexity"], f"tokens/s with {top} requests in flight (vLLM)",
                                      "held-out perplexity (lower is better)"))


def _write(records: list, folder: Path, title: str, picked: Optional[str], table: str, chart) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "compression_report.json", "markdown": folder / "compression_report.md"}
    paths["json"].write_text(json.dumps({"title": title, "picked": picked, "variants": records}, indent=2,
                                        default=str))
    gates = "\n".join(f"- **{r['method']}** ({r['ref']}): {r['gate']}" for r in records[1:] if not r.get("baseline"))
    paths["markdown"].write_text(f"# {title}\n\n{table}\n\nPicked: **{picked}**\n\nGate decisions:\n{gates}\n")
    try:
        paths["png"] = chart(folder / "compression_report.png")
    except ImportError:  # matplotlib is optional: the table and JSON carry the same figures
        pass
    return {k: str(v) for k, v in paths.items()}


def _chart(records: list, path: Path, title: str, x_of, y_of, x_label: str, y_label: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    biggest = max(r["metrics"]["size_bytes"] for r in records) or 1
    for r in records:
        m = r["metrics"]
        x, y = x_of(m), y_of(m)
        ax.scatter([x], [y], s=60 + 900 * m["size_bytes"] / biggest, alpha=0.6 if r["passed"] else 1.0,
                   facecolors=None if r["passed"] else "none", edgecolors="black")
        ax.annotate(f"{r['method']}\n{m['size_bytes'] / 1e6:.1f} MB", (x, y), fontsize=7,
                    xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(f"{title}\n(marker area = artifact size; hollow = rejected by the gate)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

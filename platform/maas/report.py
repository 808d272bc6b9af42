"""Human-readable summaries printed by the CLI."""

from __future__ import annotations

import json


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def pipeline_summary(result) -> str:
    c = result.data_counts
    s = c.get("splits", {})
    lines = [f"run {result.run_id}: {c['rows_in']} rows read, {c['rows_rejected']} quarantined; "
             f"{s.get('train', 0)} train / {s.get('val', 0)} val / {s.get('test', 0)} test; "
             f"trained on {result.train_device} in {result.train_seconds:.1f} s "
             f"(best val accuracy {result.best_val_accuracy:.4f})", ""]
    rows = []
    for v in result.variants:
        m = v["metrics"]
        rows.append([v["method"], v["runtime"], f"{m['test_accuracy']:.4f}", human_bytes(m["size_bytes"]),
                     f"{m['latency_ms_p50']:.3f} ms", f"{m['latency_ms_p99']:.3f} ms",
                     f"{m['throughput_rows_s_b64']:,.0f}", v["ref"], v["gate"]])
    lines.append(table(["model", "runtime", "test acc", "size", "p50 (1 row)", "p99 (1 row)", "rows/s @64",
                        "registry", "gate"], rows))
    champion = getattr(result, "champion", None)
    lines += ["", promotion_line(result.alias, result.promoted_ref, result.variants)]
    if champion:
        lines.append(f"champion {champion['ref']}: " + (f"{champion['test_accuracy']:.4f} test accuracy on this "
                     "run's rows" if champion["comparable"] else champion["why"]))
    return "\n".join(lines)


def promotion_line(alias: str, promoted_ref: str, variants: list) -> str:
    """Where a run left ``alias``: moved to one of its ``variants``, or at the champion (none held its own)."""
    if any(v["ref"] == promoted_ref for v in variants):
        return f"{alias} -> {promoted_ref}"
    return (f"{alias} stays at {promoted_ref} (the champion): no version of this run held its own against it; "
            "they are published as candidates")


def embeddings_curl_example(url: str, model: str) -> str:
    body = json.dumps({"model": model, "input": ["Ray Serve hosts models behind HTTP.", "A model behind an endpoint."]})
    return f"curl -s -X POST {url}/v1/embeddings -H 'content-type: application/json' -d '{body}'"


def curl_example(url: str, model: str, row: list) -> str:
    if row and isinstance(row[0], str):  # a text classifier takes text
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": row[:1]}]},
                          separators=(",", ":")).replace("'", "'\\''")
        return f"curl -s -X POST {url}/v2/models/{model}/infer -d '{body}'"
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32",
                                   "data": [round(float(v), 4) for v in row]}]}, separators=(",", ":"))
    return f"curl -s -X POST {url}/v2/models/{model}/infer -d '{body}'"


def compare_versions(versions: list) -> str:
    """Versions side by side (``maas models compare``): what each is, its status and why, then every figure
    any of them has (a spread's ``_min``/``_max`` left out), a blank where one has none."""
    def cell(value) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"

    head = [["method"] + [mv.lineage.get("method", "") for mv in versions],
            ["runtime"] + [mv.runtime for mv in versions],
            ["status"] + [mv.status for mv in versions],
            ["aliases"] + [",".join(mv.aliases) or "-" for mv in versions],
            ["parent"] + [mv.lineage.get("parent") or "-" for mv in versions],
            ["size"] + [human_bytes(mv.size_bytes) for mv in versions]]
    keys = sorted({k for mv in versions for k, v in mv.metrics.items()
                   if isinstance(v, (int, float)) and not k.endswith(("_min", "_max"))})
    rows = head + [[k] + [cell(mv.metrics[k]) if k in mv.metrics else "" for mv in versions] for k in keys]
    why = [f"{mv.ref}: {mv.description}" for mv in versions if mv.description]
    return table(["", *(mv.ref for mv in versions)], rows) + ("\n\n" + "\n".join(why) if why else "")

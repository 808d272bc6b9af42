"""Read the cluster's Prometheus metrics from inside it: every alive node's metrics endpoint (Ray's exporter,
where Serve's and maas's metrics land: tokens, latencies, requests per model and version), the samples whose
name starts with ``--prefix``; one result line (``maas.Client.metrics`` submits this and parses it)."""

from __future__ import annotations

import argparse

import jobs  # noqa: F401  (import path bootstrap)
from jobs._common import emit


def node_samples(url: str, prefix: str) -> list[dict]:
    """{name, labels, value} of every sample at ``url`` whose name, without the ``ray_`` Ray's exporter puts
    before application metrics, starts with ``prefix``."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=10).text
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name.removeprefix("ray_")  # Ray's exporter prefixes application metrics with ray_
            if name.startswith(prefix):
                labels = {k: v for k, v in s.labels.items() if not k.startswith("otel_")}
                out.append({"name": name, "labels": labels, "value": s.value})
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.metrics", description=__doc__)
    p.add_argument("--prefix", default="maas_", help="metric name prefix (default: maas_)")
    args = p.parse_args()
    import ray

    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    samples, unreachable = [], []
    for node in ray.nodes():
        if not node.get("Alive") or not node.get("MetricsExportPort"):
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        try:
            samples += [{**s, "node": node["NodeID"]} for s in node_samples(url, args.prefix)]
        except OSError as exc:
            unreachable.append(f"{url}: {exc}")
    emit("metrics", "succeeded", samples=samples, unreachable=unreachable)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

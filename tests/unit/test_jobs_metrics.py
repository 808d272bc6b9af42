"""``jobs.metrics`` (what ``maas.Client.metrics`` runs inside the cluster) reads a node's Prometheus text over
HTTP: application metrics under the ``ray_`` prefix Ray's exporter gives them, by the prefix the user knows."""

from __future__ import annotations

import http.server
import threading

EXPORTED = """# HELP ray_maas_llm_tokens_total Prompt and completion tokens.
# TYPE ray_maas_llm_tokens_total counter
ray_maas_llm_tokens_total{application="counter",kind="completion",model="counter",otel_scope_name="x",version="1"} 50.0
ray_maas_llm_tokens_total{application="counter",kind="prompt",model="counter",otel_scope_name="x",version="1"} 25.0
# HELP ray_serve_num_http_requests_total Requests.
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{route="/"} 3.0
"""


def test_node_samples_strips_rays_prefix_and_filters_by_the_users_one():
    from jobs.metrics import node_samples

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = EXPORTED.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        samples = node_samples(url, "maas_llm_tokens_total")
        assert samples == [
            {"name": "maas_llm_tokens_total", "value": 50.0,
             "labels": {"application": "counter", "kind": "completion", "model": "counter", "version": "1"}},
            {"name": "maas_llm_tokens_total", "value": 25.0,
             "labels": {"application": "counter", "kind": "prompt", "model": "counter", "version": "1"}}]
        assert [s["name"] for s in node_samples(url, "serve_")] == ["serve_num_http_requests_total"]
    finally:
        server.shutdown()

"""The route table of a maas application, without Ray or HTTP: every path, the 405 allow lists, the 404s."""

import pytest

from maas.serve.routes import ROUTES, Router

R = Router()


@pytest.mark.parametrize("method,path,handler,params", [
    ("POST", "/v1/completions", "completions", {}),
    ("POST", "/v1/chat/completions", "chat_completions", {}),
    ("POST", "/v1/embeddings", "embeddings", {}),
    ("GET", "/v1/models", "openai_models", {}),
    ("GET", "/v1/models/minilm", "openai_model", {"name": "minilm"}),
    ("GET", "/v2", "server_metadata", {}),
    ("GET", "/v2/health/live", "live", {}),
    ("GET", "/v2/health/ready", "ready", {}),
    ("GET", "/v2/models", "models", {}),
    ("GET", "/v2/models/digits", "metadata", {"name": "digits"}),
    ("GET", "/v2/models/digits/ready", "model_ready", {"name": "digits"}),
    ("GET", "/v2/models/digits/versions/3", "metadata", {"name": "digits", "version": "3"}),
    ("GET", "/v2/models/digits/versions/3/ready", "model_ready", {"name": "digits", "version": "3"}),
    ("POST", "/v2/models/digits/infer", "infer", {"name": "digits"}),
    ("POST", "/v2/models/digits/versions/x/infer", "infer", {"name": "digits", "version": "x"}),
    ("GET", "/v2/models/ready", "metadata", {"name": "ready"}),        # a model may be called "ready"
    ("GET", "//v2//models/digits/", "metadata", {"name": "digits"}),  # empty segments do not count
])
def test_every_route_matches_with_its_parameters(method, path, handler, params):
    m = R.match(method, path)
    assert (m.handler, m.params, m.allow) == (handler, params, (method,))
    assert m.protocol == ("openai" if path.startswith("/v1") else "oip")


@pytest.mark.parametrize("method,path,allow,protocol", [
    ("GET", "/v1/completions", ("POST",), "openai"),        # the OpenAI error shape for /v1 mistakes
    ("DELETE", "/v1/embeddings", ("POST",), "openai"),
    ("POST", "/v1/models", ("GET",), "openai"),
    ("POST", "/v2/models/digits", ("GET",), "oip"),
    ("GET", "/v2/models/digits/infer", ("POST",), "oip"),
    ("PUT", "/v2/models/digits/versions/2/infer", ("POST",), "oip"),
    ("POST", "/v2/health/live", ("GET",), "oip"),
    ("HEAD", "/v2", ("GET",), "oip"),
])
def test_a_known_path_under_another_method_yields_its_allow_list(method, path, allow, protocol):
    m = R.match(method, path)
    assert m.handler is None and m.allow == allow and m.protocol == protocol


@pytest.mark.parametrize("path", ["/", "/v1/chat", "/v2/models/digits/versions", "/v2/health",
                                  "/v2/models/digits/versions/1/infer/extra", "/v3/models", "/metrics"])
def test_unknown_paths_match_nothing_under_any_method(path):
    for method in ("GET", "POST", "PUT"):
        m = R.match(method, path)
        assert m.handler is None and m.allow == () and m.protocol == "oip"


def test_the_table_has_one_handler_per_method_and_pattern():
    keys = [(method, pattern) for method, pattern, _, _ in ROUTES]
    assert len(keys) == len(set(keys))
    assert {protocol for _, _, _, protocol in ROUTES} == {"oip", "openai", "maas"}


def test_the_openapi_document_describes_every_route_of_the_table():
    import json

    from maas.serve.openapi import openapi_document

    doc = json.loads(json.dumps(openapi_document()))  # plain JSON
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] == "maas"
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert described == {(method, pattern) for method, pattern, _, _ in ROUTES}
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for method, pattern, handler, protocol in ROUTES:
        op = doc["paths"][pattern][method.lower()]
        params = [p[1:-1] for p in pattern.split("/") if p.startswith("{")]
        assert [p["name"] for p in op.get("parameters", [])] == params
        assert ("requestBody" in op) == (method in ("POST", "PUT"))
        ref = op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("OpenAIError" if protocol == "openai" else "OIPError")
        for ref in [c["schema"].get("$ref") for c in op.get("requestBody", {}).get("content", {}).values()]:
            assert ref is None or ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    assert doc["paths"]["/v2/health/ready"]["get"]["security"] == [] and doc["security"] == [{"bearer": []}]
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert set(infer) == {"application/json", "application/octet-stream"}

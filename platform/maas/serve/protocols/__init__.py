"""The protocols a maas application speaks, one package each: ``oip`` (Open Inference Protocol v2 over REST,
its binary tensor extension, and gRPC) and ``openai`` (models, completions, chat, embeddings, tokens).

Each package parses its requests into the shared runtimes' inputs and renders their answers; routes come from
``maas.serve.routes``, the error shapes from ``maas.serve.errors``, API keys from ``maas.serve.tenancy``.
A new protocol is a new package here."""

"""OpenAI's API: ``handlers`` (``/v1/models``, ``/v1/embeddings``, the API-key rule, and the generation routes'
entry) and ``generation`` (completions, chat, ``/tokenize`` and ``/detokenize`` answered by the replica's vLLM
engines, streamed as vLLM writes them)."""

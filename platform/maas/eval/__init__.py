"""Evaluations: lm-evaluation-harness tasks (``maas.eval.tasks``); the champion/challenger decision lives with
the pipelines that take it (``maas.pipelines.champion``)."""

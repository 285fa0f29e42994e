"""Evaluation: perplexity, sequential-task retention, long-context recall, and an lm-evaluation-harness adapter.

``hope eval perplexity|retention|recall|lm-eval`` (``hope.evaluation.cli``) wraps the functions here.
"""

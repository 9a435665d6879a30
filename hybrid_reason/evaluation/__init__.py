"""Evaluation: scoring, running trained models, LLM baselines, suites and reports."""

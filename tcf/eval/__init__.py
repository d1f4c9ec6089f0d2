"""Metrics and full-ranking evaluation, shared by trained recommenders and zero-shot runs."""

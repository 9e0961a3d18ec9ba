"""Orchestration of a run: build its parts, profile, train step by step, evaluate, checkpoint, report."""

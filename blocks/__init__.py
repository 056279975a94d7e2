"""Prefect blocks: saved configuration that decides where the benchmark's data lives."""

"""Prefect tasks: thin wrappers that give each core step a content-derived cache key, logging,
progress and artifacts, and pass small manifests (never arrays) between steps."""

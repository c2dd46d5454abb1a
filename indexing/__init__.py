"""Nominal's domain core: backbones, the vector store, scoring, calibration, evaluation.

Nothing in this package imports FastAPI, Celery or reads the environment; the
edges (`app/`, `workers/`) pass configuration in as arguments.
"""

"""Celery workers: thin tasks over `indexing/`, and the runner that sends jobs to them."""

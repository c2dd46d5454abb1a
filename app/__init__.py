"""Nominal's edges for people and programs: the HTTP API and the `nominal` command line."""

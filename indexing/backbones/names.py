"""Backbone names shared by the registry and the loaders (no heavy imports)."""

OPENCLIP_PATTERN = "openclip:<model>:<pretrained>"

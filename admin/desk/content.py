"""Desk pages: content (being built)."""

HANDLERS: list = []

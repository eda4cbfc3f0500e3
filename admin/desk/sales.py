"""Desk pages: sales (being built)."""

HANDLERS: list = []

"""Desk pages: scoring (being built)."""

HANDLERS: list = []

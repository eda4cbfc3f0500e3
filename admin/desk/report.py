"""Desk pages: report (being built)."""

HANDLERS: list = []

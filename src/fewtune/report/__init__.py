"""Rendering results: the terminal table (and, later, Markdown and HTML reports)."""

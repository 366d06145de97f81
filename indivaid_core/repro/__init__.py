"""Reproduction machinery: depends on the core, never the reverse."""

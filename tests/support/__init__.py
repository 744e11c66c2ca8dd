"""Servers and helpers only the tests use."""

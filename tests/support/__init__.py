"""Shared pytest fixtures: real registries, token issuer, fault proxy, image builders.

The reusable code lives in the top-level `registry_testkit` package (also used by bench/ and
the demo); these modules only wrap it in fixtures. Loaded by tests/conftest.py.
"""

"""Backends: one module each, all behind the `Backend` protocol in base.py."""

"""Variants: how a `--candidates` text becomes a VariantSpec (spec.py) and, one module per
quantization method, what each method needs (registry.py lists them)."""

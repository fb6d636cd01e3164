"""qeval: is this quantized model safe to release instead of the full-precision one?"""

__version__ = "0.1.0"

"""The vLLM engine (registered as `vllm` in qeval/engines/registry.py): a worker in vLLM's own
environment, driven over a versioned pipe protocol that carries numbers only."""

from qeval.engines.vllm.backend import ENGINE, VLLMBackend, VLLMFactory, make_factory

__all__ = ["ENGINE", "VLLMBackend", "VLLMFactory", "make_factory"]

"""Polyprune: prune and inspect multilingual LLMs (Qt-free core)."""
__version__ = "0.1.0"

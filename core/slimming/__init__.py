"""Slimming: a smaller, faster model for the languages you need (vocabulary, blocks, dtype, GGUF)."""

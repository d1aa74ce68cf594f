"""Built-in data files (demonstration pairs, language names)."""

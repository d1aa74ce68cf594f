"""Polyprune desktop application (PySide6 + pyqtgraph)."""

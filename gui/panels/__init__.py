"""The six panels of the main window, in workflow order."""

"""The seven panels of the main window, in workflow order."""

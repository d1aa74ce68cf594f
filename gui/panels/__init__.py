"""The panels of the main window, one file each (listed in workflow order in ``main_window.PANELS``)."""

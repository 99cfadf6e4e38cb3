"""Widgets. Views show state and emit requests as signals; they never run model work themselves."""

"""Data files shipped with jann (see README.md in this folder)."""

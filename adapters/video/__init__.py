"""video adapter (in progress)."""

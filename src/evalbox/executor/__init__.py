"""The event loop that runs many sandboxes at once."""

"""Tools people run; nothing in the node imports this package."""

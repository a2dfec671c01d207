"""Developer and deployment helpers."""

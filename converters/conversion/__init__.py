"""Turning one checkpoint into another: `convert(src, dest, recipe)` and the one recipe table."""

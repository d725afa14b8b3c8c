"""runtime package (see DESIGN.md)."""

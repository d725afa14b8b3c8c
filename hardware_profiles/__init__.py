"""hardware_profiles package (see DESIGN.md)."""

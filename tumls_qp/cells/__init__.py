"""The cell level on representative patches: nuclei and their features."""

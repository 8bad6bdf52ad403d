"""Pages people open: every table rendered sortable and filterable, and the study explorer (no torch here)."""

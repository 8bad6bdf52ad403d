"""The config: its schema (``schema.yaml``, every default), its parsing, and the typed settings."""

"""Device model schema and validation, twin documents (pure: no I/O)."""

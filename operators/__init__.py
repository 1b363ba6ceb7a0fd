"""gristmill operators: one module per capability; each registers itself by name."""

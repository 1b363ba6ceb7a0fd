"""gristmill engine: recipe schema and validation, DAG, Ray executor, I/O, stats, CLI."""

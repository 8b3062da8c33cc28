"""The `netlab` command: one module per command group; `netlab.cli.main` parses and dispatches."""

"""`python -m netlab`: the same entry point as the `netlab` command."""

from netlab.cli.main import main

raise SystemExit(main())

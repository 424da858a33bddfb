"""`python -m attnscope ...` is the `attnscope` command."""

from attnscope.cli import main

raise SystemExit(main())

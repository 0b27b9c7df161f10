"""Allow ``python -m callpipe``."""

from callpipe.cli import main

raise SystemExit(main())

"""``python -m jobstream``: the ``jobstream`` command."""

from jobstream.streams.cli import main

raise SystemExit(main())

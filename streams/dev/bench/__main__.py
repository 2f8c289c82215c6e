"""``python -m jobstream.streams.dev.bench``: run the benchmark."""

from jobstream.streams.dev.bench.run import main

raise SystemExit(main())

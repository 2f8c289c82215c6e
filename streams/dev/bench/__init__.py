"""The end-to-end benchmark: ``python -m jobstream.streams.dev.bench``."""

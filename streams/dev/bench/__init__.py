"""The end-to-end benchmark: ``python -m streams.dev.bench``."""

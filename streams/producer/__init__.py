"""The producing side: the JobClient library, the HTTP API and its standalone server."""

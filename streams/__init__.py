"""Settings, topics, metrics, observability and the plumbing (kafka/, pg/) under the roles:
worker/, producer/, dlq/, ops/, console/, and dev/ for development only.
"""

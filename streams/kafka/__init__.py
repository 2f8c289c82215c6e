"""Kafka plumbing: the publisher, the consumed record, topic administration, client security."""

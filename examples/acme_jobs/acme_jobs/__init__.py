"""Acme's background jobs on jobstream; the job types are in :mod:`acme_jobs.jobs`."""

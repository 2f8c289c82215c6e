"""Job handlers: one module per job type; each exposes ``job_type(settings) -> JobType``."""

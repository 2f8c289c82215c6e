"""PostgreSQL: the pool, all DDL and migrations, job rows and claims, batching, the rate limiter,
retention.
"""

"""jobstream: background jobs for other applications on Kafka and PostgreSQL.

Everything jobstream installs lives under this one name; ``agents``, ``models`` and ``streams``
are its sub-packages (``jobstream.agents`` ...), never top-level names of their own.
"""

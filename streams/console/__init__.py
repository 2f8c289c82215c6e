"""The operator console: jobs, dead letters, replay, live throughput and lag in a browser.

Server-rendered pages (aiohttp + Jinja2) with a small hand-written script for live updates;
every asset ships in this package, nothing is fetched at run time.
"""

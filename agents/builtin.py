"""``jobstream.builtin``: the job types jobstream ships, as an app of their own.

A worker with no app configured runs this one (the demo, the tests and the benchmark use it); a
team's app includes it or not (``JobApp("acme", include=[builtin])``).

- ``echo`` returns its payload; ``sleep`` sleeps and can fail on purpose (tests and demos).
- ``llm.chat`` is one OpenRouter chat completion under the shared ``openrouter`` rate limit.
- ``http.webhook`` POSTs a body to a public http(s) URL.
"""

from __future__ import annotations

from jobstream.agents.app import JobApp
from jobstream.agents.handlers import llm, webhook
from jobstream.agents.handlers.basic import echo, sleep

builtin: JobApp[None] = JobApp("jobstream.builtin")
builtin.rate_limit("openrouter", rate=50, per=1.0)
builtin.job("echo")(echo)
builtin.job("sleep")(sleep)
# a bug in these handlers will not pass by itself: dead-letter it instead of retrying
builtin.job(
    "llm.chat", timeout_s=llm.JOB_TIMEOUT_S, rate_limit="openrouter", retry_unexpected=False
)(llm.handle_chat)
builtin.job("http.webhook", timeout_s=webhook.JOB_TIMEOUT_S, retry_unexpected=False)(
    webhook.handle_webhook
)

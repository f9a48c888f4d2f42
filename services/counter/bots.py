"""Known crawlers and headless browsers, by User-Agent, from the crawler-user-agents list."""

from __future__ import annotations

from functools import lru_cache

import crawleruseragents

from services.counter.visitors import USER_AGENT_MAX_CHARS

# Checking one agent against the whole list takes about 0.3 ms; real traffic repeats a few
# thousand agents, so the answers are cached.
CACHE_AGENTS = 8192


@lru_cache(maxsize=CACHE_AGENTS)
def _is_bot(user_agent: str) -> bool:
    return bool(crawleruseragents.is_crawler(user_agent))


def is_bot(user_agent: str | None) -> bool:
    """True for a known crawler, scraper, script client or headless agent."""
    if not user_agent:
        return False  # not on the list; rate limits and dedupe still apply
    return _is_bot(user_agent[:USER_AGENT_MAX_CHARS])

"""robots.txt rules: what an origin allows our agent to fetch, and how slowly.

robots.txt follows RFC 9309: fetched once per origin (and kept in the frontier across runs),
a 4xx means "no rules", a 5xx or an unreachable server means "assume everything is
disallowed" for this run. The stdlib parser decides Allow/Disallow (it ignores `*`/`$`
wildcards in paths); `Crawl-delay` is read here because the stdlib keeps only whole numbers.
"""

from __future__ import annotations

import contextlib
import urllib.robotparser
from dataclasses import dataclass, field

ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least 500 KiB, ignore the rest


def agent_token(user_agent: str) -> str:
    """The product token robots.txt groups are matched against ("lmforge-crawler/0.1 (...)" -> "lmforge-crawler")."""
    return user_agent.split("/", 1)[0].split(" ", 1)[0].strip().lower() or "*"


@dataclass
class RobotsRules:
    """The outcome of fetching one origin's robots.txt.

    `status` is the HTTP status of the robots.txt response (0 when it could not be fetched at
    all); `reason` is set when the whole origin is off limits, and becomes the drop reason of
    every page skipped because of it.
    """

    status: int
    body: str = ""
    user_agent: str = "*"
    reason: str | None = None
    crawl_delay: float | None = None
    _parser: urllib.robotparser.RobotFileParser | None = field(default=None, repr=False)

    @classmethod
    def from_response(cls, status: int, body: str, user_agent: str) -> RobotsRules:
        if 200 <= status < 300:
            parser = urllib.robotparser.RobotFileParser()
            lines = body.splitlines()
            parser.parse(lines)
            return cls(status, body, user_agent, None, _crawl_delay(lines, agent_token(user_agent)), parser)
        if 400 <= status < 500:
            return cls(status, "", user_agent)
        return cls(status, "", user_agent, reason="robots_unavailable")

    @property
    def cacheable(self) -> bool:
        """Only definite answers are kept across runs; an outage is retried by the next run."""
        return self.reason is None and self.status != 0

    def allowed(self, url: str) -> bool:
        if self.reason is not None:
            return False
        return self._parser is None or self._parser.can_fetch(self.user_agent, url)


def _crawl_delay(lines: list[str], token: str) -> float | None:
    """Crawl-delay of the first group naming our agent, else of the `*` group."""
    groups: list[tuple[list[str], float | None]] = []
    agents: list[str] = []
    delay: float | None = None
    in_rules = False
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        if key.lower() == "user-agent":
            if in_rules:
                groups.append((agents, delay))
                agents, delay, in_rules = [], None, False
            agents.append(value.lower())
        elif agents:
            in_rules = True
            if key.lower() == "crawl-delay":
                with contextlib.suppress(ValueError):
                    delay = max(0.0, float(value))
    if agents:
        groups.append((agents, delay))
    for names, value in groups:
        if any(name != "*" and name in token for name in names):
            return value
    for names, value in groups:
        if "*" in names:
            return value
    return None

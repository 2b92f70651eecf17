"""Which delivery hosts outputs may be fetched from, and the limits on each file (`FetchPolicy`).

An entry is an exact name, `*.suffix`, an IP literal, or any of them with `:port` for that port only.
Entries are parsed once, when the policy is made, so a malformed one fails at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ai_pipeline.settings import Settings
from ai_pipeline.storage.addresses import ip_literal


@dataclass(frozen=True)
class AllowedHost:
    """One parsed allowlist entry."""

    host: str  # lower case, no trailing dot; for wildcards the suffix without "*."
    port: int | None  # None: any port
    wildcard: bool

    @classmethod
    def parse(cls, entry: str) -> AllowedHost:
        """Parse `name`, `*.suffix`, `host:port`, `1.2.3.4`, `::1` or `[::1]:8787`."""
        text = entry.strip().lower()
        wildcard = text.startswith("*.")
        if wildcard:
            text = text[2:]
        host, port = text, None
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                port = _parse_port(rest.removeprefix(":"), entry)
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = _parse_port(port_text, entry)
        host = host.rstrip(".")
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        literal = ip_literal(host)
        if literal is not None:
            host = str(literal)
        if not host:
            raise ValueError(f"empty host in allowlist entry {entry!r}")
        return cls(host=host, port=port, wildcard=wildcard)

    @property
    def trusts_private_addresses(self) -> bool:
        """An operator who lists an IP literal or `localhost` means that very machine: let it through."""
        return not self.wildcard and (self.host == "localhost" or ip_literal(self.host) is not None)

    def matches(self, host: str, port: int) -> bool:
        """Whether a URL's (normalised) host and effective port fall under this entry."""
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


@dataclass(frozen=True)
class FetchPolicy:
    """What may be fetched: allowed hosts, the size cap and the overall deadline per file."""

    allowed_hosts: tuple[str, ...]
    max_bytes: int
    timeout_seconds: float
    max_redirects: int = 3
    allowlist: tuple[AllowedHost, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Parsed once, so a malformed entry fails at start-up rather than on the first download.
        object.__setattr__(self, "allowlist", tuple(AllowedHost.parse(e) for e in self.allowed_hosts))

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        """The policy configured by `AI_PIPELINE_OUTPUT_HOSTS`, `…_MAX_BYTES`, `…_TIMEOUT_SECONDS`."""
        return cls(
            allowed_hosts=settings.output_hosts,
            max_bytes=settings.output_max_bytes,
            timeout_seconds=settings.output_timeout_seconds,
        )


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port in allowlist entry {entry!r}")
    return int(text)

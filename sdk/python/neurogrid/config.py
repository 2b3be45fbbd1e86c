# A client's settings: where the server is, the key, timeouts and the retry policy.
# Arguments win over the environment (NEUROGRID_BASE_URL, NEUROGRID_API_KEY), the
# environment over the defaults (the local server of `neurogrid serve`).
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urljoin, urlsplit

from .retry import RetryPolicy

VERSION = "0.1.0"
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0  # seconds for one request (connect, read, write)
DEFAULT_WAIT = 300.0  # seconds get_response() waits for a result unless told otherwise
BASE_URL_ENV = "NEUROGRID_BASE_URL"
API_KEY_ENV = "NEUROGRID_API_KEY"


@dataclass(frozen=True)
class ClientConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL}, "
                             f"not {self.base_url!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout}")

    @classmethod
    def resolve(cls, base_url: str | None = None, api_key: str | None = None,
                timeout: float = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
                environ: Mapping[str, str] | None = None) -> ClientConfig:
        env = os.environ if environ is None else environ
        return cls(
            base_url=(base_url or env.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/"),
            api_key=api_key if api_key is not None else (env.get(API_KEY_ENV) or None),
            timeout=timeout,
            retry=retry if retry is not None else RetryPolicy(),
        )

    def url(self, path: str) -> str:
        """An absolute URL for an API path ("/api/tasks") or a URL the server gave."""
        return urljoin(self.base_url + "/", path)

    def same_origin(self, url: str) -> bool:
        mine, theirs = urlsplit(self.base_url), urlsplit(url)
        return (mine.scheme, mine.netloc) == (theirs.scheme, theirs.netloc)

    def headers(self, url: str) -> dict[str, str]:
        """Headers for every request; the key goes only to the server's own origin,
        never to another host a result URL may point to."""
        headers = {"Accept": "application/json", "User-Agent": f"neurogrid-python/{VERSION}"}
        if self.api_key and self.same_origin(url):
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "ClientConfig", "DEFAULT_BASE_URL", "DEFAULT_TIMEOUT",
           "DEFAULT_WAIT", "VERSION"]

# The API's own error: a status, the reference's `error` title and `details`, and
# headers to send with it. Raised anywhere below a route; each blueprint's error
# handler renders it in its routes' shape (routes.py: the reference's error
# object; openai_compat.py: OpenAI's).
from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    def __init__(self, status: int, error: str, details: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(details)
        self.status, self.error, self.details = status, error, details
        self.headers = headers or {}

"""NeuroGrid's Python SDK: `NeuroGrid` (sync) and `AsyncNeuroGrid` clients of the
NeuroGrid API, their task handles, typed errors and the API's JSON shapes.

    from neurogrid import NeuroGrid
    client = NeuroGrid()
    result = client.submit_task(prompt="Hello world", model="llama2")
    print(result.get_response())
"""
from __future__ import annotations

from .async_client import AsyncNeuroGrid, AsyncTask
from .client import NeuroGrid, Task
from .config import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, VERSION, ClientConfig
from .errors import (
    APIError, AuthenticationError, BadRequestError, ConflictError, NeuroGridConnectionError,
    NeuroGridError, NeuroGridTimeoutError, NotFoundError, RateLimitError, ServerError,
    TaskFailedError,
)
from .handle import Cost
from .protocol import IDEMPOTENCY_HEADER
from .retry import RetryPolicy
from .types import (
    BetaSignup, CancelResult, Health, ModelList, NetworkStatus, StreamEvent, Submission,
    TaskPage, TaskView,
)

__version__ = VERSION

__all__ = [
    "APIError", "API_KEY_ENV", "AsyncNeuroGrid", "AsyncTask", "AuthenticationError",
    "BASE_URL_ENV", "BadRequestError", "BetaSignup", "CancelResult", "ClientConfig",
    "ConflictError", "Cost", "DEFAULT_BASE_URL", "Health", "IDEMPOTENCY_HEADER", "ModelList",
    "NetworkStatus", "NeuroGrid", "NeuroGridConnectionError", "NeuroGridError",
    "NeuroGridTimeoutError", "NotFoundError", "RateLimitError", "RetryPolicy", "ServerError",
    "StreamEvent", "Submission", "Task", "TaskFailedError", "TaskPage", "TaskView",
    "__version__",
]

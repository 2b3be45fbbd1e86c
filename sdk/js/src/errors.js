// The SDK's errors. Every error the API answers carries the reference's error
// object, {"success": false, "error", "details", "timestamp"}; the error keeps it
// (`body`) and its parts (`status`, `error`, `details`, `headers`).
//
// Rules (as in the Python SDK):
// - One class per answered status the API documents, chosen from STATUS_ERRORS by
//   status (data, not an if-chain); any other 4xx is an APIError, any 5xx a
//   ServerError.
// - Failing to talk to the server at all is NeuroGridConnectionError; a wait
//   longer than allowed is NeuroGridTimeoutError; a task that ended without a
//   result is TaskFailedError, carrying the task as last seen.

export class NeuroGridError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class APIError extends NeuroGridError {
  constructor(status, error, details, body = {}, headers = {}) {
    super(`${status} ${error}: ${details}`);
    this.status = status;
    this.error = error;
    this.details = details;
    this.body = body;
    this.headers = headers;
  }

  get timestamp() {
    return typeof this.body.timestamp === 'string' ? this.body.timestamp : null;
  }
}

export class BadRequestError extends APIError {}
export class AuthenticationError extends APIError {}
export class NotFoundError extends APIError {}
export class ConflictError extends APIError {}
export class ServerError extends APIError {}

export class RateLimitError extends APIError {
  get retryAfter() {
    return this.headers['retry-after'] ?? null;
  }
}

export class NeuroGridConnectionError extends NeuroGridError {}
export class NeuroGridTimeoutError extends NeuroGridError {}

export class TaskFailedError extends NeuroGridError {
  constructor(task) {
    super(`task ${task.id} ended ${task.status}: ${task.error || 'no reason given'}`);
    this.task = task;
    this.status = task.status;
  }
}

export const STATUS_ERRORS = Object.freeze({
  400: BadRequestError,
  401: AuthenticationError,
  404: NotFoundError,
  409: ConflictError,
  429: RateLimitError,
});

/** The typed error for an answer with an error status (headers: lowercase names). */
export function errorFromReply(status, headers, text) {
  let parsed = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = null;
  }
  let error, details;
  if (parsed && typeof parsed === 'object' && typeof parsed.details === 'string') {
    error = String(parsed.error ?? '');
    details = parsed.details;
  } else {
    parsed = {};
    error = `HTTP ${status}`;
    details = text.slice(0, 200);
  }
  const Kind = STATUS_ERRORS[status] ?? (status >= 500 ? ServerError : APIError);
  return new Kind(status, error, details, parsed, headers);
}

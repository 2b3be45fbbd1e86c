// When to try a request again, and after how long: pure decisions (the Python
// SDK's retry.py, in milliseconds). Time and randomness come in as arguments.
//
// Rules:
// - At most `maxRetries` retries after the first attempt.
// - A transport failure is retried with exponential backoff, base * 2**attempt,
//   capped at backoffMax, with equal jitter (half fixed, half random).
// - 429 and 503 wait for Retry-After (delta-seconds or an HTTP date), or the
//   backoff when there is none; a Retry-After over maxRetryAfter is not waited
//   for: the error is thrown at once. 502 and 504 get the backoff. Every other
//   status is final.
// - Every request is safe to retry: a submit keeps one Idempotency-Key over all
//   its attempts.

const RETRY_AFTER_STATUSES = new Set([429, 503]);
const BACKOFF_STATUSES = new Set([502, 504]);

export const DEFAULT_RETRY = Object.freeze({
  maxRetries: 3,
  backoffBase: 500,
  backoffMax: 8000,
  maxRetryAfter: 60000,
});

export class RetryPolicy {
  constructor(options = {}) {
    const merged = { ...DEFAULT_RETRY, ...options };
    if (!Number.isInteger(merged.maxRetries) || merged.maxRetries < 0) {
      throw new RangeError(`retry.maxRetries must be an integer of 0 or more, not ${merged.maxRetries}`);
    }
    if (!(merged.backoffBase > 0 && merged.backoffBase <= merged.backoffMax)) {
      throw new RangeError('retry.backoffBase must be positive and at most retry.backoffMax');
    }
    if (!(merged.maxRetryAfter >= 0)) {
      throw new RangeError(`retry.maxRetryAfter must be 0 or more, not ${merged.maxRetryAfter}`);
    }
    Object.assign(this, merged);
    Object.freeze(this);
  }

  backoff(attempt, jitter) {
    const ceiling = Math.min(this.backoffMax, this.backoffBase * 2 ** attempt);
    return ceiling / 2 + (ceiling / 2) * jitter;
  }

  /** After a transport failure: milliseconds to wait, or null to give up. */
  afterFailure(attempt, jitter) {
    return attempt < this.maxRetries ? this.backoff(attempt, jitter) : null;
  }

  /** After an answer: milliseconds to wait, or null when the answer is final. */
  afterStatus(attempt, status, headers, wallNow, jitter) {
    if (attempt >= this.maxRetries) return null;
    if (RETRY_AFTER_STATUSES.has(status)) {
      const wait = retryAfterMs(headers['retry-after'], wallNow);
      if (wait === null) return this.backoff(attempt, jitter);
      return wait <= this.maxRetryAfter ? wait : null;
    }
    if (BACKOFF_STATUSES.has(status)) return this.backoff(attempt, jitter);
    return null;
  }
}

/** A Retry-After header as milliseconds from wallNow (ms since the epoch). */
export function retryAfterMs(value, wallNow) {
  if (value === undefined || value === null) return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const when = Date.parse(text);
  return Number.isNaN(when) ? null : Math.max(0, when - wallNow);
}

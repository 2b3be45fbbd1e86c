// neurogrid-js: the NeuroGrid API client for Node 20+ and browsers.
//   import { NeuroGrid } from 'neurogrid-js';
//   const client = new NeuroGrid();
//   const result = await client.submitTask({ prompt: 'Hello world', model: 'llama2' });
//   console.log(await result.getResponse());
export { NeuroGrid, Task, STREAM_READ_TIMEOUT } from './client.js';
export {
  APIError, AuthenticationError, BadRequestError, ConflictError, NeuroGridConnectionError, NeuroGridError,
  NeuroGridTimeoutError, NotFoundError, RateLimitError, STATUS_ERRORS, ServerError, TaskFailedError,
} from './errors.js';
export {
  API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, DEFAULT_TIMEOUT, DEFAULT_WAIT, IDEMPOTENCY_HEADER, TASK_FIELDS,
  VERSION, taskBody,
} from './protocol.js';
export { DEFAULT_RETRY, RetryPolicy, retryAfterMs } from './retry.js';
export { EventParser, TextAssembler, tokensOf } from './sse.js';

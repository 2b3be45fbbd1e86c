// The client: sends protocol.js's requests with fetch, retries them as
// retry.js decides, reads answers into the reference's JSON shapes (or typed
// errors), and follows a task's event stream across dropped connections.
//
// Theory of operation of waiting: a task handle reads GET /api/tasks/<id>/stream
// until its `done` event. A dropped stream is reopened (the server sends the
// status again, the text so far in one replayed progress event, and the events
// from then on; an ended task its `done` at once), with backoff, at most
// retry.maxRetries times in a row without an event between; sse.js's
// TextAssembler keeps the streamed pieces adding up to the result.

import {
  NeuroGridConnectionError, NeuroGridError, NeuroGridTimeoutError, TaskFailedError, errorFromReply,
} from './errors.js';
import {
  DEFAULT_WAIT, IDEMPOTENCY_HEADER, headersFor, newIdempotencyKey, resolveConfig, taskBody, taskPath,
  urlFor,
} from './protocol.js';
import { RetryPolicy } from './retry.js';
import { EventParser, TextAssembler } from './sse.js';

export const STREAM_READ_TIMEOUT = 45000; // ms of silence before a reconnect (keep-alives: 15 s)
const FINAL_STATUSES = new Set(['completed', 'failed', 'cancelled', 'expired', 'rejected']);
const IMAGE_URL = /^(https?:\/\/|\/)/;
const NODE_FS = 'node:fs/promises';

function lowercaseHeaders(headers) {
  const out = {};
  headers.forEach((value, name) => {
    out[name.toLowerCase()] = value;
  });
  return out;
}

// fetch rejects with a TypeError when the network fails, and with an
// AbortError/TimeoutError when our timeout fires: both mean "no answer".
function isTransportFailure(error) {
  return error instanceof TypeError || error?.name === 'AbortError' || error?.name === 'TimeoutError';
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function deadlineAfter(timeout) {
  if (timeout === null || timeout === undefined || timeout === Infinity) return null;
  if (!(timeout >= 0)) throw new RangeError(`timeout must be 0 or more milliseconds, not ${timeout}`);
  return Date.now() + timeout;
}

export class NeuroGrid {
  /**
   * @param {{baseUrl?: string, apiKey?: string, timeout?: number, retry?: object, fetch?: typeof fetch}} options
   */
  constructor(options = {}) {
    this.config = resolveConfig(options);
    this.retry = new RetryPolicy(options.retry);
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  // ---- requests, retried -------------------------------------------------------

  async send(method, path, { json, params, headers, accept } = {}) {
    const url = urlFor(this.config, path, params);
    const init = { method, headers: headersFor(this.config, url, headers) };
    if (json !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    }
    for (let attempt = 0; ; attempt++) {
      let status, headersSeen, text;
      try {
        const response = await this.fetchImpl(url, { ...init, signal: AbortSignal.timeout(this.config.timeout) });
        if (response.ok) {
          return accept === 'bytes' ? new Uint8Array(await response.arrayBuffer()) : await readJson(response);
        }
        [status, headersSeen, text] = [response.status, lowercaseHeaders(response.headers), await response.text()];
      } catch (error) {
        if (!isTransportFailure(error)) throw error;
        const delay = this.retry.afterFailure(attempt, Math.random());
        if (delay === null) {
          throw new NeuroGridConnectionError(
            `${method} ${url} failed after ${attempt + 1} attempt(s): ${error.cause?.message ?? error.message}`,
            { cause: error });
        }
        await sleep(delay);
        continue;
      }
      const delay = this.retry.afterStatus(attempt, status, headersSeen, Date.now(), Math.random());
      if (delay === null) throw errorFromReply(status, headersSeen, text);
      await sleep(delay);
    }
  }

  /** The task's server-sent events until its `done` event, reconnecting when dropped. */
  async *streamEvents(taskId, { timeout = null } = {}) {
    const deadline = deadlineAfter(timeout);
    const url = urlFor(this.config, `${taskPath(taskId)}/stream`);
    let failures = 0;
    for (;;) {
      const left = deadline === null ? STREAM_READ_TIMEOUT : deadline - Date.now();
      if (left <= 0) throw new NeuroGridTimeoutError(`task ${taskId} did not end in time`);
      const controller = new AbortController();
      let timer = setTimeout(() => controller.abort(), Math.min(left, STREAM_READ_TIMEOUT));
      const parser = new EventParser();
      let cause = null;
      try {
        const response = await this.fetchImpl(url, {
          headers: headersFor(this.config, url, { Accept: 'text/event-stream' }),
          signal: controller.signal,
        });
        if (response.status !== 200) {
          throw errorFromReply(response.status, lowercaseHeaders(response.headers), await response.text());
        }
        const reader = response.body.getReader();
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            const events = parser.feed(value);
            if (events.length) {
              failures = 0;
              clearTimeout(timer);
              const remaining = deadline === null ? STREAM_READ_TIMEOUT : deadline - Date.now();
              timer = setTimeout(() => controller.abort(), Math.max(0, Math.min(remaining, STREAM_READ_TIMEOUT)));
            }
            for (const event of events) {
              yield event;
              if (event.event === 'done') return;
            }
          }
        } finally {
          reader.cancel().catch(() => {});
        }
      } catch (error) {
        if (!isTransportFailure(error)) throw error;
        cause = error;
      } finally {
        clearTimeout(timer);
      }
      if (deadline !== null && deadline - Date.now() <= 0) {
        throw new NeuroGridTimeoutError(`task ${taskId} did not end in time`);
      }
      const delay = this.retry.afterFailure(failures, Math.random());
      failures += 1;
      if (delay === null) {
        throw new NeuroGridConnectionError(
          `the stream of task ${taskId} broke ${failures} times in a row: ${cause?.message ?? 'closed before the task ended'}`,
          { cause });
      }
      await sleep(deadline === null ? delay : Math.max(0, Math.min(delay, deadline - Date.now())));
    }
  }

  // ---- the API -------------------------------------------------------------------

  /** Submit a task; resolves to its handle at once (the task runs meanwhile). */
  async submitTask(options = {}) {
    const body = await taskBody(options);
    const key = options.idempotencyKey || newIdempotencyKey();
    const submission = await this.send('POST', '/api/tasks', { json: body, headers: { [IDEMPOTENCY_HEADER]: key } });
    return new Task(this, submission.task_id, submission);
  }

  /** A handle for a task submitted earlier (no request is made). */
  task(taskId) {
    return new Task(this, taskId);
  }

  async getTask(taskId) {
    return (await this.send('GET', taskPath(taskId))).task;
  }

  cancelTask(taskId) {
    return this.send('DELETE', taskPath(taskId));
  }

  listTasks({ limit, status, cursor } = {}) {
    return this.send('GET', '/api/tasks', { params: { limit, status, cursor } });
  }

  betaSignup({ email, type, source } = {}) {
    const body = Object.fromEntries(Object.entries({ email, type, source }).filter(([, v]) => v !== undefined));
    return this.send('POST', '/api/beta/signup', { json: body });
  }

  networkStatus() {
    return this.send('GET', '/api/network/status');
  }

  health() {
    return this.send('GET', '/health');
  }

  models() {
    return this.send('GET', '/api/models');
  }

  /** GET any URL (a result's image, say), relative to the server or absolute: its bytes. */
  fetchBytes(url) {
    return this.send('GET', url, { headers: { Accept: '*/*' }, accept: 'bytes' });
  }
}

async function readJson(response) {
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new NeuroGridError(`the server answered ${response.status} with a body that is not JSON: ${text.slice(0, 200)}`);
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) {
    throw new NeuroGridError(`the server answered ${response.status} with JSON that is not an object`);
  }
  return body;
}

/** A submitted task: wait for it, stream it, cancel it. */
export class Task {
  constructor(client, taskId, submission = null) {
    this.client = client;
    this.taskId = taskId;
    this.submission = submission;
    this.last = null; // the latest view of the task this handle saw
  }

  /** Whether this handle has seen the task end (no I/O). */
  get done() {
    return this.last !== null && FINAL_STATUSES.has(this.last.status);
  }

  get cost() {
    const quote = this.submission?.cost ?? null;
    return {
      estimated: quote?.estimated ?? null,
      estimatedUsd: quote?.estimated_usd ?? this.last?.estimated_cost ?? null,
      openai: quote?.comparison?.openai ?? null,
      savings: quote?.comparison?.savings ?? null,
      actualUsd: this.done ? this.last.cost : null,
    };
  }

  observe(view) {
    this.last = view;
    return view;
  }

  async refresh() {
    return this.observe(await this.client.getTask(this.taskId));
  }

  async status() {
    return (await this.refresh()).status;
  }

  async *events({ timeout = null } = {}) {
    for await (const event of this.client.streamEvents(this.taskId, { timeout })) {
      if (event.event === 'done') this.observe(event.data);
      yield event;
    }
  }

  /** The generated text, piece by piece, as the worker produces it; the pieces add
   * up to the result (what the stream missed comes last, from the result). */
  async *stream({ timeout = null } = {}) {
    const assembler = new TextAssembler();
    for await (const event of this.events({ timeout })) {
      yield* assembler.pieces(event);
    }
    const rest = assembler.rest(this.last);
    if (rest) yield rest;
  }

  /** The task once it has ended (any final status). */
  async wait({ timeout = DEFAULT_WAIT } = {}) {
    if (!this.done) {
      // eslint-disable-next-line no-unused-vars
      for await (const _ of this.events({ timeout }));
    }
    return this.last;
  }

  /** The task's result; TaskFailedError when it ended without one. */
  async getResponse({ timeout = DEFAULT_WAIT } = {}) {
    return responseOf(await this.wait({ timeout }));
  }

  async cancel() {
    return this.observe((await this.client.cancelTask(this.taskId)).task);
  }

  /** The image an image task made (its result is the image's URL), as bytes. */
  async imageBytes({ timeout = DEFAULT_WAIT } = {}) {
    const result = responseOf(await this.wait({ timeout }));
    if (!IMAGE_URL.test(result)) {
      throw new NeuroGridError(`task ${this.taskId}'s result is not an image URL: ${JSON.stringify(result.slice(0, 80))}`);
    }
    return this.client.fetchBytes(result);
  }

  /** Node only: write the image to `path`; resolves to the path. */
  async save(path, { timeout = DEFAULT_WAIT } = {}) {
    const bytes = await this.imageBytes({ timeout });
    const { writeFile } = await import(NODE_FS); // a variable: bundlers leave it to Node
    await writeFile(path, bytes);
    return path;
  }
}

function responseOf(view) {
  if (view.status !== 'completed') throw new TaskFailedError(view);
  return view.result ?? '';
}

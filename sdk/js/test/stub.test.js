// Retries, downloads and request bodies against a scripted stub server, and the
// pure parts (event parser, retry policy, configuration).
import assert from 'node:assert/strict';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import {
  BadRequestError, EventParser, IDEMPOTENCY_HEADER, NeuroGrid, NeuroGridConnectionError, NeuroGridTimeoutError,
  RateLimitError, RetryPolicy, taskBody,
} from '../src/index.js';
import { newIdempotencyKey } from '../src/protocol.js';
import { DROP, json, serveStub, submission, taskView } from './stub.js';

const FAST = { maxRetries: 3, backoffBase: 50, backoffMax: 200 };
const KEY = IDEMPOTENCY_HEADER.toLowerCase();
const stubs = [];
after(() => Promise.all(stubs.map((stub) => stub.close())));

async function stub(script) {
  const server = await serveStub(script);
  stubs.push(server);
  return server;
}

const sse = (kind, data) => `event: ${kind}\ndata: ${JSON.stringify(data)}\n\n`;

const limited = (retryAfter) => json(429, {
  success: false, error: 'Rate limit exceeded', details: '100 submissions per hour', timestamp: 'x',
}, { 'Retry-After': retryAfter });

test('429 is retried after Retry-After, with the same Idempotency-Key', async () => {
  const server = await stub({ '/api/tasks': [limited('1'), json(200, submission('task_1_a'))] });
  const task = await new NeuroGrid({ baseUrl: server.url, retry: FAST }).submitTask({ prompt: 'Hello world' });
  assert.equal(task.taskId, 'task_1_a');
  const [first, second] = server.seen;
  assert.ok(second.at - first.at >= 1000, `waited ${second.at - first.at} ms`);
  assert.equal(first.headers[KEY], second.headers[KEY]);
});

test('a long Retry-After throws the RateLimitError at once', async () => {
  const server = await stub({ '/api/tasks': [limited('3600')] });
  const client = new NeuroGrid({ baseUrl: server.url, retry: FAST });
  await assert.rejects(client.submitTask({ prompt: 'Hello world' }), (error) => {
    assert.ok(error instanceof RateLimitError);
    assert.equal(error.status, 429);
    assert.equal(error.details, '100 submissions per hour');
    assert.equal(error.retryAfter, '3600');
    return true;
  });
  assert.equal(server.seen.length, 1);
});

test('a submit retried after a dropped connection reuses its Idempotency-Key', async () => {
  const server = await stub({ '/api/tasks': [DROP, json(200, submission('task_1_b'))] });
  const client = new NeuroGrid({ baseUrl: server.url, retry: FAST });
  const task = await client.submitTask({ prompt: 'Hello world' });
  const other = await client.submitTask({ prompt: 'Hello world' });
  assert.equal(task.taskId, 'task_1_b');
  assert.equal(other.taskId, 'task_1_b');
  const keys = server.seen.map((seen) => seen.headers[KEY]);
  assert.equal(keys.length, 3);
  assert.equal(keys[0], keys[1]);
  assert.notEqual(keys[1], keys[2]); // a new submit: a new key
  assert.match(keys[0], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.deepEqual(JSON.parse(server.seen[0].body), JSON.parse(server.seen[1].body));
});

test('an Idempotency-Key is a version 4 UUID, with or without crypto.randomUUID', () => {
  const uuid4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const original = Object.getOwnPropertyDescriptor(globalThis, 'crypto');
  const real = globalThis.crypto;
  const keys = [newIdempotencyKey()];
  try { // an insecure browser context: getRandomValues only
    Object.defineProperty(globalThis, 'crypto', {
      value: { getRandomValues: (array) => real.getRandomValues(array) },
      configurable: true,
    });
    keys.push(newIdempotencyKey(), newIdempotencyKey());
  } finally {
    Object.defineProperty(globalThis, 'crypto', original);
  }
  for (const key of keys) assert.match(key, uuid4);
  assert.equal(new Set(keys).size, 3);
});

test('connection errors are retried, then thrown', async () => {
  const server = await stub({ '/health': [DROP] });
  await assert.rejects(new NeuroGrid({ baseUrl: server.url, retry: FAST }).health(), NeuroGridConnectionError);
  assert.equal(server.seen.length, FAST.maxRetries + 1);
});

test('a 400 throws BadRequestError with the details', async () => {
  const server = await stub({ '/api/tasks': [json(400, {
    success: false, error: 'Invalid request parameters', details: "The 'prompt' field is required", timestamp: 't',
  })] });
  await assert.rejects(new NeuroGrid({ baseUrl: server.url }).submitTask({ model: 'llama2' }), (error) => {
    assert.ok(error instanceof BadRequestError);
    assert.equal(error.details, "The 'prompt' field is required");
    assert.equal(error.body.success, false);
    return true;
  });
  assert.equal(server.seen.length, 1); // a 400 is final
});

const eventStream = (body, more = {}) => ({ status: 200, body, headers: { 'Content-Type': 'text/event-stream' }, ...more });

test('waiting reopens a stream that closed before the task ended', async () => {
  const stream = '/api/tasks/task_1_s/stream';
  const server = await stub({
    [stream]: [
      eventStream(sse('status', { status: 'running' }) + sse('progress', { tokens: ['Hel'], index: 0 })),
      // the reopened stream replays all the text so far: only its new part is yielded
      eventStream(sse('status', { status: 'running' })
        + sse('progress', { tokens: ['Hel', 'lo'], index: 1, replayed: true })
        + sse('progress', { tokens: [' world'], index: 2 })
        + sse('done', taskView('task_1_s', 'Hello world'))),
    ],
  });
  const task = new NeuroGrid({ baseUrl: server.url, retry: FAST }).task('task_1_s');
  const pieces = [];
  for await (const piece of task.stream({ timeout: 10000 })) pieces.push(piece);
  assert.deepEqual(pieces, ['Hel', 'lo', ' world']);
  assert.equal(await task.getResponse(), 'Hello world'); // seen ended: no third request
  assert.deepEqual(server.seen.map((seen) => seen.path), [stream, stream]);
});

test('a wait past its timeout throws NeuroGridTimeoutError', async () => {
  const server = await stub({
    '/api/tasks/task_1_slow/stream': [eventStream(sse('done', taskView('task_1_slow', 'late')), { delay: 3000 })],
  });
  const started = performance.now();
  await assert.rejects(new NeuroGrid({ baseUrl: server.url, retry: FAST }).task('task_1_slow').wait({ timeout: 300 }),
    NeuroGridTimeoutError);
  assert.ok(performance.now() - started < 2500);
});

test('an image result is downloaded and saved; the key stays with its server', async () => {
  const png = Buffer.concat([Buffer.from('\x89PNG\r\n\x1a\n', 'latin1'), Buffer.from([...Array(64).keys()])]);
  const elsewhere = await stub({ '/image.png': [{ status: 200, body: png, headers: { 'Content-Type': 'image/png' } }] });
  const server = await stub({
    '/api/tasks/task_1_img/stream': [{
      status: 200,
      body: sse('status', { status: 'running' }) + sse('done', taskView('task_1_img', '/files/task_1_img/image.png')),
      headers: { 'Content-Type': 'text/event-stream' },
    }],
    '/files/task_1_img/image.png': [{ status: 200, body: png, headers: { 'Content-Type': 'image/png' } }],
    '/api/tasks/task_1_far': [json(200, { success: true, task: taskView('task_1_far', `${elsewhere.url}/image.png`) })],
  });
  const client = new NeuroGrid({ baseUrl: server.url, apiKey: 'ng_secret' });
  const dir = await mkdtemp(join(tmpdir(), 'neurogrid-js-'));
  const path = await client.task('task_1_img').save(join(dir, 'out.png'), { timeout: 10000 });
  assert.deepEqual(await readFile(path), png);
  assert.equal(server.seen.at(-1).headers.authorization, 'Bearer ng_secret');
  const far = client.task('task_1_far');
  await far.refresh();
  assert.deepEqual(Buffer.from(await far.imageBytes()), png);
  assert.equal(elsewhere.seen[0].headers.authorization, undefined);
});

test('a text result is not taken for an image', async () => {
  const server = await stub({ '/api/tasks/task_1_t': [json(200, { success: true, task: taskView('task_1_t', 'just words') })] });
  const task = new NeuroGrid({ baseUrl: server.url }).task('task_1_t');
  await task.refresh();
  await assert.rejects(task.imageBytes(), /not an image URL/);
});

test('audio goes base64 in the audio field', async () => {
  const wav = Buffer.concat([Buffer.from('RIFF$\x00\x00\x00WAVEfmt ', 'latin1'), Buffer.alloc(32)]);
  const dir = await mkdtemp(join(tmpdir(), 'neurogrid-js-'));
  await writeFile(join(dir, 'hello.wav'), wav);
  const server = await stub({ '/api/tasks': [json(200, submission('task_1_w'))] });
  const client = new NeuroGrid({ baseUrl: server.url });
  await client.submitTask({ prompt: 'transcribe', model: 'whisper', audio: join(dir, 'hello.wav') });
  await client.submitTask({ model: 'whisper', audio: new Uint8Array(wav) });
  const [fromPath, fromBytes] = server.seen.map((seen) => JSON.parse(seen.body));
  assert.deepEqual(fromPath, { prompt: 'transcribe', model: 'whisper', audio: wav.toString('base64') });
  assert.deepEqual(fromBytes, { model: 'whisper', audio: wav.toString('base64') });
});

test('taskBody maps options to fields and refuses unknown or doubled ones', async () => {
  assert.deepEqual(await taskBody({ prompt: 'hi', model: 'llama2', maxTokens: 5, temperature: 0, topP: 0.5 }),
    { prompt: 'hi', model: 'llama2', max_tokens: 5, temperature: 0, top_p: 0.5 });
  await assert.rejects(taskBody({ prompt: 'hi', max_tokens: 5 }), /unknown submitTask option 'max_tokens'/);
  await assert.rejects(taskBody({ model: 'llama2', extra: { model: 'whisper' } }), /'model'/);
});

test('the event parser handles split chunks and line endings', () => {
  const stream = Buffer.from(': keep-alive\r\n\r\nevent: progress\r\ndata: {"tokens": ["h\\u00e9"]}\r\n\r\n'
    + 'event: done\ndata: {"id": "t",\ndata: "status": "completed"}\n\n');
  const parser = new EventParser();
  const events = [];
  for (let i = 0; i < stream.length; i++) events.push(...parser.feed(stream.subarray(i, i + 1)));
  assert.deepEqual(events, [
    { event: 'progress', data: { tokens: ['hé'] } },
    { event: 'done', data: { id: 't', status: 'completed' } },
  ]);
});

test('retry policy decisions', () => {
  const policy = new RetryPolicy({ maxRetries: 2, backoffBase: 1000, backoffMax: 3000, maxRetryAfter: 10000 });
  assert.deepEqual([0, 1, 2].map((n) => policy.afterFailure(n, 0)), [500, 1000, null]);
  assert.equal(policy.backoff(5, 1), 3000);
  assert.equal(policy.afterStatus(0, 429, { 'retry-after': '7' }, 0, 0), 7000);
  assert.equal(policy.afterStatus(0, 429, { 'retry-after': '11' }, 0, 0), null);
  assert.equal(policy.afterStatus(0, 503, { 'retry-after': 'Wed, 21 Oct 2015 07:28:05 GMT' }, 1445412480000, 0), 5000);
  assert.equal(policy.afterStatus(0, 429, {}, 0, 0), 500);
  assert.equal(policy.afterStatus(0, 400, {}, 0, 0), null);
  assert.throws(() => new RetryPolicy({ maxRetries: -1 }), /maxRetries/);
});

test('configuration comes from options, then process.env, then the local server', () => {
  const saved = { ...process.env };
  try {
    process.env.NEUROGRID_BASE_URL = 'http://example.test:9000/';
    process.env.NEUROGRID_API_KEY = 'ng_env';
    assert.equal(new NeuroGrid().config.baseUrl, 'http://example.test:9000');
    assert.equal(new NeuroGrid().config.apiKey, 'ng_env');
    assert.equal(new NeuroGrid({ baseUrl: 'http://other.test', apiKey: 'ng_arg' }).config.apiKey, 'ng_arg');
    delete process.env.NEUROGRID_BASE_URL;
    delete process.env.NEUROGRID_API_KEY;
    assert.equal(new NeuroGrid().config.baseUrl, 'http://127.0.0.1:8080');
    assert.equal(new NeuroGrid().config.apiKey, null);
    assert.throws(() => new NeuroGrid({ baseUrl: '127.0.0.1:8080' }), /baseUrl/);
  } finally {
    process.env = saved;
  }
});

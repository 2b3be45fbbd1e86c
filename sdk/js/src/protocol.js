// The API as data: configuration (arguments, then NEUROGRID_BASE_URL and
// NEUROGRID_API_KEY from process.env under Node, then in a browser the page's own
// origin, then the local server), the
// requests of each call, and the bodies they send.
//
// Rules (as in the Python SDK's protocol.py):
// - A submit carries an `Idempotency-Key` header: one random UUID per logical
//   submit (or the caller's), the same on every retry, so a submit retried after a
//   dropped connection never makes a second task.
// - Only the given fields are sent (the server applies its defaults and refuses
//   unknown fields with a 400 naming them); camelCase options map to the API's
//   snake_case fields through TASK_FIELDS.
// - Audio (bytes, a Blob, or a file path under Node) goes base64 in "audio".
// - The API key goes only to the server's own origin, never to another host a
//   result URL may point to.

export const VERSION = '0.1.0';
export const DEFAULT_BASE_URL = 'http://127.0.0.1:8080';
export const DEFAULT_TIMEOUT = 30000; // ms for one request
export const DEFAULT_WAIT = 300000; // ms getResponse() waits unless told otherwise
export const BASE_URL_ENV = 'NEUROGRID_BASE_URL';
export const API_KEY_ENV = 'NEUROGRID_API_KEY';
export const IDEMPOTENCY_HEADER = 'Idempotency-Key';

// submitTask option -> the API's field
export const TASK_FIELDS = Object.freeze({
  prompt: 'prompt',
  model: 'model',
  priority: 'priority',
  maxTokens: 'max_tokens',
  temperature: 'temperature',
  topP: 'top_p',
  seed: 'seed',
  steps: 'steps',
  audioSeconds: 'audio_seconds',
});
const SUBMIT_OPTIONS = new Set([...Object.keys(TASK_FIELDS), 'audio', 'extra', 'idempotencyKey']);

function environment() {
  return globalThis.process?.env ?? {};
}

// In a browser page (no process.env), the server that served the page is the
// natural default: a page of the NeuroGrid server talks to its own origin.
function pageOrigin() {
  const origin = globalThis.location?.origin;
  return typeof origin === 'string' && /^https?:/.test(origin) ? origin : null;
}

export function resolveConfig({ baseUrl, apiKey, timeout = DEFAULT_TIMEOUT } = {}) {
  const env = environment();
  const base = String(baseUrl || env[BASE_URL_ENV] || pageOrigin() || DEFAULT_BASE_URL).replace(/\/+$/, '');
  let parsed;
  try {
    parsed = new URL(base);
  } catch {
    parsed = null;
  }
  if (!parsed || !['http:', 'https:'].includes(parsed.protocol)) {
    throw new TypeError(`baseUrl must be an http(s) URL such as ${DEFAULT_BASE_URL}, not ${JSON.stringify(base)}`);
  }
  if (!(typeof timeout === 'number' && timeout > 0)) {
    throw new RangeError(`timeout must be a positive number of milliseconds, not ${timeout}`);
  }
  const key = apiKey !== undefined && apiKey !== null ? apiKey : env[API_KEY_ENV] || null;
  return Object.freeze({ baseUrl: base, apiKey: key, timeout });
}

export function urlFor(config, path, params) {
  const url = new URL(path, config.baseUrl + '/');
  for (const [name, value] of Object.entries(params ?? {})) {
    if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
  }
  return url.toString();
}

export function headersFor(config, url, extra = {}) {
  const headers = { Accept: 'application/json', ...extra };
  if (!('window' in globalThis)) headers['User-Agent'] = `neurogrid-js/${VERSION}`;
  if (config.apiKey && new URL(url).origin === new URL(config.baseUrl).origin) {
    headers.Authorization = `Bearer ${config.apiKey}`;
  }
  return headers;
}

export function taskPath(taskId) {
  if (typeof taskId !== 'string' || !taskId) throw new TypeError('taskId must be a non-empty string');
  return `/api/tasks/${encodeURIComponent(taskId)}`;
}

/** A random (version 4) UUID; randomUUID needs a secure context in browsers. */
export function newIdempotencyKey() {
  const { crypto } = globalThis;
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function base64(bytes) {
  if (globalThis.Buffer) return globalThis.Buffer.from(bytes).toString('base64');
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Base64 of audio: bytes (Uint8Array, ArrayBuffer), a Blob, or a file path (Node). */
export async function encodeAudio(audio) {
  if (typeof audio === 'string' || audio instanceof URL) {
    const fs = 'node:fs/promises'; // a variable: bundlers leave it to Node
    const { readFile } = await import(fs);
    return base64(new Uint8Array(await readFile(audio)));
  }
  if (audio instanceof ArrayBuffer) return base64(new Uint8Array(audio));
  if (ArrayBuffer.isView(audio)) return base64(new Uint8Array(audio.buffer, audio.byteOffset, audio.byteLength));
  if (typeof Blob !== 'undefined' && audio instanceof Blob) return base64(new Uint8Array(await audio.arrayBuffer()));
  throw new TypeError('audio must be a Uint8Array, an ArrayBuffer, a Blob or a file path');
}

/** The JSON body of POST /api/tasks: the given fields only. */
export async function taskBody(options = {}) {
  for (const name of Object.keys(options)) {
    if (!SUBMIT_OPTIONS.has(name)) {
      throw new TypeError(`unknown submitTask option '${name}' (known: ${[...SUBMIT_OPTIONS].join(', ')}; ` +
        'other API fields go in `extra`)');
    }
  }
  const body = {};
  for (const [option, field] of Object.entries(TASK_FIELDS)) {
    if (options[option] !== undefined && options[option] !== null) body[field] = options[option];
  }
  if (options.audio !== undefined && options.audio !== null) body.audio = await encodeAudio(options.audio);
  for (const [name, value] of Object.entries(options.extra ?? {})) {
    if (name in body) throw new TypeError(`extra field '${name}' is also given as an option`);
    body[name] = value;
  }
  return body;
}

// The SDK against a live NeuroGrid server at NEUROGRID_BASE_URL (pytest's
// tests/sdk/test_js_sdk.py starts one and runs these; skipped without it). The
// demo model's text is not meaningful: the tests compare what the SDK returns
// with the task as stored.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { test } from 'node:test';

import { BadRequestError, ConflictError, NeuroGrid, NotFoundError, TaskFailedError } from '../src/index.js';

const BASE_URL = process.env.NEUROGRID_BASE_URL;
const skip = BASE_URL ? false : 'NEUROGRID_BASE_URL is not set: no live server to test against';
const PACKAGE = dirname(dirname(fileURLToPath(import.meta.url)));
const BLOCKER = { prompt: 'keep the worker busy', maxTokens: 500 }; // the one slot, for ~1 s

// The API reference's snippet, character for character.
const REFERENCE_SNIPPET = `import { NeuroGrid } from 'neurogrid-js';
const client = new NeuroGrid();
const result = await client.submitTask({
prompt: 'Hello world',
model: 'llama2'
});
console.log(await result.getResponse());
`;

async function collect(iterable) {
  const items = [];
  for await (const item of iterable) items.push(item);
  return items;
}

test('the reference snippet prints the task result', { skip }, async () => {
  const client = new NeuroGrid({ baseUrl: BASE_URL });
  const before = new Set((await client.listTasks({ limit: 100 })).tasks.map((t) => t.id));
  // A project that installed neurogrid-js: node_modules/neurogrid-js is this package.
  const project = await mkdtemp(join(tmpdir(), 'neurogrid-js-snippet-'));
  await mkdir(join(project, 'node_modules'));
  await symlink(PACKAGE, join(project, 'node_modules', 'neurogrid-js'), 'dir');
  await writeFile(join(project, 'snippet.mjs'), REFERENCE_SNIPPET);
  const { stdout } = await promisify(execFile)(process.execPath, ['snippet.mjs'], {
    cwd: project, env: { ...process.env, NEUROGRID_BASE_URL: BASE_URL }, timeout: 120000,
  });
  const added = (await client.listTasks({ limit: 100 })).tasks.filter((t) => !before.has(t.id));
  assert.equal(added.length, 1);
  const stored = await client.getTask(added[0].id);
  assert.equal(stored.status, 'completed');
  assert.equal(stored.model, 'llama2:7b');
  assert.ok(stored.result);
  assert.equal(stdout, `${stored.result}\n`);
});

test('a handle waits, reports its cost and status', { skip }, async () => {
  const client = new NeuroGrid({ baseUrl: BASE_URL });
  const task = await client.submitTask({ prompt: 'Hello world', model: 'llama2', maxTokens: 20 });
  assert.match(task.taskId, /^task_/);
  assert.match(task.cost.estimated, /^\$/);
  assert.equal(task.cost.actualUsd, null);
  const text = await task.getResponse({ timeout: 60000 });
  const stored = await client.getTask(task.taskId);
  assert.equal(text, stored.result);
  assert.equal(await task.status(), 'completed');
  assert.equal(task.cost.actualUsd, stored.cost);
  assert.ok(stored.cost > 0);
});

test('stream() yields the tokens that make up the result', { skip }, async () => {
  const client = new NeuroGrid({ baseUrl: BASE_URL });
  const blocker = await client.submitTask(BLOCKER); // the one slot is busy: ours queues
  const task = await client.submitTask({ prompt: 'Hello world', model: 'llama2', maxTokens: 120 });
  const tokens = await collect(task.stream({ timeout: 60000 }));
  assert.equal(await blocker.status(), 'completed');
  const stored = await client.getTask(task.taskId);
  assert.equal(stored.status, 'completed');
  assert.ok(tokens.length > 1);
  assert.equal(tokens.join(''), stored.result);
  assert.deepEqual(task.last, stored);
});

test('cancel() ends a queued task', { skip }, async () => {
  const client = new NeuroGrid({ baseUrl: BASE_URL });
  const blocker = await client.submitTask(BLOCKER);
  const task = await client.submitTask({ prompt: 'never run', maxTokens: 50 });
  assert.equal((await task.cancel()).status, 'cancelled');
  assert.equal(await task.status(), 'cancelled');
  await assert.rejects(task.cancel(), (error) => error instanceof ConflictError && error.status === 409);
  await assert.rejects(task.getResponse({ timeout: 30000 }),
    (error) => error instanceof TaskFailedError && error.status === 'cancelled');
  await blocker.cancel().catch((error) => assert.ok(error instanceof ConflictError)); // it may have ended
});

test('a 400 throws BadRequestError with the details', { skip }, async () => {
  const client = new NeuroGrid({ baseUrl: BASE_URL });
  await assert.rejects(client.submitTask({ model: 'llama2' }), (error) => {
    assert.ok(error instanceof BadRequestError);
    assert.equal(error.status, 400);
    assert.equal(error.details, "The 'prompt' field is required");
    assert.ok(error.timestamp);
    return true;
  });
  await assert.rejects(client.submitTask({ prompt: 'x', extra: { colour: 'blue' } }),
    (error) => error instanceof BadRequestError && error.details.includes('colour'));
  await assert.rejects(client.task('task_0_nosuchtask').status(), NotFoundError);
});

test('the other calls', { skip }, async () => {
  const client = new NeuroGrid({ baseUrl: BASE_URL });
  assert.equal((await client.health()).status, 'OK');
  assert.equal((await client.networkStatus()).network.nodes_online, 1);
  const llama = (await client.models()).models.find((m) => m.id === 'llama2:7b');
  assert.ok(llama.available && llama.aliases.includes('llama2'));
  const email = `js-${crypto.randomUUID().slice(0, 8)}@example.com`;
  const first = await client.betaSignup({ email, type: 'developer', source: 'website' });
  assert.match(first.signup_id, /^beta_/);
  assert.equal(first.bonuses.free_tasks, 1000);
  assert.equal((await client.betaSignup({ email })).signup_id, first.signup_id);
  const page = await client.listTasks({ limit: 1 });
  assert.equal(page.count, 1);
  assert.ok(page.next_cursor);
  const older = await client.listTasks({ limit: 1, cursor: page.next_cursor });
  assert.notEqual(older.tasks[0].id, page.tasks[0].id);
});

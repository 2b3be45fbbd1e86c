// The official `openai` npm package (a devDependency) against the live NeuroGrid
// server's OpenAI-compatible routes: baseURL NEUROGRID_BASE_URL + '/v1', the key
// NEUROGRID_API_KEY (pytest's tests/sdk/test_openai_client.py starts the server,
// makes the key and runs this; skipped without them). The demo model's text is
// not meaningful: the tests compare texts, not meanings.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import OpenAI from 'openai';

const BASE_URL = process.env.NEUROGRID_BASE_URL;
const API_KEY = process.env.NEUROGRID_API_KEY;
const skip = BASE_URL && API_KEY ? false
  : 'NEUROGRID_BASE_URL and NEUROGRID_API_KEY are not set: no live server to test against';

function client() {
  return new OpenAI({ baseURL: `${BASE_URL}/v1`, apiKey: API_KEY, maxRetries: 0 });
}

test('the models are listed', { skip }, async () => {
  const ids = [];
  for await (const model of client().models.list()) ids.push(model.id);
  for (const id of ['llama2:7b', 'llama2', 'stable-diffusion', 'whisper']) {
    assert.ok(ids.includes(id), `${id} in ${ids}`);
  }
});

test('a streamed chat assembles to the text of a plain one', { skip }, async () => {
  const openai = client();
  const request = {
    model: 'llama2', max_tokens: 16, seed: 5, temperature: 0.7,
    messages: [{ role: 'user', content: 'Hello world' }],
  };
  const whole = await openai.chat.completions.create(request);
  const text = whole.choices[0].message.content;
  assert.equal(whole.object, 'chat.completion');
  assert.ok(text.length > 0);
  const stream = await openai.chat.completions.create({
    ...request, stream: true, stream_options: { include_usage: true },
  });
  let streamed = '';
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) {
      streamed += chunk.choices[0].delta.content ?? '';
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(streamed, text);
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.equal(usage.total_tokens, whole.usage.total_tokens);
});

test('an unsupported parameter is a BadRequestError naming it', { skip }, async () => {
  await assert.rejects(
    client().chat.completions.create({
      model: 'llama2', messages: [{ role: 'user', content: 'Hi' }], tools: [
        { type: 'function', function: { name: 'f', parameters: {} } }],
    }),
    (error) => error instanceof OpenAI.BadRequestError && error.param === 'tools',
  );
});

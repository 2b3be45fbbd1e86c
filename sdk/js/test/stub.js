// A scripted HTTP server on 127.0.0.1 for the retry and download tests (the
// network boundary: a real server cannot be made to refuse or drop on cue). Each
// path has a list of answers, used in order (the last one repeats); DROP destroys
// the connection after reading the request; `delay` (ms) holds an answer back.
// Every request is recorded.
import http from 'node:http';

export const DROP = Symbol('drop');

export function json(status, value, headers = {}) {
  return { status, body: JSON.stringify(value), headers: { 'Content-Type': 'application/json', ...headers } };
}

export async function serveStub(script) {
  const seen = [];
  const server = http.createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const path = request.url.split('?')[0];
      seen.push({ method: request.method, path, headers: request.headers, body: Buffer.concat(chunks).toString(), at: performance.now() });
      const answers = script[path];
      const answer = !answers?.length ? json(404, { success: false, error: 'Not found', details: `the stub has no ${path}` })
        : answers.length > 1 ? answers.shift() : answers[0];
      if (answer === DROP) {
        request.socket.destroy();
        return;
      }
      const reply = () => {
        if (response.destroyed) return;
        response.writeHead(answer.status, answer.headers ?? {});
        response.end(answer.body ?? '');
      };
      if (answer.delay) setTimeout(reply, answer.delay).unref();
      else reply();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    seen,
    script,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

export function submission(taskId) {
  return {
    success: true, task_id: taskId, status: 'queued', estimated_time: '3s',
    cost: { estimated: '$0.001', comparison: { openai: '$0.060', savings: '98.3%' } },
    message: 'Task queued for processing',
  };
}

export function taskView(taskId, result) {
  return {
    id: taskId, status: 'completed', result, created_at: '2024-10-25T15:30:00Z',
    completed_at: '2024-10-25T15:30:03Z', processing_time: 2.3, cost: 0.001, tokens_used: 1, node: null,
  };
}

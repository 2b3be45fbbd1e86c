// Type-checked, never run (`npm run typecheck`): the reference's snippet and the
// SDK's surface against index.d.ts, imported by the package's own name.
import {
  APIError, BadRequestError, NeuroGrid, RateLimitError, TaskFailedError, type StreamEvent, type Task,
  type TaskView,
} from 'neurogrid-js';

const client = new NeuroGrid();
const result = await client.submitTask({
prompt: 'Hello world',
model: 'llama2'
});
console.log(await result.getResponse());

const configured = new NeuroGrid({ baseUrl: 'http://127.0.0.1:8080', apiKey: 'ng_key', timeout: 5000, retry: { maxRetries: 1 } });
const task: Task = await configured.submitTask({ prompt: 'x', maxTokens: 16, temperature: 0, audio: new Uint8Array(4) });
const id: string = task.taskId;
const estimated: string | null = task.cost.estimated;
for await (const piece of task.stream({ timeout: 1000 })) {
  const text: string = piece;
}
for await (const event of task.events()) {
  const kind: string = (event satisfies StreamEvent).event;
}
const view: TaskView = await task.wait({ timeout: null });
const status: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled' | 'expired' | 'rejected' = await task.status();
const cancelled: TaskView = await task.cancel();
const png: Uint8Array = await task.imageBytes();
const page = await client.listTasks({ limit: 2, status: 'completed' });
const cursor: string | null = page.next_cursor;
const nodes: number = (await client.networkStatus()).network.nodes_online;
const signup: string = (await client.betaSignup({ email: 'a@example.com' })).signup_id;
const health: string = (await client.health()).status;
const models: string[] = (await client.models()).models.map((m) => m.id);
try {
  await client.submitTask({ model: 'llama2' });
} catch (error) {
  if (error instanceof BadRequestError) { const details: string = error.details; const code: number = error.status; }
  if (error instanceof RateLimitError) { const after: string | null = error.retryAfter; }
  if (error instanceof TaskFailedError) { const failed: TaskView = error.task; }
  if (error instanceof APIError) { const body = error.body; }
}
export { id, estimated, view, status, cancelled, png, cursor, nodes, signup, health, models };

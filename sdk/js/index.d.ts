// Types of neurogrid-js. The JSON shapes are the API reference's (a contract):
// its fields are required here; fields the server adds beyond it are optional.

export type TaskStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled' | 'expired' | 'rejected';

export interface NodeRef { id: string | null; location: string | null; gpu?: string }
export interface CostQuote {
  estimated: string;
  comparison: { openai: string; savings: string };
  estimated_usd?: number;
}
export interface Submission {
  success: boolean;
  task_id: string;
  status: TaskStatus;
  estimated_time: string;
  cost: CostQuote;
  node?: NodeRef;
  message?: string;
  model?: string;
  priority?: string;
  created_at?: string;
}
export interface TaskView {
  id: string;
  status: TaskStatus;
  result: string | null;
  created_at: string | null;
  completed_at: string | null;
  processing_time: number;
  cost: number;
  tokens_used: number;
  node: NodeRef | null;
  model?: string;
  priority?: string;
  started_at?: string | null;
  estimated_cost?: number;
  error?: string | null;
  params?: Record<string, unknown>;
}
export interface TaskPage { success: boolean; tasks: TaskView[]; count: number; next_cursor: string | null }
export interface CancelResult { success: boolean; message: string; task: TaskView }
export interface BetaSignup {
  success: boolean;
  message: string;
  signup_id: string;
  bonuses: { free_tasks: number; lifetime_discount: number; priority_support: boolean; early_access: boolean };
  next_steps: string[];
  already_registered?: boolean;
}
export interface NetworkNode {
  id: string; location: string; status: string; gpu: string; tasks_processed: number;
  name?: string; models?: string[]; slots?: number; running?: number; price_per_hour?: number;
}
export interface NetworkStatus {
  success: boolean;
  timestamp: string;
  network: {
    nodes_online: number; total_tasks: number; completed_tasks: number; queued_tasks: number;
    success_rate: number; avg_response_time: string; cost_savings_vs_openai: string; uptime: string;
    running_tasks?: number; failed_tasks?: number; cancelled_tasks?: number; utilization?: number;
  };
  nodes: NetworkNode[];
  stats: { beta_signups: number; total_compute_time: string; total_savings: string };
}
export interface Health {
  status: string; service: string; version: string; environment: string; timestamp: string;
  uptime: number; uptime_human: string;
  memory: { used: string; total: string; used_bytes?: number; total_bytes?: number };
  network: { nodes_online: number; total_tasks: number; beta_signups: number; queued_tasks?: number; running_tasks?: number };
}
export interface ModelInfo {
  id: string; aliases: string[]; description: string; task_type: string; available: boolean;
  nodes_online: number; queued_tasks: number;
  pricing: { unit: string; per_unit_usd: number; per_1000_units: string; gpu: string; openai_reference: unknown };
}
export interface ModelList { success: boolean; models: ModelInfo[]; gpu_classes?: Record<string, Record<string, number>> }
export interface StreamEvent { event: 'status' | 'progress' | 'done' | string; data: Record<string, any> }
export interface Cost {
  estimated: string | null; estimatedUsd: number | null; openai: string | null; savings: string | null;
  actualUsd: number | null;
}

export interface RetryOptions { maxRetries?: number; backoffBase?: number; backoffMax?: number; maxRetryAfter?: number }
export interface ClientOptions {
  /** Default: process.env.NEUROGRID_BASE_URL under Node; in a browser page, the page's origin; then http://127.0.0.1:8080. */
  baseUrl?: string;
  /** Default: process.env.NEUROGRID_API_KEY under Node, then none. */
  apiKey?: string;
  /** Milliseconds for one request (default 30000). */
  timeout?: number;
  retry?: RetryOptions;
  fetch?: typeof fetch;
}
export type AudioInput = Uint8Array | ArrayBuffer | Blob | string | URL;
export interface SubmitTaskOptions {
  prompt?: string;
  model?: string;
  priority?: 'standard' | 'high' | 'critical' | string;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  steps?: number;
  /** Bytes, a Blob, or (Node) a file path; sent base64 in the "audio" field. */
  audio?: AudioInput;
  audioSeconds?: number;
  /** Other API fields, sent as given. */
  extra?: Record<string, unknown>;
  /** Default: a random UUID per submit, reused on its retries. */
  idempotencyKey?: string;
}
export interface WaitOptions { /** Milliseconds; null: no limit. */ timeout?: number | null }

export class RetryPolicy {
  constructor(options?: RetryOptions);
  readonly maxRetries: number; readonly backoffBase: number; readonly backoffMax: number; readonly maxRetryAfter: number;
  backoff(attempt: number, jitter: number): number;
  afterFailure(attempt: number, jitter: number): number | null;
  afterStatus(attempt: number, status: number, headers: Record<string, string>, wallNow: number, jitter: number): number | null;
}
export const DEFAULT_RETRY: Required<RetryOptions>;
export function retryAfterMs(value: string | null | undefined, wallNow: number): number | null;

export class NeuroGrid {
  constructor(options?: ClientOptions);
  readonly config: { readonly baseUrl: string; readonly apiKey: string | null; readonly timeout: number };
  readonly retry: RetryPolicy;
  submitTask(options: SubmitTaskOptions): Promise<Task>;
  task(taskId: string): Task;
  getTask(taskId: string): Promise<TaskView>;
  cancelTask(taskId: string): Promise<CancelResult>;
  listTasks(options?: { limit?: number; status?: TaskStatus; cursor?: string }): Promise<TaskPage>;
  betaSignup(options: { email: string; type?: string; source?: string }): Promise<BetaSignup>;
  networkStatus(): Promise<NetworkStatus>;
  health(): Promise<Health>;
  models(): Promise<ModelList>;
  fetchBytes(url: string): Promise<Uint8Array>;
  streamEvents(taskId: string, options?: WaitOptions): AsyncGenerator<StreamEvent, void, undefined>;
}

export class Task {
  readonly client: NeuroGrid;
  readonly taskId: string;
  readonly submission: Submission | null;
  /** The latest view of the task this handle saw. */
  last: TaskView | null;
  readonly done: boolean;
  readonly cost: Cost;
  refresh(): Promise<TaskView>;
  status(): Promise<TaskStatus>;
  events(options?: WaitOptions): AsyncGenerator<StreamEvent, void, undefined>;
  /** The generated text piece by piece; the pieces add up to the result (what the stream missed comes last). */
  stream(options?: WaitOptions): AsyncGenerator<string, void, undefined>;
  wait(options?: WaitOptions): Promise<TaskView>;
  getResponse(options?: WaitOptions): Promise<string>;
  cancel(): Promise<TaskView>;
  imageBytes(options?: WaitOptions): Promise<Uint8Array>;
  save(path: string, options?: WaitOptions): Promise<string>;
}

export class NeuroGridError extends Error {}
export class APIError extends NeuroGridError {
  readonly status: number;
  readonly error: string;
  readonly details: string;
  readonly body: { success?: false; error?: string; details?: string; timestamp?: string } & Record<string, unknown>;
  readonly headers: Record<string, string>;
  readonly timestamp: string | null;
}
export class BadRequestError extends APIError {}
export class AuthenticationError extends APIError {}
export class NotFoundError extends APIError {}
export class ConflictError extends APIError {}
export class RateLimitError extends APIError { readonly retryAfter: string | null }
export class ServerError extends APIError {}
export class NeuroGridConnectionError extends NeuroGridError {}
export class NeuroGridTimeoutError extends NeuroGridError {}
export class TaskFailedError extends NeuroGridError { readonly task: TaskView; readonly status: TaskStatus }
export const STATUS_ERRORS: Readonly<Record<number, typeof APIError>>;

export class EventParser { feed(chunk: Uint8Array | string): StreamEvent[] }
export function tokensOf(event: StreamEvent): string[];
/** A stream's text so far across reconnects: what each event adds (of a replayed
 * event, only its part not yielded yet), then what the final task adds. */
export class TextAssembler {
  readonly text: string;
  pieces(event: StreamEvent): string[];
  rest(task: TaskView | null | undefined): string;
}
export function taskBody(options: SubmitTaskOptions): Promise<Record<string, unknown>>;

export const VERSION: string;
export const DEFAULT_BASE_URL: string;
export const DEFAULT_TIMEOUT: number;
export const DEFAULT_WAIT: number;
export const STREAM_READ_TIMEOUT: number;
export const BASE_URL_ENV: 'NEUROGRID_BASE_URL';
export const API_KEY_ENV: 'NEUROGRID_API_KEY';
export const IDEMPOTENCY_HEADER: 'Idempotency-Key';
export const TASK_FIELDS: Readonly<Record<string, string>>;

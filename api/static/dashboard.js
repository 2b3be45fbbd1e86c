// NeuroGrid dashboard and playground: vanilla JS, no dependencies.
// The network view arrives as `network` server-sent events from /api/network/events
// (once a second); the playground uses the public task API: POST /api/tasks, then
// the task's event stream GET /api/tasks/<id>/stream (progress tokens, then done).
"use strict";

const $ = (id) => document.getElementById(id);
const PRIORITIES = ["standard", "high", "critical"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

// Dollars: cents from a dollar up; below, two significant digits written out in
// full ("$0.00000033", never toPrecision's "$3.3e-7").
function usd(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === 0) return "$0";
  if (x >= 1) return "$" + x.toFixed(2);
  return "$" + x.toFixed(Math.min(20, 1 - Math.floor(Math.log10(x))));
}

// A node and what is known of where and what it is: "node_x (Iceland, RTX 4090)",
// or just "node_x" when nothing is (never "node_x ()" or "node_x (, RTX 4090)").
function nodeText(id, ...details) {
  const known = details.filter((d) => d !== null && d !== undefined && d !== "");
  return known.length ? `${id} (${known.join(", ")})` : id;
}

// ---- the network view ---------------------------------------------------------

// Nodes taking work; those connected but not taking any (draining, quarantined)
// are counted apart: "3 · 1 quarantined". (`nodes_online` counts every connected
// node, as the API reference has it; `nodes_by_status` splits them.)
const CONNECTED_APART = ["draining", "quarantined"];
function renderNodeCount(network) {
  const by = network.nodes_by_status;
  const apart = CONNECTED_APART.filter((s) => by[s]).map((s) =>
    el("small", { class: "apart", "data-count": s }, ` · ${by[s]} ${s}`));
  $("s-nodes").replaceChildren(String(by.online), ...apart);
}

function renderSummary(view) {
  const n = view.network;
  renderNodeCount(n);
  $("s-queued").textContent = n.queued_tasks;
  $("s-running").textContent = n.running_tasks;
  $("s-completed").textContent = n.completed_tasks;
  $("s-success").textContent = n.success_rate + "%";
  $("s-response").textContent = n.avg_response_time;
  $("s-cost").textContent = usd(view.cost.total_usd);
  $("s-openai").textContent = usd(view.cost.openai_usd);
  $("s-saved").textContent = usd(view.cost.saved_usd) + " (" + view.cost.savings + ")";
}

// The node's GPU as claimed, and what its timed runs showed when they contradict it.
function gpuCell(node) {
  if (!node.gpu_claim_contradicted) return node.gpu;
  const classes = [...new Set(Object.values(node.measured_speed || {})
    .filter((m) => m.reclassed).map((m) => m.gpu_class))];
  return el("span", { class: "contradicted", "data-contradicted": "true",
    title: "its measured speed contradicts the GPU it claims; it is priced as " + classes.join(", ") },
  node.gpu, el("br"), el("small", {}, "runs like " + classes.join(", ")));
}

// Reputation: the Beta posterior mean of its verified results (engine/core/reputation.py).
// An operator-trusted node (--trusted-node) is a validator whose own results are not
// verified and that is never on probation; a new node is on probation where the
// coordinator limits it (`probation_limit`).
function trustLabel(rep) {
  if (rep.trusted) return "operator-trusted";
  if (rep.verified) return `${Math.round(rep.score * 100)}% of ${rep.verified} checked`;
  return rep.probation_limit === null || rep.probation_limit === undefined
    ? "new: nothing checked yet" : "new: on probation";
}

function trustCell(node) {
  const rep = node.reputation;
  if (!rep) return "–";
  const parts = [el("span", { "data-reputation": String(rep.score),
    "data-trusted": rep.trusted ? "true" : undefined }, trustLabel(rep))];
  if (rep.failed) parts.push(el("br"), el("small", { class: "status-offline" }, `${rep.failed} failed`));
  if (rep.trusted) parts.push(el("br"), el("small", { class: "muted" }, "validator; its results are not verified"));
  else if (rep.validator) parts.push(el("br"), el("small", { class: "muted" }, "validator"));
  return el("span", {}, ...parts);
}

function renderNodes(nodes) {
  const box = $("nodes");
  if (!nodes.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No node has connected yet."));
    return;
  }
  const regions = new Map();
  for (const node of nodes) {
    const region = node.region || node.location || "unknown";
    if (!regions.has(region)) regions.set(region, []);
    regions.get(region).push(node);
  }
  const parts = [];
  for (const [region, list] of [...regions.entries()].sort()) {
    const rows = list.map((node) => el("tr", { "data-node-id": node.id },
      el("th", { scope: "row" }, node.name || node.id, el("br"), el("small", { class: "muted" }, node.id)),
      el("td", {}, el("span", { class: "status status-" + node.status, "data-status": node.status }, node.status)),
      el("td", {}, gpuCell(node)),
      el("td", {}, (node.models || []).join(", ")),
      el("td", {}, node.status === "offline" ? "–" : `${node.running} / ${node.slots}`),
      el("td", {}, node.tasks_processed),
      el("td", {}, trustCell(node)),
      el("td", {}, "$" + Number(node.price_per_hour).toFixed(2) + "/h"),
    ));
    const table = el("table", {},
      el("caption", { class: "visually-hidden" }, "Nodes in " + region),
      el("thead", {}, el("tr", {}, ...["Node", "Status", "GPU", "Models", "Slots in use",
        "Tasks", "Trust", "Price"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows));
    parts.push(el("div", { class: "region" }, el("h3", {}, region + " (" + list.length + ")"),
      el("div", { class: "scroll" }, table)));
  }
  box.replaceChildren(...parts);
}

function renderQueue(view) {
  const models = new Set([...Object.keys(view.queued_by_model), ...Object.keys(view.queue)]);
  const rows = [...models].sort().map((model) => {
    const by = view.queue[model] || {};
    return el("tr", {}, el("th", { scope: "row" }, model),
      ...PRIORITIES.map((p) => el("td", {}, by[p] || 0)),
      el("td", {}, view.queued_by_model[model] || 0));
  });
  $("queue").tBodies[0].replaceChildren(...rows);
}

function renderRecent(tasks) {
  const rows = tasks.map((t) => el("tr", {},
    el("td", {}, el("code", {}, t.id)), el("td", {}, t.model),
    el("td", {}, el("span", { class: "status status-" + (t.status === "completed" ? "online" : "offline") }, t.status)),
    el("td", { class: "task-node" }, t.node ? nodeText(t.node, t.location) : "–"),
    el("td", {}, t.seconds.toFixed(2)), el("td", {}, usd(t.cost)), el("td", {}, usd(t.openai_cost))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No task has ended in the last hour.")));
  $("recent").tBodies[0].replaceChildren(...rows);
}

// Charts on <canvas>, drawn here: bars for throughput, lines for percentiles.
function setupCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600, height = Math.round(width / 3);
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

function axes(ctx, width, height, max, unit) {
  const left = 40, bottom = height - 18;
  ctx.strokeStyle = "#cfd4dc"; ctx.fillStyle = "#4a5160"; ctx.font = "11px system-ui";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 2; i++) {
    const y = bottom - (bottom - 8) * i / 2;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(width - 4, y); ctx.stroke();
    ctx.fillText(formatTick(max * i / 2) + unit, 2, y + 4);
  }
  ctx.fillText("-60 min", left, height - 4);
  ctx.fillText("now", width - 28, height - 4);
  return { left, bottom, plotW: width - 4 - left, plotH: bottom - 8 };
}

function formatTick(v) { return v >= 10 ? Math.round(v) : v.toFixed(v >= 1 ? 1 : 2); }

function drawThroughput(minutes) {
  const { ctx, width, height } = setupCanvas($("chart-throughput"));
  const max = Math.max(1, ...minutes.map((m) => m.ended));
  const { left, bottom, plotW, plotH } = axes(ctx, width, height, max, "");
  const w = plotW / minutes.length;
  ctx.fillStyle = "#2f6f4f";
  minutes.forEach((m, i) => {
    const h = plotH * m.ended / max;
    ctx.fillRect(left + i * w + 1, bottom - h, Math.max(1, w - 2), h);
  });
  const total = minutes.reduce((a, m) => a + m.ended, 0);
  $("throughput-text").textContent = `(${total} in the last hour, ${minutes[minutes.length - 1].ended} in the last minute)`;
}

function drawLatency(minutes, hour) {
  const { ctx, width, height } = setupCanvas($("chart-latency"));
  const values = minutes.flatMap((m) => [m.p50, m.p95]).filter((v) => v !== null);
  const max = Math.max(0.01, ...values);
  const { left, bottom, plotW, plotH } = axes(ctx, width, height, max, "s");
  const w = plotW / minutes.length;
  for (const [key, colour] of [["p50", "#0b57d0"], ["p95", "#b3261e"]]) {
    ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    minutes.forEach((m, i) => {
      if (m[key] === null) { drawing = false; return; }
      const x = left + i * w + w / 2, y = bottom - plotH * m[key] / max;
      if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      drawing = true;
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    });
    ctx.stroke();
  }
  const f = (v) => (v === null ? "–" : v.toFixed(2) + " s");
  $("latency-text").textContent = `(hour: p50 ${f(hour.p50)}, p95 ${f(hour.p95)}, p99 ${f(hour.p99)})`;
}

let lastView = null;
function render(view) {
  lastView = view;
  renderSummary(view);
  renderNodes(view.nodes);
  renderQueue(view);
  renderRecent(view.recent);
  drawThroughput(view.minutes);
  drawLatency(view.minutes, view.hour);
  $("updated").textContent = "updated " + view.timestamp;
}

function connect() {
  const status = $("connection");
  const source = new EventSource("/api/network/events");
  source.addEventListener("open", () => { status.textContent = "Live"; status.className = "connection live"; });
  source.addEventListener("error", () => { status.textContent = "Reconnecting…"; status.className = "connection down"; });
  source.addEventListener("network", (event) => render(JSON.parse(event.data)));
}

window.addEventListener("resize", () => { if (lastView) render(lastView); });

// ---- the playground -----------------------------------------------------------

async function submitTask(body) {
  const response = await fetch("/api/tasks", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok || !answer.success) {
    throw new Error((answer.error || "refused") + ": " + (answer.details || response.status));
  }
  return answer;
}

function quoteText(created) {
  const node = created.node && created.node.id
    ? nodeText(created.node.id, created.node.location, created.node.gpu) : "no node online yet";
  return `${created.task_id} · quote ${created.cost.estimated} (OpenAI ${created.cost.comparison.openai}, ` +
    `saves ${created.cost.comparison.savings}) · about ${created.estimated_time} · node ${node}`;
}

function finalText(task) {
  const node = task.node ? nodeText(task.node.id, task.node.location, task.node.gpu) : "–";
  return `${task.id} · ${task.status} · node ${node} · cost ${usd(task.cost)} · ` +
    `${task.processing_time}s` + (task.error ? " · " + task.error : "");
}

// Follow a task's stream: onToken(text) for each streamed piece; resolves with the
// final task. The first progress event of each connection (EventSource reconnects
// on its own) replays all the text so far: only what was not shown yet is passed on.
function follow(taskId, onToken) {
  return new Promise((resolve, reject) => {
    const source = new EventSource(`/api/tasks/${encodeURIComponent(taskId)}/stream`);
    let shown = "";
    source.addEventListener("progress", (event) => {
      const partial = JSON.parse(event.data);
      let pieces = (partial.tokens || []).filter((piece) => typeof piece === "string");
      if (partial.replayed === true) {
        const whole = pieces.join("");
        pieces = whole.startsWith(shown) && whole.length > shown.length ? [whole.slice(shown.length)] : [];
      }
      for (const piece of pieces) {
        shown += piece;
        onToken(piece);
      }
    });
    source.addEventListener("done", (event) => { source.close(); resolve(JSON.parse(event.data)); });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) reject(new Error("the stream was closed"));
    });
  });
}

function playground(formId, metaId, build, onStart, onToken, onDone) {
  const form = $(formId), meta = $(metaId), button = form.querySelector("button");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    meta.classList.remove("error");
    meta.textContent = "Submitting…";
    try {
      onStart();
      const created = await submitTask(await build(form));
      meta.textContent = quoteText(created);
      const task = await follow(created.task_id, onToken);
      meta.textContent = finalText(task);
      onDone(task);
    } catch (error) {
      meta.textContent = String(error.message || error);
      meta.classList.add("error");
    } finally {
      button.disabled = false;
    }
  });
}

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function setupPlayground() {
  const textOut = $("text-output");
  let streamed = "";
  playground("text-form", "text-meta", (form) => ({
    prompt: form.prompt.value, model: form.model.value, priority: form.priority.value,
    max_tokens: Number(form.max_tokens.value),
  }), () => { streamed = ""; textOut.textContent = ""; },
  (piece) => { streamed += piece; textOut.textContent = streamed; },
  (task) => { if (task.result !== null && task.status === "completed") textOut.textContent = task.result; });

  const image = $("image-output"), url = $("image-url");
  playground("image-form", "image-meta", (form) => ({
    prompt: form.prompt.value, model: "stable-diffusion", steps: Number(form.steps.value),
  }), () => { image.hidden = true; url.textContent = ""; }, () => {},
  (task) => {
    if (task.status !== "completed" || !task.result) return;
    url.replaceChildren(el("a", { href: task.result }, task.result));
    if (task.content_type.startsWith("image/")) {
      image.src = task.result;
      image.alt = "Generated image: " + $("image-prompt").value;
      image.hidden = false;
    }
  });

  const audioOut = $("audio-output");
  let transcript = "";
  playground("audio-form", "audio-meta", async (form) => {
    const file = form.audio.files[0];
    if (!file) throw new Error("choose an audio file first");
    const body = { model: "whisper", audio: await fileBase64(file) };
    if (form.language.value) body.language = form.language.value;
    return body;
  }, () => { transcript = ""; audioOut.textContent = ""; },
  (piece) => { transcript += piece; audioOut.textContent = transcript; },
  (task) => { if (task.status === "completed" && task.result !== null) audioOut.textContent = task.result; });
}

document.addEventListener("DOMContentLoaded", () => {
  connect();
  setupPlayground();
});

// Interactive API documentation rendered from /openapi.json: every path and method
// with its summary, parameters and request body, and a form to try it (fetch from
// this page; a Bearer key is optional).
"use strict";

const $d = (id) => document.getElementById(id);

function node(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) n.setAttribute(k, v);
  for (const c of children) n.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return n;
}

function resolve(doc, schema) {
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()];
  return schema;
}

function example(doc, schema) {
  schema = resolve(doc, schema) || {};
  if (schema.default !== undefined) return schema.default;
  if (schema.type === "object" || schema.properties) {
    const out = {};
    for (const name of schema.required || Object.keys(schema.properties || {}).slice(0, 2)) {
      out[name] = example(doc, (schema.properties || {})[name]);
    }
    return out;
  }
  if (schema.enum) return schema.enum[0];
  return { string: "Hello world", integer: 1, number: 1, boolean: true, array: [] }[schema.type] ?? null;
}

let counter = 0;
function operation(doc, path, method, op) {
  const id = "op" + (counter++);
  const params = (op.parameters || []).filter((p) => p.in === "path" || p.in === "query");
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  const form = node("form", { class: "panel", "aria-labelledby": id + "-title" });
  form.append(node("h3", { id: id + "-title" }, node("code", {}, method.toUpperCase() + " " + path)));
  if (op.summary) form.append(node("p", {}, op.summary));
  if (op.description) form.append(node("p", { class: "muted" }, op.description));
  for (const p of params) {
    const inputId = `${id}-${p.name}`;
    form.append(node("label", { for: inputId }, `${p.name} (${p.in}${p.required ? ", required" : ""})`),
      node("input", { id: inputId, name: p.name, "data-in": p.in, type: "text" }));
  }
  if (body) {
    form.append(node("label", { for: id + "-body" }, "JSON body"));
    const area = node("textarea", { id: id + "-body", name: "__body", rows: "5" });
    area.value = JSON.stringify(example(doc, body.schema), null, 2);
    form.append(area);
  }
  form.append(node("label", { for: id + "-key" }, "API key (optional)"),
    node("input", { id: id + "-key", name: "__key", type: "password", autocomplete: "off" }));
  const streaming = path.endsWith("/events") || path.endsWith("/stream") || path === "/api/nodes/connect";
  const button = node("button", { type: "submit" }, "Try it");
  if (streaming) button.disabled = true;
  form.append(button);
  const out = node("output", { class: "out", "aria-live": "polite" });
  form.append(out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let url = path;
    const query = new URLSearchParams();
    for (const p of params) {
      const value = form.elements[p.name].value;
      if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(value));
      else if (value) query.set(p.name, value);
    }
    if ([...query].length) url += "?" + query;
    const headers = {};
    const key = form.elements.__key.value;
    if (key) headers.Authorization = "Bearer " + key;
    const init = { method: method.toUpperCase(), headers };
    if (body) { headers["Content-Type"] = "application/json"; init.body = form.elements.__body.value; }
    out.textContent = "…";
    try {
      const response = await fetch(url, init);
      const text = await response.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
      out.textContent = `${response.status} ${response.statusText}\n${shown.slice(0, 20000)}`;
    } catch (error) {
      out.textContent = String(error);
    }
  });
  return form;
}

document.addEventListener("DOMContentLoaded", async () => {
  const doc = await (await fetch("/openapi.json")).json();
  $d("doc-info").textContent = `${doc.info.title} ${doc.info.version} — ${doc.info.description || ""}`;
  const main = $d("operations");
  for (const [path, methods] of Object.entries(doc.paths)) {
    const section = node("section", {}, node("h2", {}, path));
    for (const [method, op] of Object.entries(methods)) {
      if (["get", "post", "put", "patch", "delete"].includes(method)) section.append(operation(doc, path, method, op));
    }
    main.append(section);
  }
});

// The Nexus dashboard: one EventSource per page (the server aggregates), DOM built with textContent only
// (backend names, models and reasons are untrusted text), the CSRF token kept in memory for writes.
"use strict";

const $ = (id) => document.getElementById(id);
let csrf = null;
let source = null;
let lastState = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

const fmt = {
  ms: (v) => (v === null || v === undefined ? "-" : `${Math.round(v)} ms`),
  pct: (v) => (v === null || v === undefined ? "-" : `${(v * 100).toFixed(1)}%`),
  usd: (v) => `$${Number(v || 0).toFixed(4)}`,
  age: (v) => (v === null || v === undefined ? "-" : `${Number(v).toFixed(1)} s`),
};

function badge(text, cls) { return el("span", { class: `badge ${cls || text}` }, text); }

function meter(fraction, soft) {
  const m = el("div", { class: "meter" });
  const fill = el("div", { class: "fill" });
  fill.style.width = `${Math.min(100, Math.max(0, fraction * 100))}%`;
  m.append(fill);
  if (soft !== undefined) {
    const s = el("div", { class: "mark soft", title: "soft limit" });
    s.style.left = `${soft * 100}%`;
    const h = el("div", { class: "mark hard", title: "hard limit" });
    h.style.left = "calc(100% - 2px)";
    m.append(s, h);
  }
  return m;
}

function renderBackends(backends) {
  const body = $("backends").tBodies[0];
  body.replaceChildren(...backends.map((b) => {
    const load = el("td", {}, meter(b.inflight / Math.max(1, b.max_concurrency)), ` ${b.inflight}/${b.max_concurrency}`);
    return el("tr", { "data-backend": b.name },
      el("td", {}, b.name, el("div", { class: "trace" }, `${b.type}, ${b.zone}`)),
      el("td", { class: "health" }, badge(b.health)),
      load,
      el("td", {}, fmt.ms(b.latency_ms)),
      el("td", {}, fmt.pct(b.error_rate_1h)),
      el("td", {}, fmt.ms(b.ttft_ms)),
      el("td", {}, b.models.join(", ")),
      el("td", { class: "note" }, b.unusable || ""));
  }));
}

function renderBudgets(budgets) {
  $("budgets").replaceChildren(...budgets.map((b) => {
    const limit = b.monthly_limit_usd;
    const text = limit === null ? `${fmt.usd(b.spend_usd)} (no limit)`
      : `${fmt.usd(b.spend_usd)} of ${fmt.usd(limit)} (soft at ${Math.round(b.soft_limit_percent * 100)}%)`;
    return el("div", { class: "budget", "data-scope": b.scope },
      el("div", {}, b.scope, " ", badge(b.status)),
      meter(limit ? b.spend_usd / limit : 0, b.soft_limit_percent),
      el("div", { class: "spend" }, text));
  }));
}

function chart(svg, rows) {
  const entries = Object.entries(rows).map(([name, t]) => [name, t.usd]).sort((a, b) => b[1] - a[1]).slice(0, 6);
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1e-12, ...entries.map((e) => e[1]));
  const nodes = [];
  entries.forEach(([name, usd], i) => {
    const y = i * 22 + 4;
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", "0"); label.setAttribute("y", String(y + 12));
    label.textContent = name.length > 18 ? `${name.slice(0, 17)}…` : name;
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", "120"); bar.setAttribute("y", String(y));
    bar.setAttribute("height", "16"); bar.setAttribute("width", String(Math.max(1, (usd / max) * 160)));
    bar.setAttribute("data-name", name);
    const value = document.createElementNS(ns, "text");
    value.setAttribute("x", String(126 + (usd / max) * 160)); value.setAttribute("y", String(y + 12));
    value.textContent = fmt.usd(usd);
    nodes.push(label, bar, value);
  });
  if (!entries.length) {
    const empty = document.createElementNS(ns, "text");
    empty.setAttribute("x", "0"); empty.setAttribute("y", "14"); empty.textContent = "no spend yet";
    nodes.push(empty);
  }
  svg.setAttribute("viewBox", "0 0 360 140");
  svg.replaceChildren(...nodes);
}

function renderNodes(nodes) {
  $("nodes").tBodies[0].replaceChildren(...nodes.map((n) => el("tr", { "data-node": n.node },
    el("td", {}, n.node),
    el("td", {}, badge(n.status), n.stale ? badge("stale") : ""),
    el("td", {}, n.snapshot_version),
    el("td", {}, fmt.age(n.snapshot_age_seconds)),
    el("td", {}, n.inflight),
    el("td", {}, n.queue_depth),
    el("td", {}, n.redis_ok ? "ok" : badge("down", "error")))));
}

function renderDecisions(decisions) {
  $("decisions").replaceChildren(...decisions.map((d) => {
    const steps = (d.steps || []).map((s) => `${s.reconciler}: ${s.remaining} left`).join(" → ");
    const head = d.decision === "route"
      ? `${d.requested_model} → ${d.backend} (${d.route_reason})`
      : `${d.requested_model}: ${d.decision}`;
    return el("li", {}, `${new Date(d.at * 1000).toLocaleTimeString()} ${d.node}: ${head}`,
      el("div", { class: "trace" }, steps, d.excluded ? ` · ${d.excluded} excluded` : ""));
  }));
}

function render(state) {
  if (state.error) {
    $("status").replaceChildren("state unavailable: ", state.error);
    $("status").className = "badge error";
    return;
  }
  lastState = state;
  $("status").textContent = "live";
  $("status").className = "badge healthy";
  $("updated").textContent = `updated ${new Date(state.at * 1000).toLocaleTimeString()}`;
  $("config-version").textContent = state.config_version;
  $("queue-depth").textContent = state.queue_depth;
  $("spend-total").textContent = fmt.usd(state.spend.total_usd);
  $("requests-total").textContent = state.spend.requests;
  $("spend-period").textContent = `period ${state.spend.period}`;
  renderBackends(state.backends);
  renderBudgets(state.budgets);
  chart($("spend-backend"), state.spend.by_backend);
  chart($("spend-model"), state.spend.by_model);
  chart($("spend-key"), state.spend.by_key);
  renderNodes(state.nodes);
  renderDecisions(state.decisions);
  const request = $("explain-request");
  if (!request.value && state.backends.length && state.backends[0].models.length) {
    request.value = JSON.stringify({ model: state.backends[0].models[0],
      messages: [{ role: "user", content: "Hello" }] }, null, 2);
  }
}

function connect() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  source = new EventSource("/dashboard/api/stream");
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = async () => {
    $("status").textContent = "reconnecting";
    $("status").className = "badge loading";
    const r = await fetch("/dashboard/session", { credentials: "same-origin" });
    if (r.status === 401) signedOut();
  };
}

function signedOut() {
  if (source) source.close();
  source = null; csrf = null;
  $("app").hidden = true; $("logout").hidden = true; $("login").hidden = false;
  $("status").textContent = "signed out"; $("status").className = "badge";
}

async function write(method, url, body) {
  return fetch(url, { method, credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf || "" },
    body: body === undefined ? undefined : JSON.stringify(body) });
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token");
  const r = await fetch("/dashboard/session", { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: token.value }) });
  token.value = "";  // the token is not kept: the session cookie (HttpOnly) stands for it from now on
  if (!r.ok) { $("login-error").textContent = "Wrong admin token."; return; }
  $("login-error").textContent = "";
  csrf = (await r.json()).csrf;
  connect();
}

async function explainRoute(event) {
  event.preventDefault();
  $("explain-error").textContent = "";
  let request;
  try { request = JSON.parse($("explain-request").value); } catch (e) {
    $("explain-error").textContent = `not JSON: ${e.message}`; return;
  }
  const r = await write("POST", "/dashboard/api/explain", { request });
  const body = await r.json();
  if (!r.ok) { $("explain-error").textContent = body.detail || `HTTP ${r.status}`; return; }
  $("explain-result").hidden = false;
  $("explain-decision").textContent = body.decision;
  $("explain-backend").textContent = body.backend || (body.candidates || []).join(", ") || "none";
  $("explain-reason").textContent = body.route_reason || body.queue_reason || "";
  $("explain-steps").replaceChildren(...body.steps.map((s) => el("li", { "data-reconciler": s.reconciler },
    `${s.reconciler}: ${s.remaining} left`, s.excluded.length
      ? el("div", { class: "trace" }, s.excluded.map((x) => `${x.agent_id}: ${x.reason}`).join("; ")) : "")));
  $("explain-json").textContent = JSON.stringify(body, null, 2);
}

async function start() {
  $("login-form").addEventListener("submit", signIn);
  $("explain-form").addEventListener("submit", explainRoute);
  $("logout").addEventListener("click", async () => { await write("DELETE", "/dashboard/session"); signedOut(); });
  const r = await fetch("/dashboard/session", { credentials: "same-origin" });
  if (r.ok) { csrf = (await r.json()).csrf; connect(); } else { signedOut(); }
}

document.addEventListener("DOMContentLoaded", start);
window.nexusDashboard = { state: () => lastState };

// vesemir fleet dashboard. Plain JS, no dependencies, served by the
// controller from its binary. Every data call goes to the JSON API with the
// bearer token the user typed once; the token lives in sessionStorage only.
// Text from the API (agent facts, log lines, errors) is always inserted as
// text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "vesemir.token";
const CONTROLLER_VERSION = document.querySelector('meta[name="vesemir-version"]').content;
const REFRESH_MS = 5000;
const DETAIL_REFRESH_MS = 2000;
const REQUEST_TIMEOUT_MS = 10000;
/** Most log lines kept in the page; older ones are dropped (bounded memory). */
const MAX_LOG_LINES = 5000;
/** Most agent rows drawn at once; the filter narrows a bigger fleet. */
const MAX_AGENT_ROWS = 1000;
const FINAL = new Set(["succeeded", "failed", "aborted", "cancelled"]);
/** Sort order of agent states: problems first. */
const STATE_ORDER = { stale: 0, disconnected: 1, connected: 2, revoked: 3 };

const $ = (sel) => document.querySelector(sel);

/** Builds an element: el("td", {class: "x"}, "text", childNode…). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// ---- API ----------------------------------------------------------------

class Unauthorized extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** One API call with the token and a timeout; JSON in and out. */
async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(path, {
      method: opts.method || "GET",
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal: AbortSignal.timeout(opts.timeout || REQUEST_TIMEOUT_MS),
      cache: "no-store",
    });
  } catch (e) {
    throw new Error(`controller unreachable (${e.name === "TimeoutError" ? "timed out" : e.message})`);
  }
  if (r.status === 401) throw new Unauthorized("the token was refused");
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) {
    const msg = body && body.error ? body.error.message : `${r.status} ${r.statusText}`;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

// ---- formatting ---------------------------------------------------------

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today ? clock(iso) : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hour12: false });
}

function badge(status) {
  return el("span", { class: `badge s-${status}` }, status);
}

/** What an HAProxy action's agent answered, in words ("Done" says nothing). */
function actionDetail(a) {
  const raw = (a.detail || "").trim();
  let v;
  try { v = JSON.parse(raw); } catch { return raw; }
  const parts = (Array.isArray(v) ? v : [v]).map((x) => {
    if (x === "Done") return null;
    const drained = x && x.Drain;
    if (drained && drained.Drained) return `sessions ended after ${duration(drained.Drained.after_ms)}`;
    if (drained && drained.TimedOut) return `still ${drained.TimedOut.scur ?? "some"} sessions at the degradation time`;
    return typeof x === "string" ? x : JSON.stringify(x);
  }).filter(Boolean);
  return parts.join("; ");
}

/** A segmented bar: succeeded, failed (+unreachable), running, skipped, pending. */
function progress(summary, total) {
  const bar = el("div", { class: "progress", role: "img" });
  const parts = [
    ["succeeded", summary.succeeded || 0],
    ["failed", (summary.failed || 0) + (summary.unreachable || 0)],
    ["running", summary.running || 0],
    ["skipped", summary.skipped || 0],
  ];
  const n = total || parts.reduce((a, [, v]) => a + v, 0) + (summary.pending || 0);
  const done = (summary.succeeded || 0) + (summary.failed || 0) + (summary.unreachable || 0) + (summary.skipped || 0);
  for (const [k, v] of parts) {
    if (v > 0 && n > 0) {
      // Through the CSSOM: the page's CSP refuses inline style attributes.
      const seg = el("span", { class: `seg s-${k}`, title: `${v} ${k}` });
      seg.style.width = `${(100 * v) / n}%`;
      bar.append(seg);
    }
  }
  bar.setAttribute("aria-label", `${done} of ${n} hosts done`);
  return el("div", { class: "progress-wrap" }, bar, el("span", { class: "muted small" }, `${done}/${n}`));
}

// ---- state --------------------------------------------------------------

const ui = {
  agents: [],
  deployments: [],
  details: new Map(), // id -> detail JSON, for running deployments' progress
  sort: { key: null, dir: 1 },
  stateFilter: new Set(),
  selected: null, // deployment id shown in the detail panel
  detail: null,
  log: null, // { id, abort, lines, host }
  lastOk: null,
  timers: [],
};

function showBanner(text) {
  const b = $("#banner");
  b.textContent = text;
  b.hidden = !text;
}

function askToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  stopTimers();
  $("#main").hidden = true;
  $("#sign-out").hidden = true;
  const err = $("#token-error");
  err.textContent = message || "";
  err.hidden = !message;
  const d = $("#token-dialog");
  if (!d.open) d.showModal();
  $("#token-input").focus();
}

function handleError(e) {
  if (e instanceof Unauthorized) {
    askToken("That token was refused: check it and paste it again.");
    return;
  }
  showBanner(`${e.message}: showing what was last loaded${ui.lastOk ? ` (${ago(ui.lastOk)})` : ""}; retrying.`);
}

// ---- agents -------------------------------------------------------------

function agentRow(a) {
  const f = a.facts || {};
  return {
    a,
    state: a.state,
    name: a.name,
    version: a.version || "",
    last_seen: a.last_seen ? Date.parse(a.last_seen) : 0,
    load: f.load ? f.load[0] : null,
    disk: f.disk_free_bytes ?? null,
    address: a.remote_addr || "",
    jobs: f.running_jobs ? f.running_jobs.length : 0,
    os: f.os || "",
  };
}

function sortedAgents() {
  const q = $("#agent-filter").value.trim().toLowerCase();
  let rows = ui.agents.map(agentRow);
  if (ui.stateFilter.size) rows = rows.filter((r) => ui.stateFilter.has(r.state));
  if (q) {
    rows = rows.filter((r) =>
      [r.name, r.address, r.version, r.state, r.os, (r.a.facts || {}).hostname || ""].some((s) => s.toLowerCase().includes(q)));
  }
  const { key, dir } = ui.sort;
  rows.sort((x, y) => {
    // Stale agents always come first: they look alive but are not answering.
    const pin = (x.state === "stale" ? 0 : 1) - (y.state === "stale" ? 0 : 1);
    if (pin) return pin;
    if (key) {
      let a = x[key], b = y[key];
      if (key === "state") { a = STATE_ORDER[a]; b = STATE_ORDER[b]; }
      if (a === null) return 1;
      if (b === null) return -1;
      const c = typeof a === "number" ? a - b : String(a).localeCompare(String(b), undefined, { numeric: true });
      if (c) return c * dir;
    } else {
      const c = STATE_ORDER[x.state] - STATE_ORDER[y.state];
      if (c) return c;
    }
    return x.name.localeCompare(y.name, undefined, { numeric: true });
  });
  return rows;
}

function renderAgents() {
  const counts = { connected: 0, stale: 0, disconnected: 0, revoked: 0 };
  let otherVersion = 0;
  for (const a of ui.agents) {
    counts[a.state] = (counts[a.state] || 0) + 1;
    if (a.state !== "revoked" && a.version && a.version !== CONTROLLER_VERSION) otherVersion++;
  }
  const pills = $("#fleet-pills");
  pills.replaceChildren(...[
    ...Object.entries(counts).map(([s, n]) =>
      el("button", {
        class: `pill s-${s}${n === 0 ? " zero" : ""}${ui.stateFilter.has(s) ? " on" : ""}`,
        title: `show only ${s} agents`,
        onclick: () => toggleState(s),
      }, el("b", {}, n), ` ${s}`)),
    otherVersion ? el("span", { class: "pill warn", title: `agents not on the controller's version ${CONTROLLER_VERSION}` }, el("b", {}, otherVersion), " other version") : null,
    el("span", { class: "pill" }, el("b", {}, ui.deployments.filter((d) => !FINAL.has(d.status)).length), " deploying"),
  ].filter(Boolean));
  $("#state-chips").replaceChildren(
    ...Object.keys(counts).map((s) =>
      el("button", { class: `chip${ui.stateFilter.has(s) ? " on" : ""}`, onclick: () => toggleState(s) }, s)));

  // The tab title says what needs a look, for a page kept open all day.
  const trouble = [counts.stale && `${counts.stale} stale`, counts.disconnected && `${counts.disconnected} disconnected`].filter(Boolean);
  document.title = `${trouble.length ? `(${trouble.join(", ")}) ` : ""}vesemir · fleet`;

  const rows = sortedAgents();
  $("#agents-count").textContent = rows.length === ui.agents.length
    ? `${ui.agents.length} enrolled`
    : `${rows.length} of ${ui.agents.length} shown`;
  const tbody = $("#agents tbody");
  if (!rows.length) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "empty" },
      ui.agents.length ? "no agent matches the filter" : "no agent enrolled yet: `vesemir tokens create`, then `vesemir-agent enroll` on the VM")));
  } else {
    const more = rows.length - MAX_AGENT_ROWS;
    tbody.replaceChildren(...rows.slice(0, MAX_AGENT_ROWS).map((r) => {
      const a = r.a, f = a.facts || {};
      const off = r.version && r.version !== CONTROLLER_VERSION;
      const load = f.load ? f.load.map((x) => x.toFixed(2)).join(" ") : "";
      return el("tr", { class: `agent s-${a.state}`, dataset: { name: a.name, state: a.state } },
        el("td", {}, el("span", { class: `dot s-${a.state}` }), a.state),
        el("td", { class: "name", title: f.hostname ? `hostname ${f.hostname}${f.kernel ? `, kernel ${f.kernel}` : ""}` : null }, a.name),
        el("td", { class: off ? "version off" : "version", title: off ? `controller is ${CONTROLLER_VERSION}` : null }, r.version),
        el("td", { title: a.last_seen || "", class: a.state === "stale" ? "hot" : null }, ago(a.last_seen)),
        el("td", { class: "num", title: load ? `1m 5m 15m: ${load}` : null }, r.load === null ? "" : r.load.toFixed(2)),
        el("td", { class: `num${r.disk !== null && r.disk < 1024 ** 3 ? " hot" : ""}` }, bytes(r.disk)),
        el("td", { class: "mono" }, r.address),
        el("td", { class: "num", title: (f.running_jobs || []).join("\n") || null }, r.jobs || ""),
        el("td", { class: "muted small os" }, r.os));
    }));
    if (more > 0) tbody.append(el("tr", {}, el("td", { colspan: 9, class: "empty" }, `${more} more: filter to narrow`)));
  }
  for (const th of document.querySelectorAll("#agents th")) {
    th.classList.toggle("sorted", th.dataset.key === ui.sort.key);
    th.dataset.dir = th.dataset.key === ui.sort.key ? (ui.sort.dir > 0 ? "asc" : "desc") : "";
  }
}

function toggleState(s) {
  if (ui.stateFilter.has(s)) ui.stateFilter.delete(s);
  else ui.stateFilter.add(s);
  renderAgents();
}

// ---- deployments --------------------------------------------------------

function renderDeployments(total) {
  $("#deployments-count").textContent = total > ui.deployments.length
    ? `latest ${ui.deployments.length} of ${total}` : `${total}`;
  const tbody = $("#deployments tbody");
  if (!ui.deployments.length) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "no deployment yet: `vesemir deploy …`")));
    return;
  }
  tbody.replaceChildren(...ui.deployments.map((d) => {
    const det = ui.details.get(d.id);
    const prog = det ? progress(det.summary, det.hosts_total)
      : el("span", { class: "muted small" }, `${d.hosts_total} host${d.hosts_total === 1 ? "" : "s"}`);
    return el("tr", {
      class: `deployment clickable${ui.selected === d.id ? " selected" : ""}`,
      dataset: { id: d.id, status: d.status },
      tabindex: 0,
      onclick: () => select(d.id),
      onkeydown: (e) => { if (e.key === "Enter") select(d.id); },
    },
    el("td", {}, badge(d.status)),
    el("td", { class: "name" }, d.application, el("span", { class: "muted" }, ` · ${d.environment}`)),
    el("td", { class: "mono" }, d.changeset ? d.changeset.version : d.playbook || ""),
    el("td", {}, prog),
    el("td", { class: "muted by" }, d.requested_by),
    el("td", { title: d.created_at }, when(d.started_at || d.created_at)),
    el("td", {}, d.duration_ms !== null ? duration(d.duration_ms)
      : d.started_at ? duration(Date.now() - Date.parse(d.started_at)) : ""));
  }));
}

/** Two columns while a deployment or a plan is open: the fleet stays in view. */
function layout() {
  const side = !$("#deployment-detail").hidden || !$("#plan-panel").hidden;
  $("#col-side").hidden = !side;
  $("#main").classList.toggle("has-side", side);
}

function select(id) {
  if (location.hash !== `#/deployments/${id}`) location.hash = `#/deployments/${id}`;
  else route();
}

function route() {
  const m = location.hash.match(/^#\/deployments\/([\w.-]+)$/);
  const id = m ? m[1] : null;
  if (id !== ui.selected) {
    stopLog();
    ui.selected = id;
    ui.detail = null;
  }
  $("#deployment-detail").hidden = !id;
  if (id) {
    $("#plan-panel").hidden = true;
    refreshDetail().catch(handleError);
  }
  layout();
  renderDeployments(ui.total || ui.deployments.length);
}

function renderDetail() {
  const d = ui.detail;
  if (!d) return;
  $("#detail-title").textContent = `${d.application} · ${d.environment}`;
  $("#detail-status").replaceChildren(badge(d.cancel_requested && !FINAL.has(d.status) ? "cancelling" : d.status));
  const fact = (k, v) => (v === null || v === undefined || v === "" ? null : el("div", { class: "fact" }, el("span", { class: "k" }, k), el("span", { class: "v" }, v)));
  const hp = d.request && d.request.haproxy;
  $("#detail-facts").replaceChildren(...[
    fact("id", d.id),
    fact("team", d.team),
    fact("by", d.requested_by),
    fact("changeset", d.changeset ? d.changeset.version : null),
    fact("playbook", d.playbook),
    fact("hosts", d.hosts_total),
    fact("concurrency", d.concurrency),
    fact("max unavailable", d.max_unavailable),
    fact("max fail", d.max_fail_percentage !== null && d.max_fail_percentage !== undefined ? `${d.max_fail_percentage}%` : null),
    fact("backend", hp ? hp.backend : null),
    fact("HAProxy VMs", (d.haproxy_vms || []).join(", ")),
    fact("started", d.started_at ? `${when(d.started_at)} (${ago(d.started_at)})` : null),
    fact("took", d.duration_ms !== null ? duration(d.duration_ms) : d.started_at ? `${duration(Date.now() - Date.parse(d.started_at))} so far` : null),
    fact("query", d.query),
  ].filter(Boolean));
  $("#detail-progress").replaceChildren(progress(d.summary, d.hosts_total));
  const err = $("#detail-error");
  err.textContent = d.error || "";
  err.hidden = !d.error;

  $("#detail-hosts tbody").replaceChildren(...d.hosts.map((h) => {
    const s = h.stats;
    return el("tr", { class: `host s-${h.status}`, dataset: { host: h.name, status: h.status } },
      el("td", { class: "name" }, el("button", { class: "link", title: "show this host's log", onclick: () => { $("#log-host").value = h.name; renderLog(); } }, h.name),
        el("div", { class: "muted small mono" }, h.address)),
      el("td", {}, badge(h.status)),
      el("td", {}, h.status === "running" ? h.step || "" : ""),
      el("td", { class: "mono" }, h.server_name, h.rotation && h.rotation !== "in" ? el("span", { class: "muted small" }, ` ${h.rotation}`) : null),
      el("td", { class: "mono small" },
        el("span", { class: "ok" }, `${s.ok}`), " / ", el("span", { class: "changed" }, `${s.changed}`), " / ",
        el("span", { class: s.failed ? "bad" : "" }, `${s.failed}`), " / ", `${s.unreachable}`, " / ", `${s.skipped}`),
      el("td", {}, h.duration_ms !== null ? duration(h.duration_ms) : h.started_at ? duration(Date.now() - Date.parse(h.started_at)) : ""),
      el("td", { class: "error-cell" }, h.error || ""));
  }));
  const sel = $("#log-host");
  const want = sel.value;
  sel.replaceChildren(el("option", { value: "" }, "all hosts"), ...d.hosts.map((h) => el("option", { value: h.name }, h.name)));
  sel.value = want;

  const actions = d.haproxy_actions || [];
  $("#actions-count").textContent = actions.length ? `${actions.length}, newest first` : "";
  $("#detail-actions tbody").replaceChildren(...(actions.length ? actions.slice(-200).reverse().map((a) =>
    el("tr", { class: a.ok ? "" : "s-failed" },
      el("td", { title: a.at }, clock(a.at)),
      el("td", {}, a.host),
      el("td", {}, a.haproxy_vm),
      el("td", { class: "mono" }, a.action),
      el("td", {}, a.ok ? el("span", { class: "ok" }, "ok") : el("span", { class: "bad" }, "failed")),
      el("td", { class: "detail-cell small" }, actionDetail(a)))) : [el("tr", {}, el("td", { colspan: 6, class: "empty" }, hp ? "none yet" : "no HAProxy in this deployment"))]));
}

async function refreshDetail() {
  const id = ui.selected;
  if (!id) return;
  let d;
  try {
    d = await api(`/v1/deployments/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e.status === 404) {
      $("#detail-title").textContent = `no deployment ${id}`;
      return;
    }
    throw e;
  }
  if (ui.selected !== id) return;
  ui.detail = d;
  renderDetail();
  if (!ui.log || ui.log.id !== id) startLog(id);
}

// ---- live log -----------------------------------------------------------

function stopLog() {
  if (ui.log) ui.log.abort.abort();
  ui.log = null;
  $("#log").replaceChildren();
}

function logText(l) {
  const host = l.host ? `${l.host} ` : "";
  switch (l.type) {
    case "log": return `${host}${l.stream === "stderr" ? "! " : ""}${l.line}`;
    case "task_started": return `${host}TASK [${l.name}]`;
    case "task_result": return `${host}${(l.status || "").toUpperCase()} [${l.name}] ${duration(l.duration_ms)}${l.msg ? ` ${l.msg}` : ""}`;
    case "step": return `${host}→ ${l.step}`;
    case "host_finished": return `${host}host ${l.status}${l.error ? `: ${l.error}` : ""}`;
    case "haproxy": return `${host}haproxy ${l.action} on ${l.haproxy_vm}: ${l.ok ? "ok" : "FAILED"}${l.detail && !l.ok ? ` ${l.detail}` : ""}`;
    case "deployment": return `deployment ${l.status}${l.hosts !== undefined ? ` (${l.hosts} hosts)` : ""}${l.error ? `: ${l.error}` : ""}`;
    case "end": return `— end: ${l.status}`;
    case "error": return `! ${l.message}`;
    default: return `${host}${l.type}`;
  }
}

function logClass(l) {
  if (l.type === "task_result") return `t-${l.status}`;
  if (l.type === "host_finished" || l.type === "deployment" || l.type === "end") return `t-${l.status}`;
  if (l.type === "haproxy") return l.ok ? "t-haproxy" : "t-failed";
  if (l.type === "log" && l.stream === "stderr") return "t-stderr";
  if (l.type === "error") return "t-failed";
  return `t-${l.type}`;
}

function logLine(l) {
  return el("div", { class: `ll ${logClass(l)}`, dataset: { host: l.host || "" } },
    el("span", { class: "ts" }, clock(l.ts)), " ", logText(l));
}

function renderLog() {
  if (!ui.log) return;
  const host = $("#log-host").value;
  const pre = $("#log");
  pre.replaceChildren(...ui.log.lines.filter((l) => !host || !l.host || l.host === host).map(logLine));
  pre.scrollTop = pre.scrollHeight;
}

/** Follows the deployment's NDJSON log (fetch, since EventSource can't send a token). */
async function startLog(id) {
  stopLog();
  const abort = new AbortController();
  const log = { id, abort, lines: [] };
  ui.log = log;
  const state = $("#log-state");
  state.textContent = "loading…";
  const finished = ui.detail && FINAL.has(ui.detail.status);
  try {
    const r = await fetch(`/v1/deployments/${encodeURIComponent(id)}/logs${finished ? "" : "?follow=true"}`, {
      headers: { Authorization: `Bearer ${token()}` },
      signal: abort.signal,
      cache: "no-store",
    });
    if (r.status === 401) throw new Unauthorized("refused");
    if (!r.ok) throw new Error(`log: ${r.status}`);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    state.textContent = finished ? "" : "live";
    state.classList.toggle("live", !finished);
    const pre = $("#log");
    for (;;) {
      // The server sends a keepalive every 10 s: 30 s of silence means the
      // stream is dead, so reconnect rather than show a frozen log.
      const timer = setTimeout(() => abort.abort(), 30000);
      const { value, done } = await reader.read();
      clearTimeout(timer);
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      const host = $("#log-host").value;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 40;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        let l;
        try { l = JSON.parse(line); } catch { continue; }
        if (l.type === "keepalive") continue;
        log.lines.push(l);
        if (!host || !l.host || l.host === host) pre.append(logLine(l));
        if (l.type === "end" || l.type.startsWith("host_finished")) refreshDetail().catch(handleError);
      }
      if (log.lines.length > MAX_LOG_LINES) {
        log.lines.splice(0, log.lines.length - MAX_LOG_LINES);
        while (pre.childElementCount > MAX_LOG_LINES) pre.firstChild.remove();
      }
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
    state.textContent = log.lines.length ? "" : "no log lines";
    state.classList.remove("live");
  } catch (e) {
    if (ui.log !== log) return; // replaced or closed
    if (e instanceof Unauthorized) { handleError(e); return; }
    state.textContent = "reconnecting…";
    state.classList.remove("live");
    setTimeout(() => { if (ui.log === log) startLog(id); }, 3000);
  }
}

// ---- dry run ------------------------------------------------------------

function openPlan(request) {
  const req = request ? { ...request } : {
    application: "", environment: "", team: "",
    selector: { tags: [] },
    playbook: "deploy.yml",
    changeset: { version: "", url: "", sha256: "" },
    concurrency: 1,
  };
  delete req.dry_run;
  $("#plan-request").value = JSON.stringify(req, null, 2);
  $("#plan-result").replaceChildren(el("p", { class: "muted" }, "Edit the request, then Dry run: the controller resolves the hosts and HAProxy VMs and checks agents and backends."));
  $("#plan-panel").hidden = false;
  if (request === null && ui.selected) location.hash = "";
  layout();
  $("#col-side").scrollTop = 0;
}

async function runPlan() {
  const out = $("#plan-result");
  let req;
  try {
    req = JSON.parse($("#plan-request").value);
  } catch (e) {
    out.replaceChildren(el("p", { class: "error" }, `not JSON: ${e.message}`));
    return;
  }
  req.dry_run = true;
  out.replaceChildren(el("p", { class: "muted" }, "planning…"));
  let p;
  try {
    p = await api("/v1/deployments", { method: "POST", body: req, timeout: 60000 });
  } catch (e) {
    if (e instanceof Unauthorized) return handleError(e);
    out.replaceChildren(el("p", { class: "error" }, e.message));
    return;
  }
  const problems = p.problems || [];
  const hp = p.haproxy;
  out.replaceChildren(...[
    el("div", { class: "facts" },
      el("div", { class: "fact" }, el("span", { class: "k" }, "hosts"), el("span", { class: "v" }, p.hosts.length)),
      el("div", { class: "fact" }, el("span", { class: "k" }, "concurrency"), el("span", { class: "v" }, p.concurrency)),
      el("div", { class: "fact" }, el("span", { class: "k" }, "max unavailable"), el("span", { class: "v" }, p.max_unavailable)),
      el("div", { class: "fact" }, el("span", { class: "k" }, "query"), el("span", { class: "v mono" }, p.query)),
      p.haproxy_query ? el("div", { class: "fact" }, el("span", { class: "k" }, "HAProxy query"), el("span", { class: "v mono" }, p.haproxy_query)) : null),
    problems.length
      ? el("div", { class: "problems" }, el("h3", {}, `${problems.length} problem${problems.length === 1 ? "" : "s"}`), el("ul", {}, ...problems.map((x) => el("li", {}, x))))
      : el("p", { class: "ok" }, "no problem found: every host has a connected agent" + (hp ? " and every HAProxy VM knows the backend" : "")),
    el("h3", {}, "Batches"),
    el("ol", { class: "batches" }, ...p.batches.map((b) => el("li", {}, b.join(", ")))),
    el("h3", {}, "Hosts"),
    el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", {}, "host"), el("th", {}, "address"), el("th", {}, "server"), el("th", {}, "agent"))),
      el("tbody", {}, ...p.hosts.map((h) => el("tr", {},
        el("td", { class: "name" }, h.name), el("td", { class: "mono" }, h.address), el("td", { class: "mono" }, h.server_name),
        el("td", {}, el("span", { class: `dot s-${h.agent}` }), h.agent))))),
    hp ? el("h3", {}, `HAProxy backend ${hp.backend}`) : null,
    hp ? el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", {}, "HAProxy VM"), el("th", {}, "agent"), el("th", {}, "servers"))),
      el("tbody", {}, ...hp.vms.map((v) => el("tr", {},
        el("td", { class: "name" }, v.name), el("td", {}, el("span", { class: `dot s-${v.agent}` }), v.agent),
        el("td", { class: "mono small" }, (v.servers || []).join(", ")))))) : null,
  ].filter(Boolean));
}

// ---- refresh loop -------------------------------------------------------

function stopTimers() {
  for (const t of ui.timers) clearInterval(t);
  ui.timers = [];
  stopLog();
}

async function refresh() {
  try {
    const [agents, list] = await Promise.all([
      api("/v1/agents"),
      api("/v1/deployments?limit=25"),
    ]);
    ui.agents = agents;
    ui.deployments = list.deployments;
    // Per-host progress: refetched while a deployment runs (one per
    // application and environment); a finished one never changes, so it
    // is fetched once and kept.
    const want = list.deployments.filter((d) => !FINAL.has(d.status) || !(ui.details.get(d.id) && FINAL.has(ui.details.get(d.id).status)));
    const details = await Promise.all(want.slice(0, 12).map((d) => api(`/v1/deployments/${encodeURIComponent(d.id)}`).catch(() => null)));
    for (const d of details.filter(Boolean)) ui.details.set(d.id, d);
    const listed = new Set(list.deployments.map((d) => d.id));
    for (const id of ui.details.keys()) if (!listed.has(id)) ui.details.delete(id);
    ui.total = list.total;
    ui.lastOk = new Date().toISOString();
    showBanner("");
    renderAgents();
    renderDeployments(list.total);
    $("#refresh-state").textContent = `updated ${clock(ui.lastOk)}`;
    document.body.dataset.loaded = "true";
  } catch (e) {
    handleError(e);
  }
}

function start() {
  $("#main").hidden = false;
  $("#sign-out").hidden = false;
  stopTimers();
  refresh().then(route);
  ui.timers.push(setInterval(refresh, REFRESH_MS));
  ui.timers.push(setInterval(() => {
    if (ui.selected && ui.detail && !FINAL.has(ui.detail.status)) refreshDetail().catch(handleError);
  }, DETAIL_REFRESH_MS));
}

document.addEventListener("DOMContentLoaded", () => {
  $("#controller-version").textContent = CONTROLLER_VERSION;
  $("#token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const t = $("#token-input").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    try {
      await api("/v1/agents");
    } catch (err) {
      if (err instanceof Unauthorized) return askToken("That token was refused: check it and paste it again.");
      $("#token-error").textContent = err.message;
      $("#token-error").hidden = false;
      return;
    }
    $("#token-input").value = "";
    $("#token-dialog").close();
    start();
  });
  $("#token-dialog").addEventListener("cancel", (e) => e.preventDefault());
  $("#sign-out").addEventListener("click", () => askToken(""));
  $("#agent-filter").addEventListener("input", renderAgents);
  for (const th of document.querySelectorAll("#agents th[data-key]")) {
    th.addEventListener("click", () => {
      const k = th.dataset.key;
      ui.sort = ui.sort.key === k ? { key: k, dir: -ui.sort.dir } : { key: k, dir: 1 };
      renderAgents();
    });
  }
  $("#detail-close").addEventListener("click", () => { location.hash = ""; });
  $("#detail-replan").addEventListener("click", () => openPlan(ui.detail && ui.detail.request));
  $("#open-plan").addEventListener("click", () => openPlan(null));
  $("#plan-close").addEventListener("click", () => { $("#plan-panel").hidden = true; layout(); });
  $("#plan-run").addEventListener("click", runPlan);
  $("#log-host").addEventListener("change", renderLog);
  window.addEventListener("hashchange", route);
  if (token()) start();
  else askToken("");
});

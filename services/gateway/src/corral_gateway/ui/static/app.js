// Corral's operator page: one event stream (GET /admin/lane/events) drawn into tables, plus
// the loaded models (GET /api/ps) and the lane's buttons (POST /admin/lane/{action}, DELETE
// /admin/queue/{id}). With auth on, the admin key is asked for once, kept for this tab only
// (sessionStorage) and sent as a header; fetch reads the stream, as EventSource cannot send one.
"use strict";

const KEY_STORAGE = "corral.adminKey";
const ROOT = new URL("..", location.href); // the gateway, whatever path it is served under
const MODELS_EVERY_MS = 5000;
const RETRY_MAX_MS = 10000;

const $ = (id) => document.getElementById(id);
let admin = false;
let stream = null; // the AbortController of the open stream
let retryMs = 500;
let lane = null; // the latest snapshot
let loaded = {at: 0, models: null}; // /api/ps, refreshed at most every MODELS_EVERY_MS

// -- talking to the gateway ---------------------------------------------------------------

function adminKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function withKey(headers = {}) {
  const key = adminKey();
  return key ? {...headers, Authorization: `Bearer ${key}`} : headers;
}

async function connect() {
  if (stream) stream.abort();
  const abort = (stream = new AbortController());
  setConnection("connecting…");
  let response;
  try {
    response = await fetch(new URL("admin/lane/events", ROOT), {
      headers: withKey({Accept: "text/event-stream"}),
      signal: abort.signal,
      cache: "no-store",
    });
  } catch (error) {
    return abort.signal.aborted || reconnect();
  }
  if (response.status === 401) return askForKey(adminKey() ? "That key was not accepted." : "");
  if (response.status === 403) return askForKey("That key is not an admin key.");
  if (!response.ok) {
    setConnection(`error ${response.status}`);
    return reconnect();
  }
  retryMs = 500;
  $("key-form").hidden = true;
  $("forget-key").hidden = !adminKey();
  setAdmin(true);
  setConnection("live");
  try {
    await readEvents(response.body, (data) => show(JSON.parse(data)));
  } catch (error) {
    if (abort.signal.aborted) return;
  }
  if (!abort.signal.aborted) reconnect();
}

// Server-sent events: blocks separated by a blank line; `data:` lines carry the payload,
// lines starting with `:` are comments (the keep-alive).
async function readEvents(body, onData) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) onData(data);
    }
  }
}

function reconnect() {
  setConnection("reconnecting…");
  setTimeout(connect, retryMs);
  retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
}

async function act(method, path, what) {
  $("message").hidden = true;
  try {
    const response = await fetch(new URL(path, ROOT), {method, headers: withKey()});
    if (response.ok) return;
    const body = await response.json().catch(() => ({}));
    showMessage(`${what}: ${response.status} ${body.error?.message ?? ""}`);
  } catch (error) {
    showMessage(`${what}: ${error.message}`);
  }
}

async function refreshModels() {
  if (Date.now() - loaded.at < MODELS_EVERY_MS) return;
  loaded.at = Date.now();
  try {
    const response = await fetch(new URL("api/ps", ROOT), {headers: withKey()});
    loaded.models = response.ok ? (await response.json()).models : null;
  } catch (error) {
    loaded.models = null;
  }
  drawModels();
}

// -- the key and the buttons ----------------------------------------------------------------

function askForKey(problem) {
  setAdmin(false);
  setConnection("needs an admin key");
  $("key-form").hidden = false;
  $("forget-key").hidden = !adminKey();
  $("key-error").textContent = problem;
  $("key").focus();
}

function setAdmin(isAdmin) {
  admin = isAdmin;
  document.querySelector("main").hidden = !isAdmin; // nothing of the lane without a key
  for (const element of document.querySelectorAll(".admin-only")) element.hidden = !isAdmin;
}

function setConnection(text) {
  $("connection").textContent = text;
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = false;
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("key").value.trim());
  $("key").value = "";
  connect();
});
$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  connect();
});
for (const action of ["pause", "resume", "drain"]) {
  $(action).addEventListener("click", () => act("POST", `admin/lane/${action}`, action));
}

// -- drawing ----------------------------------------------------------------------------------

function show(next) {
  lane = next;
  const state = laneState(lane);
  $("lane-state").textContent = state;
  $("lane-state").className = `badge ${state.split(" ")[0]}`;
  $("waiting-total").textContent = lane.waiting_total ? `(${lane.waiting_total})` : "";
  drawServers(lane.servers);
  fill("running", lane.running, "nothing running", (e) => [
    cell(e.request_id, "id"), e.model, e.caller, e.server ?? "", duration(e.waited_ms),
    number(e.tokens), number(e.tokens_per_s), cancelButton(e.request_id),
  ], (e) => ({"data-request-id": e.request_id, "data-state": "running", "data-position": 0}));
  fill("waiting", lane.waiting, "nobody waiting", (e) => [
    cell(e.position, "num position"), cell(e.request_id, "id"), e.model, e.caller, e.priority,
    duration(e.estimated_wait_ms), duration(e.waited_ms), cancelButton(e.request_id),
  ], (e) => ({"data-request-id": e.request_id, "data-state": "waiting", "data-position": e.position}));
  fill("callers", lane.callers, "no callers in the lane", (c) => [
    c.caller, number(c.running), number(c.waiting),
  ]);
  drawSparkline(lane.throughput);
  fill("recent", lane.recent, "no requests finished here yet", (r) => [
    clock(r.finished_at), cell(r.request_id, "id"), r.model, r.owner ?? "",
    cell(r.error ? `${r.status} ${r.error}` : r.status, r.status < 400 ? "ok" : "bad"),
    duration(r.latency_ms), duration(r.waited_ms), number(r.tokens), number(r.tokens_per_s),
  ], (r) => ({"data-request-id": r.request_id}));
  fill("schedulers", lane.schedulers, "no scheduler has reported", (s) => [
    cell(s.scheduler_id, "id"), schedulerState(s),
    cell(s.backend.connected ? `up ${s.backend.version ?? ""}` : `down ${s.backend.error ?? ""}`,
      s.backend.connected ? "ok" : "bad"),
    number(s.queue.running), number(s.queue.waiting), duration(s.queue.average_wait_ms),
    number(s.queue.processing_rate),
  ]);
  drawModels();
  refreshModels();
}

function laneState(snapshot) {
  if (!snapshot.schedulers.length) return "down";
  if (snapshot.stuck) return "stuck";
  if (snapshot.paused) return "paused";
  if (snapshot.draining) return "draining";
  return snapshot.running.length ? "running" : "idle";
}

function schedulerState(s) {
  if (s.health.stuck) return cell(`stuck ${Math.round(s.health.stalled_for_s)} s`, "bad");
  return s.paused ? "paused" : s.draining ? "draining" : "active";
}

function drawServers(servers) {
  $("servers-section").hidden = !servers.length;
  fill("servers", servers, "", (s) => [
    s.name, s.kind,
    cell(!s.connected ? "down" : s.in_rotation ? "up" : "out of rotation", s.connected && s.in_rotation ? "ok" : "bad"),
    cell(s.running ?? "", "id"), s.loaded_model ?? "", number(s.jobs_done), number(s.swaps),
  ], (s) => ({"data-server": s.name}));
}

// The lane's models (queued, running, loaded where) with the memory /api/ps says they take.
function drawModels() {
  const byName = new Map();
  const row = (name) => {
    const key = name.includes(":") ? name : `${name}:latest`;
    if (!byName.has(key)) byName.set(key, {model: name, queued: 0, running: 0, loaded: false});
    return byName.get(key);
  };
  for (const a of lane.models) Object.assign(row(a.model), {queued: a.queued, running: a.running, loaded: a.loaded_on.length > 0});
  for (const m of loaded.models ?? []) {
    Object.assign(row(m.name), {loaded: true, size: m.size, vram: m.size_vram, until: m.expires_at});
  }
  fill("models", [...byName.values()], "no model loaded or asked for", (m) => [
    m.model, m.loaded ? cell("yes", "ok") : "no", bytes(m.size), bytes(m.vram),
    number(m.queued), number(m.running), m.until ? clock(Date.parse(m.until) / 1000) : "",
  ]);
}

function drawSparkline({series, last_second}) {
  const svg = $("sparkline");
  const top = Math.max(1, ...series);
  const step = 300 / Math.max(1, series.length - 1);
  const points = series.map((v, i) => `${(i * step).toFixed(1)},${(58 - (v / top) * 56).toFixed(1)}`);
  const ns = "http://www.w3.org/2000/svg";
  const base = document.createElementNS(ns, "line");
  Object.entries({x1: 0, y1: 59, x2: 300, y2: 59}).forEach(([k, v]) => base.setAttribute(k, v));
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.replaceChildren(base, line);
  $("rate-now").textContent = `${last_second} now, ${Math.max(0, ...series)} peak (last ${series.length} s)`;
}

// Rows of a table's body from `items`; `cells(item)` gives strings, numbers or nodes.
function fill(tableId, items, emptyText, cells, attributes = () => ({})) {
  const body = $(tableId).tBodies[0];
  const columns = $(tableId).tHead.rows[0].cells.length;
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    for (const [name, value] of Object.entries(attributes(item))) tr.setAttribute(name, value);
    for (const value of cells(item)) tr.append(value instanceof Node ? value : cell(value));
    return tr;
  });
  if (!rows.length && emptyText) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(emptyText);
    td.colSpan = columns;
    tr.append(td);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function cell(value, className = "") {
  const td = document.createElement("td");
  td.textContent = value ?? "";
  if (className) td.className = className;
  return td;
}

function cancelButton(requestId) {
  const td = cell("", "admin-only");
  td.hidden = !admin;
  const button = document.createElement("button");
  button.className = "cancel";
  button.textContent = "Cancel";
  button.dataset.cancel = requestId;
  button.addEventListener("click", () => act("DELETE", `admin/queue/${encodeURIComponent(requestId)}`, "cancel"));
  td.append(button);
  return td;
}

function number(value) {
  return cell(value ?? "", "num");
}

function duration(ms) {
  if (ms == null) return cell("", "num");
  const s = ms / 1000;
  const text = s < 1 ? `${Math.round(ms)} ms` : s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return cell(text, "num");
}

function bytes(value) {
  if (value == null) return cell("", "num");
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; value >= 1024 && i < units.length - 1; i++) value /= 1024;
  return cell(`${value.toFixed(i ? 1 : 0)} ${units[i]}`, "num");
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString([], {hour12: false});
}

connect();

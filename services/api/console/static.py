"""The console page's HTML, CSS and JavaScript.

Kept as Python strings rather than files beside this module: the package is installed as a wheel
(the container image too), and non-Python files would need package-data declarations to come along.
No CDN, no framework, no build step. Everything the page shows from the API goes in through
`textContent`, never as markup: prompts and stream names are operator input.
"""

STYLE = r"""
:root { --bg: #14161a; --panel: #1d2026; --line: #30343c; --text: #e6e6e6; --dim: #9aa0a8;
        --ok: #4caf50; --warn: #e0a030; --bad: #e05050; --accent: #4a90d9; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: var(--bg); color: var(--text); }
header { display: flex; gap: 1.5em; align-items: baseline; padding: .8em 1.2em; border-bottom: 1px solid var(--line); flex-wrap: wrap; }
header h1 { font-size: 1.2em; margin: 0; }
main { padding: 1em 1.2em; display: grid; gap: 1em; }
section.panel, article.stream { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: .8em 1em; }
h2 { font-size: 1em; margin: 0 0 .6em; }
.dim { color: var(--dim); }
.badge { display: inline-block; padding: 0 .5em; border-radius: 3px; font-size: .85em; background: var(--line); }
.badge.running, .badge.ready { background: var(--ok); color: #000; }
.badge.starting, .badge.reconnecting { background: var(--warn); color: #000; }
.badge.failed, .badge.notready { background: var(--bad); color: #000; }
.stream-head { display: flex; gap: 1em; align-items: baseline; flex-wrap: wrap; }
.stream-head .name { font-weight: bold; font-size: 1.1em; }
.figures { display: flex; gap: 1.5em; flex-wrap: wrap; margin: .5em 0; }
.figures div b { display: block; font-size: 1.15em; }
.previews { display: grid; grid-template-columns: 1fr 1fr; gap: .6em; max-width: 720px; }
.previews figure { margin: 0; }
.previews img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #000; image-rendering: pixelated; display: block; }
.previews figcaption { color: var(--dim); font-size: .85em; }
form.row, .prompt-row { display: flex; gap: .5em; flex-wrap: wrap; align-items: center; margin-top: .5em; }
input[type=text] { background: var(--bg); color: var(--text); border: 1px solid var(--line); border-radius: 4px; padding: .35em .5em; min-width: 12em; }
input.wide { flex: 1; min-width: 20em; }
button { background: var(--accent); color: #fff; border: 0; border-radius: 4px; padding: .4em .9em; cursor: pointer; }
button.danger { background: var(--bad); }
.error { color: var(--bad); white-space: pre-wrap; }
.notice { color: var(--warn); }
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>StyleCast console</title>
<link rel="icon" href="data:,">
<style>__STYLE__</style>
</head>
<body>
<header>
  <h1>StyleCast console</h1>
  <span>node <span id="ready" class="badge">?</span> <span id="ready-reason" class="dim"></span></span>
  <span id="processes" class="dim"></span>
  <span id="gpu-figures" class="dim"></span>
  <span id="conn" class="error"></span>
</header>
<main>
  <section class="panel">
    <h2>Add a stream</h2>
    <form id="add-form" class="row" autocomplete="off">
      <input id="add-name" type="text" placeholder="name (a-z 0-9 _ -)" required>
      <input id="add-source" type="text" class="wide" placeholder="source: file path, rtsp://... or /dev/videoN" required>
      <input id="add-prompt" type="text" class="wide" placeholder="prompt, e.g. make it an oil painting" required>
      <label><input id="add-pace" type="checkbox"> pace files at their frame rate</label>
      <button id="add-submit" type="submit">Add</button>
    </form>
    <div id="add-error" class="error"></div>
  </section>
  <div id="streams"></div>
  <p id="no-streams" class="dim" hidden>No streams. Add one above.</p>
</main>
<script>__SCRIPT__</script>
</body>
</html>
"""

SCRIPT = r"""
"use strict";
const POLL_MS = 1000, PREVIEW_MS = 250, PREVIEW_RETRY_MS = 1000;
const STAGES = ["ingest", "queue", "side", "main", "egress"];
const token = new URLSearchParams(location.search).get("token");
const cards = new Map();          // stream name -> {el, previews: [loops], alive}
const METRICS_WINDOW_MS = 10000;
const metricsHistory = [];        // recent scrapes' sums and counts, {t, values}: means over the last ~10 s

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  return headers;
}

async function api(method, path, body) {
  const options = {method, headers: authHeaders(body ? {"Content-Type": "application/json"} : {}), cache: "no-store"};
  if (body) options.body = JSON.stringify(body);
  const response = await fetch(path, options);
  let data = null;
  const text = await response.text();
  if (text) { try { data = JSON.parse(text); } catch (e) { data = text; } }
  if (!response.ok) {
    const detail = data && data.problems ? data.problems.join("\n") : (data && data.detail) || response.statusText;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function ms(value) { return value === null || value === undefined || isNaN(value) ? "–" : value.toFixed(value < 10 ? 1 : 0) + " ms"; }

// ---- previews: fetch single JPEGs in a chain (MJPEG would hold one of the browser's six connections per stream and side)
function startPreview(name, side, img, card) {
  let previousUrl = null;
  async function loop() {
    while (card.alive) {
      let wait = PREVIEW_MS;
      try {
        const response = await fetch(`/streams/${encodeURIComponent(name)}/preview/${side}.jpg`, {headers: authHeaders(), cache: "no-store"});
        if (response.ok) {
          const url = URL.createObjectURL(await response.blob());
          img.src = url;
          img.dataset.frames = String(Number(img.dataset.frames || 0) + 1);
          if (previousUrl) URL.revokeObjectURL(previousUrl);
          previousUrl = url;
        } else if (response.status === 404) {
          return;  // the stream is gone; the next refresh removes its card
        } else {
          wait = PREVIEW_RETRY_MS;  // no frame yet, or the service is busy
        }
      } catch (e) {
        wait = PREVIEW_RETRY_MS;
      }
      await new Promise(resolve => setTimeout(resolve, wait));
    }
  }
  loop();
}

// ---- one card per stream
function makeCard(info) {
  const card = {alive: true, fields: {}};
  const f = card.fields;
  f.state = el("span", {class: "badge state"});
  f.kind = el("span", {class: "dim kind"});
  f.version = el("span", {class: "dim prompt-version"});
  f.reason = el("span", {class: "notice reason"});
  f.fps = el("b", {class: "fps"});
  f.p50 = el("b", {class: "p50"});
  f.p95 = el("b", {class: "p95"});
  f.frames = el("b", {class: "frames"});
  f.stages = el("b", {class: "stages"});
  f.promptInput = el("input", {type: "text", class: "wide prompt-input", "aria-label": "prompt"});
  f.promptInput.value = info.prompt;
  f.promptError = el("span", {class: "error prompt-error"});
  const apply = el("button", {type: "button", class: "prompt-apply"}, "Apply prompt");
  const remove = el("button", {type: "button", class: "danger remove"}, "Remove");
  const images = {};
  const figures = ["input", "output"].map(side => {
    images[side] = el("img", {alt: `${side} of ${info.name}`, class: `preview preview-${side}`});
    return el("figure", {}, images[side], el("figcaption", {}, side === "input" ? "input" : "output (stylised)"));
  });
  card.el = el("article", {class: "stream", "data-stream": info.name},
    el("div", {class: "stream-head"}, el("span", {class: "name"}, info.name), f.state, f.kind, f.version, f.reason),
    el("div", {class: "figures"},
      el("div", {}, "fps", f.fps), el("div", {}, "latency p50", f.p50), el("div", {}, "latency p95", f.p95),
      el("div", {}, "frames in / out / dropped", f.frames), el("div", {}, "recent stage means (ingest · queue · side · main · egress)", f.stages)),
    el("div", {class: "previews"}, ...figures),
    el("div", {class: "prompt-row"}, f.promptInput, apply, remove, f.promptError));
  apply.addEventListener("click", async () => {
    f.promptError.textContent = "";
    try {
      const updated = await api("PUT", `/streams/${encodeURIComponent(info.name)}/prompt`, {prompt: f.promptInput.value});
      f.promptInput.dataset.editing = "";
      updateCard(card, updated);
    } catch (e) { f.promptError.textContent = e.message; }
  });
  // "change" too: a programmatic clear (e.g. WebDriver's) fires it without "input", then blurs the field.
  for (const ev of ["input", "change"]) f.promptInput.addEventListener(ev, () => { f.promptInput.dataset.editing = "1"; });
  remove.addEventListener("click", async () => {
    if (!confirm(`Remove stream ${info.name}? Its outputs are finalised.`)) return;
    try { await api("DELETE", `/streams/${encodeURIComponent(info.name)}`); refresh(); }
    catch (e) { f.promptError.textContent = e.message; }
  });
  for (const side of ["input", "output"]) startPreview(info.name, side, images[side], card);
  return card;
}

function updateCard(card, info) {
  const f = card.fields;
  f.state.textContent = info.state;
  f.state.className = "badge state " + info.state;
  f.kind.textContent = `${info.kind}${info.live ? ", live" : ""}`;
  f.version.textContent = `prompt v${info.prompt_version}`;
  f.reason.textContent = info.reason || "";
  f.fps.textContent = info.fps === null ? "–" : info.fps.toFixed(1);
  f.p50.textContent = ms(info.latency_ms.p50);
  f.p95.textContent = ms(info.latency_ms.p95);
  const dropped = Object.values(info.counters.dropped || {}).reduce((a, b) => a + b, 0);
  f.frames.textContent = `${info.counters.frames_in} / ${info.counters.frames_out} / ${dropped}`;
  if (!f.promptInput.dataset.editing && document.activeElement !== f.promptInput) f.promptInput.value = info.prompt;
}

// ---- /metrics: recent per-stage means and the GPU's batch figures, from histogram sums and counts
function parseMetrics(text) {
  const values = new Map();
  const line = /^(stylecast_(?:stage_latency_seconds|gpu_batch_wall_seconds|gpu_batch_size)_(?:sum|count))\{([^}]*)\} (\S+)$/;
  for (const row of text.split("\n")) {
    const m = line.exec(row);
    if (!m) continue;
    const labels = {};
    for (const pair of m[2].matchAll(/(\w+)="([^"]*)"/g)) labels[pair[1]] = pair[2];
    const key = m[1] + "|" + (labels.stream || "") + "|" + (labels.stage || labels.path || "");
    values.set(key, (values.get(key) || 0) + Number(m[3]));
  }
  return values;
}

function recentMean(now, before, base, stream, part) {
  const key = `|${stream}|${part}`;
  const sum = (now.get(base + "_sum" + key) || 0) - ((before && before.get(base + "_sum" + key)) || 0);
  const count = (now.get(base + "_count" + key) || 0) - ((before && before.get(base + "_count" + key)) || 0);
  return count > 0 ? sum / count : null;
}

async function refreshMetrics() {
  const response = await fetch("/metrics", {cache: "no-store"});
  if (!response.ok) return;
  const now = parseMetrics(await response.text());
  const t = Date.now();
  while (metricsHistory.length > 1 && t - metricsHistory[1].t > METRICS_WINDOW_MS) metricsHistory.shift();
  const before = metricsHistory.length ? metricsHistory[0].values : null;
  metricsHistory.push({t, values: now});
  for (const [name, card] of cards) {
    const parts = STAGES.map(stage => {
      const mean = recentMean(now, before, "stylecast_stage_latency_seconds", name, stage);
      return mean === null ? "–" : (mean * 1000).toFixed(1);
    });
    card.fields.stages.textContent = parts.join(" · ") + " ms";
  }
  const batch = recentMean(now, before, "stylecast_gpu_batch_size", "", "");
  const side = recentMean(now, before, "stylecast_gpu_batch_wall_seconds", "", "side");
  const main = recentMean(now, before, "stylecast_gpu_batch_wall_seconds", "", "main");
  document.getElementById("gpu-figures").textContent =
    `GPU batch ${batch === null ? "–" : batch.toFixed(1)} frames · side ${ms(side === null ? null : side * 1000)} · main ${ms(main === null ? null : main * 1000)}`;
}

async function refresh() {
  const conn = document.getElementById("conn");
  try {
    const streams = await api("GET", "/streams");
    conn.textContent = "";
    const seen = new Set();
    const list = document.getElementById("streams");
    for (const info of streams) {
      seen.add(info.name);
      let card = cards.get(info.name);
      if (!card) { card = makeCard(info); cards.set(info.name, card); list.append(card.el); }
      updateCard(card, info);
    }
    for (const [name, card] of cards) {
      if (!seen.has(name)) { card.alive = false; card.el.remove(); cards.delete(name); }
    }
    document.getElementById("no-streams").hidden = streams.length > 0;
  } catch (e) {
    conn.textContent = e.status === 401 ? "unauthorized: open /console?token=<service.token>" : "API unreachable: " + e.message;
  }
  try {
    const response = await fetch("/readyz", {cache: "no-store"});
    const ready = await response.json();
    const badge = document.getElementById("ready");
    badge.textContent = ready.ready ? "ready" : "not ready";
    badge.className = "badge " + (ready.ready ? "ready" : "notready");
    document.getElementById("ready-reason").textContent = ready.reason;
  } catch (e) { /* shown by the /streams error above */ }
  try {
    const health = await (await fetch("/healthz", {cache: "no-store"})).json();
    const processes = health.processes;
    const notReady = processes.filter(p => p.state !== "ready").map(p => `${p.name} ${p.state}`);
    const restarts = processes.reduce((total, p) => total + p.restarts, 0);
    const line = document.getElementById("processes");
    line.textContent = `processes ${processes.length - notReady.length}/${processes.length} ready` +
      (notReady.length ? ` (${notReady.join(", ")})` : "") + ` · restarts ${restarts}`;
    line.className = notReady.length || restarts ? "notice" : "dim";
  } catch (e) { /* shown by the /streams error above */ }
  try { await refreshMetrics(); } catch (e) { /* figures stay as they were */ }
}

document.getElementById("add-form").addEventListener("submit", async event => {
  event.preventDefault();
  const error = document.getElementById("add-error");
  error.textContent = "";
  const body = {
    name: document.getElementById("add-name").value.trim(),
    source: document.getElementById("add-source").value.trim(),
    prompt: document.getElementById("add-prompt").value,
  };
  if (document.getElementById("add-pace").checked) body.pace = true;
  const button = document.getElementById("add-submit");
  button.disabled = true;
  try {
    await api("POST", "/streams", body);
    event.target.reset();
    refresh();
  } catch (e) { error.textContent = e.message; }
  finally { button.disabled = false; }
});

refresh();
setInterval(refresh, POLL_MS);
"""

// The clipsteer page: upload an image, stream POST /api/describe (server-sent events over
// fetch, since EventSource cannot POST), and draw each step as it arrives.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "clipsteer.runs";
const TOKEN_KEY = "clipsteer.token";
const HISTORY_MAX = 24;
// Relative to the page, so that the page works under a reverse proxy's path prefix (a proxy
// that serves it at https://host/clip/ forwards clip/api/describe as /api/describe).
const HEALTH_URL = "api/health";
const DESCRIBE_URL = "api/describe";

const state = {
  file: null,
  previewUrl: null,
  controller: null,
  steps: [],
  selected: -1,
  prompt: "",
  maxTokens: 25,
  started: 0,
  queue: [],
  drawing: false,
  finished: null,
};

// ---------- server status ----------

async function checkServer() {
  try {
    const response = await fetch(HEALTH_URL, { cache: "no-store" });
    const health = await response.json();
    $("server-dot").className = "dot ok";
    $("server-text").textContent = `ready · ${health.workers} worker${health.workers === 1 ? "" : "s"}`;
    $("models").textContent = `LM ${health.lm} · CLIP ${health.clip} · uploads up to ${Math.round(health.limits.max_upload_bytes / 1048576)} MB`;
    $("token-row").hidden = !health.auth;
    $("max_tokens").max = health.limits.max_tokens;
    $("top_k").max = health.limits.max_top_k;
  } catch (e) {
    $("server-dot").className = "dot down";
    $("server-text").textContent = "server unreachable";
  }
}

// ---------- choosing an image ----------

function setFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`“${file.name}” is not an image. Choose a PNG, JPEG, WebP, GIF or BMP file.`);
    return;
  }
  state.file = file;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const preview = $("preview");
  const hint = $("drop-hint");
  preview.onload = () => { preview.hidden = false; hint.hidden = true; };
  // The browser cannot show every file the server reads (and vice versa): say so, and let the
  // server have the last word.
  preview.onerror = () => {
    preview.hidden = true;
    hint.hidden = false;
    hint.querySelector("strong").textContent = file.name || "pasted image";
    hint.querySelector("span").textContent = "no preview for this file · drop another image";
  };
  preview.src = state.previewUrl;
  $("drop").classList.add("has-image");
  $("run").disabled = false;
  describe();
}

function wireInput() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("dragging"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) setFile(file);
  });
  // A file dropped outside the box would otherwise make the browser navigate away to it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        setFile(item.getAsFile());
        e.preventDefault();
        return;
      }
    }
  });
  $("run").addEventListener("click", describe);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("sample").addEventListener("change", syncSettings);
  $("strategy").addEventListener("change", syncSettings);
  for (const id of ["top_k", "max_tokens"]) $(id).addEventListener("input", syncSettings);
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token").addEventListener("change", () => sessionStorage.setItem(TOKEN_KEY, $("token").value));
  $("clear-history").addEventListener("click", () => { sessionStorage.removeItem(HISTORY_KEY); drawHistory(); });
  if (window.matchMedia("(min-width: 861px)").matches) $("settings").open = true;
}

function syncSettings() {
  const strategy = $("strategy").value;
  const fluent = strategy !== "seed";
  $("sample").disabled = fluent;
  if (fluent) $("sample").checked = false;
  const sampling = $("sample").checked;
  $("temperature").disabled = !sampling;
  $("seed").disabled = !sampling;
  $("top_k").placeholder = fluent ? "45" : "200";
  const k = $("top_k").value || $("top_k").placeholder;
  const names = { seed: "seed", magic: "MAGIC", beam: "beam" };
  $("settings-note").textContent = `${names[strategy]} · k ${k} · ${$("max_tokens").value || 25} tokens`;
}

function params() {
  const p = { strategy: $("strategy").value };
  const int = (id) => {
    const v = $(id).value.trim();
    return v === "" ? undefined : Number(v);
  };
  if (int("top_k") !== undefined) p.top_k = int("top_k");
  if (int("max_tokens") !== undefined) p.max_tokens = int("max_tokens");
  const prompt = $("prompt").value;
  if (prompt !== "") p.prompt = prompt;
  if ($("sample").checked && p.strategy === "seed") {
    p.temperature = Number($("temperature").value);
    p.seed = int("seed") || 0;
  }
  const block = $("block").value.split(",").map((w) => w.trim()).filter(Boolean);
  if (block.length) p.block = block;
  return p;
}

// ---------- running ----------

async function describe() {
  if (!state.file) return;
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const p = params();
  resetOutput(p);
  setPhase("queued", "live");
  const form = new FormData();
  form.append("image", state.file, state.file.name || "pasted.png");
  form.append("params", JSON.stringify(p));
  const headers = {};
  const token = $("token").value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  $("stop").hidden = false;
  let response;
  try {
    response = await fetch(DESCRIBE_URL, { method: "POST", body: form, headers, signal: controller.signal });
  } catch (e) {
    if (controller.signal.aborted) return stopped(controller);
    return fail(`Cannot reach the server (${e.message}). Is clipsteer serve still running?`, controller);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    const retry = response.headers.get("Retry-After");
    if (response.status === 429 && retry) message += ` (retry in ${retry} s)`;
    if (response.status === 401) $("token-row").hidden = false;
    return fail(message, controller);
  }
  setPhase("describing", "live");
  try {
    await readEvents(response.body, controller);
  } catch (e) {
    if (controller.signal.aborted) return stopped(controller);
    return fail(`The connection broke mid-description (${e.message}).`, controller);
  }
  // Drawn after the events still queued: only then is it known whether a done event came.
  if (state.controller === controller) enqueue({ event: "end" });
}

async function readEvents(body, controller) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    if (state.controller !== controller) { reader.cancel(); return; }
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) enqueue(JSON.parse(data));
    }
  }
}

// Steps can arrive in bursts; drawing them one per frame lets the viewer watch the text grow.
function enqueue(event) {
  state.queue.push(event);
  if (!state.drawing) {
    state.drawing = true;
    requestAnimationFrame(drain);
  }
}

function drain() {
  const burst = state.queue.length > 12 ? 3 : 1;
  for (let i = 0; i < burst && state.queue.length; i++) handle(state.queue.shift());
  if (state.queue.length) requestAnimationFrame(drain);
  else state.drawing = false;
}

function handle(event) {
  if (event.event === "step") {
    state.steps.push(event);
    state.selected = state.steps.length - 1;
    drawText(event.text, event.token, true);
    drawMetrics(event.similarity, state.steps.length);
    $("progress-bar").style.width = `${Math.min(100, (100 * state.steps.length) / state.maxTokens)}%`;
    drawChart();
    drawSteps();
  } else if (event.event === "done") {
    state.finished = event;
    const last = state.steps[state.steps.length - 1];
    drawText(event.text, last ? last.token : "", false);
    drawMetrics(event.similarity, event.token_ids.length, event.seconds, event.nll);
    $("progress-bar").style.width = "100%";
    setPhase("done", "done");
    $("stop").hidden = true;
    if (event.stop_reason) showError(event.stop_reason, "Note");
    saveRun(event);
    state.controller = null;
  } else if (event.event === "end") {
    if (!state.finished) fail("The server closed the stream before finishing.", state.controller);
  } else if (event.event === "error") {
    state.finished = event;
    fail(event.error, state.controller);
  }
}

function stopped(controller) {
  if (state.controller !== controller) return;
  setPhase("stopped", "");
  $("stop").hidden = true;
  $("output-text").classList.remove("live");
  state.controller = null;
}

function fail(message, controller) {
  if (controller && state.controller !== controller) return;
  showError(message);
  setPhase("failed", "failed");
  $("stop").hidden = true;
  $("output-text").classList.remove("live");
  state.controller = null;
}

// ---------- drawing ----------

function setPhase(text, kind) {
  const phase = $("phase");
  phase.textContent = text;
  phase.className = `phase ${kind || ""}`;
}

function showError(message, title = "Error") {
  const box = $("error");
  box.replaceChildren();
  const strong = document.createElement("strong");
  strong.textContent = `${title}:`;
  box.append(strong, document.createTextNode(message));
  box.hidden = false;
}

function resetOutput(p) {
  state.steps = [];
  state.selected = -1;
  state.queue = [];
  state.finished = null;
  state.prompt = p.prompt || "An image of ";
  state.maxTokens = p.max_tokens || 25;
  state.started = performance.now();
  $("error").hidden = true;
  $("progress-bar").style.width = "0";
  const out = $("output-text");
  out.replaceChildren(span("prompt", state.prompt));
  out.classList.add("live");
  $("sim").textContent = "–";
  $("tokens").textContent = "0";
  $("time").textContent = "–";
  $("nll").textContent = "–";
  drawChart();
  drawSteps();
}

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  return s;
}

function drawText(text, token, live) {
  const out = $("output-text");
  const prompt = text.startsWith(state.prompt) ? state.prompt : "";
  const rest = text.slice(prompt.length);
  const parts = [span("prompt", prompt)];
  if (token && rest.endsWith(token) && live) {
    parts.push(document.createTextNode(rest.slice(0, rest.length - token.length)), span("new", token));
  } else {
    parts.push(document.createTextNode(rest));
  }
  out.replaceChildren(...parts);
  out.classList.toggle("live", live);
}

function drawMetrics(similarity, tokens, seconds, nll) {
  $("sim").textContent = Number.isFinite(similarity) ? similarity.toFixed(4) : "–";
  // Known once the text is final: a beam's best hypothesis can change until then.
  $("nll").textContent = Number.isFinite(nll) ? nll.toFixed(2) : "–";
  $("tokens").textContent = String(tokens);
  const elapsed = seconds !== undefined ? seconds : (performance.now() - state.started) / 1000;
  $("time").textContent = `${elapsed.toFixed(1)} s`;
}

function drawChart() {
  const chart = $("chart");
  const step = state.steps[state.selected];
  if (!step) {
    chart.replaceChildren(span("chart-empty", "The candidates CLIP liked best appear here at each step."));
    $("chart-title").textContent = "Top candidates";
    return;
  }
  $("chart-title").textContent = `Top candidates · step ${step.step + 1}`;
  const sims = step.top.map((c) => c.similarity);
  const hi = Math.max(...sims);
  const lo = Math.min(...sims);
  // Bars span the step's range (from 25% for the lowest), so that small differences show.
  const width = (s) => (hi === lo ? 100 : 25 + (75 * (s - lo)) / (hi - lo));
  const rows = step.top.map((candidate) => {
    const row = document.createElement("div");
    row.className = "bar-row" + (candidate.token === step.token ? " chosen" : "");
    row.setAttribute("role", "listitem");
    const token = span("bar-token", candidate.token);
    token.title = JSON.stringify(candidate.token);
    const track = span("bar-track", "");
    const bar = span("bar", "");
    bar.style.width = `${width(candidate.similarity)}%`;
    track.append(bar);
    row.append(token, track, span("bar-value", candidate.similarity.toFixed(4)));
    return row;
  });
  chart.replaceChildren(...rows);
}

function drawSteps() {
  const steps = $("steps");
  const chips = state.steps.map((step, i) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "step-chip" + (i === state.selected ? " sel" : "");
    chip.textContent = step.token;
    chip.title = `step ${i + 1}: similarity ${step.similarity.toFixed(4)}`;
    chip.addEventListener("click", () => { state.selected = i; drawChart(); drawSteps(); });
    return chip;
  });
  steps.replaceChildren(...chips);
  drawSpark();
}

function drawSpark() {
  const svg = $("spark");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const sims = state.steps.map((s) => s.similarity);
  if (!sims.length) return;
  const hi = Math.max(...sims);
  const lo = Math.min(...sims);
  const n = Math.max(state.maxTokens, sims.length);
  const x = (i) => (n <= 1 ? 150 : 4 + (292 * i) / (n - 1));
  const y = (s) => (hi === lo ? 28 : 50 - (44 * (s - lo)) / (hi - lo));
  const points = sims.map((s, i) => `${x(i).toFixed(1)},${y(s).toFixed(1)}`);
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("class", "area");
  area.setAttribute("points", `${x(0)},56 ${points.join(" ")} ${x(sims.length - 1)},56`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("class", "line");
  line.setAttribute("points", points.join(" "));
  svg.append(area, line);
  const sel = state.selected;
  if (sel >= 0) {
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("class", "pt sel");
    dot.setAttribute("cx", x(sel));
    dot.setAttribute("cy", y(sims[sel]));
    dot.setAttribute("r", 3.5);
    svg.append(dot);
  }
}

// ---------- this session's runs ----------

function loadRuns() {
  try { return JSON.parse(sessionStorage.getItem(HISTORY_KEY)) || []; } catch (_) { return []; }
}

function thumbnail() {
  const img = $("preview");
  if (!img.naturalWidth) return "";
  const canvas = document.createElement("canvas");
  const side = 112;
  canvas.width = side;
  canvas.height = side;
  const scale = Math.max(side / img.naturalWidth, side / img.naturalHeight);
  const w = img.naturalWidth * scale;
  const h = img.naturalHeight * scale;
  canvas.getContext("2d").drawImage(img, (side - w) / 2, (side - h) / 2, w, h);
  try { return canvas.toDataURL("image/jpeg", 0.75); } catch (_) { return ""; }
}

function saveRun(done) {
  const runs = loadRuns();
  runs.unshift({
    text: done.text,
    similarity: done.similarity,
    tokens: done.token_ids.length,
    seconds: done.seconds,
    name: state.file ? state.file.name : "",
    thumb: thumbnail(),
    when: new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
  });
  try {
    sessionStorage.setItem(HISTORY_KEY, JSON.stringify(runs.slice(0, HISTORY_MAX)));
  } catch (_) {
    // Storage full: keep the newest few.
    sessionStorage.setItem(HISTORY_KEY, JSON.stringify(runs.slice(0, 4)));
  }
  drawHistory();
}

function drawHistory() {
  const runs = loadRuns();
  const list = $("history");
  list.replaceChildren(...runs.map((run) => {
    const li = document.createElement("li");
    if (run.thumb) {
      const img = document.createElement("img");
      img.src = run.thumb;
      img.alt = run.name || "image";
      li.append(img);
    } else {
      li.append(span("thumb", ""));
    }
    const body = document.createElement("div");
    body.append(span("h-text", run.text));
    const meta = document.createElement("div");
    meta.className = "h-meta";
    meta.textContent = `${run.when} · sim ${Number(run.similarity).toFixed(4)} · ${run.tokens} tok · ${Number(run.seconds).toFixed(1)} s`;
    body.append(meta);
    li.append(body);
    return li;
  }));
  $("history-empty").hidden = runs.length > 0;
}

wireInput();
syncSettings();
drawChart();
drawHistory();
checkServer();

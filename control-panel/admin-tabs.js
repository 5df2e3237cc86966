/* The operator's tabs of the control panel: ASR models, Benchmark, Settings and Logs, and
 * the dashboard's CPU, memory and GPU bars. Every call goes through voicemesh.js (with the
 * admin key when one is saved); app.js hands over the status feed's updates and events.
 */
import { $, esc, num, show, withClient, epochSeconds, formatDuration } from "./common.js";

const state = {
  status: null,            // the last status_update's whole status
  benchmark: null,         // id of the run this page follows
  benchTimer: null,
  logs: [],                // every feed event, newest last
  logTypes: new Set(),
  modelsLoaded: false,
};

const LOG_LIMIT = 500;
const FINISHED = new Set(["completed", "failed", "cancelled"]);

// ------------------------------------------------------------------ dashboard bars

function bar(id, value, max, text) {
  const row = $(id);
  if (value === null || value === undefined) { row.hidden = true; return; }
  row.hidden = false;
  const share = max ? Math.max(0, Math.min(100, (100 * value) / max)) : 0;
  row.querySelector(".fill").style.width = `${share.toFixed(1)}%`;
  row.querySelector(".fill").classList.toggle("hot", share >= 85);
  row.querySelector(".value").textContent = text;
}

function pick(...values) {
  return values.find((v) => v !== null && v !== undefined && !Number.isNaN(Number(v)));
}

/** CPU, memory and GPU memory of the mesh (summed over the gateway and its replicas). */
export function showResources(data, status) {
  const cpu = pick(data.cpu, status.cpu_usage_percent);
  const memory = pick(data.memory, status.memory_usage_mb);
  const gpu = pick(status.gpu_memory_mb);
  const cores = pick(status.cpu_count) || 1;
  const totalMb = pick(status.memory_total_mb);
  bar("res-cpu", cpu === undefined ? null : Number(cpu), 100 * cores,
    cpu === undefined ? "–" : `${num(cpu, 1)} % of ${cores} core${cores > 1 ? "s" : ""}`);
  bar("res-memory", memory === undefined ? null : Number(memory), totalMb || Number(memory) * 1.25,
    memory === undefined ? "–" : `${num(memory)} MB${totalMb ? ` of ${num(totalMb)} MB` : ""}`);
  bar("res-gpu", gpu === undefined ? null : Number(gpu), Number(gpu) * 1.25 || 1,
    gpu === undefined ? "–" : `${num(gpu)} MB`);
  const parts = (status.usage_by_replica || []).length;
  $("res-note").textContent = `${parts ? `${parts} processes; ` : ""}cores and memory of the gateway's host` +
    (gpu === undefined ? "; no GPU in the mesh" : "");
}

// ------------------------------------------------------------------ ASR models

function modelRows(models, kind) {
  return models.map((m) => {
    const id = m.id || m.name;
    const replicas = (m.replicas || []).map((r) => `${esc(r.instance_id)}: <span class="model-${esc(r.status)}">${esc(r.status)}</span>${r.error ? ` (${esc(r.error)})` : ""}`).join("<br>");
    const perf = m.performance || {};
    const actions = kind === "asr" ? `<button class="model-load" data-model="${esc(id)}">Load</button>
        <button class="model-unload" data-model="${esc(id)}">Unload</button>
        <button class="model-default" data-model="${esc(id)}"${m.default ? " disabled" : ""}>Set default</button>` : "";
    return `<tr data-model="${esc(id)}" data-status="${esc(m.status)}"${m.default ? ' data-default="true"' : ""}>
      <td><strong>${esc(m.name || id)}</strong> <span class="note">${esc(id)}</span></td>
      <td>${esc(m.type || m.engine || "")}</td>
      <td class="model-${esc(m.status)}">${esc(m.status)}</td>
      <td class="note">${replicas || "no replica"}</td>
      <td>${num(perf.rtf, 3)}</td><td>${num(perf.latency_ms)}</td>
      <td>${m.default ? "default" : ""}</td><td>${actions}</td></tr>`;
  }).join("");
}

/** Fill both model tables; `quiet` keeps the message of the action that asked for it. */
async function loadModels(quiet = false) {
  if (!quiet) show("models-info", "loading…");
  try {
    const answer = await withClient("Models", (vm) => vm.listModels());
    const models = answer.models || [];
    const asr = models.filter((m) => m.kind !== "tts");
    const tts = models.filter((m) => m.kind === "tts");
    $("models").tBodies[0].innerHTML = modelRows(asr, "asr") || '<tr><td colspan="8" class="note">no ASR model</td></tr>';
    $("tts-models").tBodies[0].innerHTML = modelRows(tts, "tts") || '<tr><td colspan="8" class="note">no TTS model</td></tr>';
    state.modelsLoaded = true;
    if (!quiet) show("models-info", `${asr.length} ASR, ${tts.length} TTS models`);
  } catch (exc) {
    show("models-info", exc.message, true);
  }
}

function describeAction(answer) {
  const replicas = answer.replicas || [];
  const parts = replicas.map((r) => `${r.instance_id}: ${r.previous ? `${r.previous} → ` : ""}${r.status}${r.error ? ` (${r.error})` : ""}`);
  return `${answer.action || "default"} ${answer.model || answer.default || ""}${parts.length ? `: ${parts.join("; ")}` : ""}`;
}

async function modelAction(button) {
  const id = button.dataset.model;
  const force = $("models-force").checked;
  const action = button.classList.contains("model-load") ? "load"
    : button.classList.contains("model-unload") ? "unload" : "default";
  show("models-info", `${action} ${id}…`);
  try {
    const answer = await withClient(`Model ${action}`, (vm) => (action === "load" ? vm.loadModel(id)
      : action === "unload" ? vm.unloadModel(id, { force }) : vm.setDefaultModel(id)));
    show("models-info", describeAction(answer));
  } catch (exc) {
    show("models-info", exc.message, true);
  }
  // The replicas report the new state through the registry (a load takes a while):
  // look again until the model's row settles, for a minute at most.
  const settled = action === "unload" ? ["unloaded", "failed"] : ["loaded", "failed"];
  for (let i = 0; i < 40; i++) {
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await loadModels(true);
    const row = document.querySelector(`#models tr[data-model="${CSS.escape(id)}"]`);
    if (action === "default" || !row || settled.includes(row.dataset.status)) break;
  }
}

// ------------------------------------------------------------------ benchmark

function flat(object, prefix = "") {
  const out = {};
  for (const [key, value] of Object.entries(object || {})) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (value && typeof value === "object" && !Array.isArray(value)) Object.assign(out, flat(value, name));
    else out[name] = value;
  }
  return out;
}

function cell(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
  if (Array.isArray(value)) return value.join(", ");
  return String(value ?? "–");
}

function table(rows) {
  const flats = rows.map((r) => flat(r));
  const columns = [...new Set(flats.flatMap((r) => Object.keys(r)))];
  if (!columns.length) return '<p class="note">no rows</p>';
  return `<table><thead><tr>${columns.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead><tbody>${
    flats.map((r) => `<tr>${columns.map((c) => `<td>${esc(cell(r[c]))}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}

/** One bar per request and latency column (the *_ms figures of its rows). */
function drawLatencies(canvas, rows) {
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r).filter((k) => k.endsWith("_ms") && typeof r[k] === "number")))];
  const colors = ["#2563eb", "#15803d", "#b45309", "#7c3aed"];
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300, height = canvas.clientHeight || 160;
  canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const max = Math.max(1, ...rows.flatMap((r) => keys.map((k) => r[k] || 0)));
  const slot = (width - 40) / Math.max(1, rows.length);
  const barWidth = Math.min(36, Math.max(2, (slot - 4) / Math.max(1, keys.length)));
  ctx.font = "11px sans-serif";
  rows.forEach((r, i) => keys.forEach((k, j) => {
    const h = ((r[k] || 0) / max) * (height - 30);
    ctx.fillStyle = colors[j % colors.length];
    ctx.fillRect(40 + i * slot + j * barWidth, height - 15 - h, barWidth - 1, h);
  }));
  ctx.fillStyle = "#66717d";
  ctx.fillText(`${Math.round(max)} ms`, 0, 12);
  keys.forEach((k, j) => { ctx.fillStyle = colors[j % colors.length]; ctx.fillText(k, 40 + j * 110, height - 2); });
  canvas.dataset.bars = String(rows.length * keys.length);
}

function showRun(run) {
  const progress = run.progress || {};
  $("bench-progress").max = progress.total || 1;
  $("bench-progress").value = progress.done || 0;
  const status = $("bench-status");
  status.dataset.status = run.status;
  status.textContent = `${run.id}: ${run.status}${progress.total ? ` · ${progress.done || 0} / ${progress.total}` : ""}${run.error ? ` · ${run.error.message || run.error}` : ""}`;
  const summary = run.summary || {};
  $("bench-summary").innerHTML = Object.keys(summary).length
    ? table(Object.entries(summary).map(([kind, figures]) => ({ kind, ...figures }))) : "";
  const parts = { STT: run.stt || [], TTS: run.tts || [] };
  const hidden = new Set(["reference", "warnings"]);
  $("bench-rows").innerHTML = Object.entries(parts).filter(([, rows]) => rows.length)
    .map(([name, rows]) => `<h3>${name}</h3>${table(rows.map((r) => Object.fromEntries(
      Object.entries(r).filter(([k]) => !hidden.has(k)))))}`).join("");
  const errors = run.errors || [];
  $("bench-errors").textContent = errors.length ? `errors: ${errors.map((e) => JSON.stringify(e)).join("; ")}` : "";
  const rows = [...parts.STT, ...parts.TTS];
  if (rows.length) drawLatencies($("chart-bench"), rows);
}

async function followRun(id) {
  state.benchmark = id;
  clearTimeout(state.benchTimer);
  try {
    const run = await withClient("Benchmark", (vm) => vm.benchmarkResults(id));
    if (state.benchmark !== id) return;
    showRun(run);
    if (FINISHED.has(run.status)) { $("bench-go").disabled = false; listRuns(); return; }
  } catch (exc) {
    show("bench-status", exc.message, true);
    $("bench-go").disabled = false;
    return;
  }
  state.benchTimer = setTimeout(() => followRun(id), 1000);
}

async function startBenchmark(event) {
  event.preventDefault();
  $("bench-go").disabled = true;
  show("bench-status", "starting…");
  try {
    const run = await withClient("Benchmark", (vm) => vm.startBenchmark({
      kind: $("bench-kind").value, clients: Number($("bench-clients").value),
      clips: Number($("bench-clips").value), realTime: $("bench-real-time").checked }));
    followRun(run.id);
  } catch (exc) {
    show("bench-status", exc.message, true);
    $("bench-go").disabled = false;
  }
}

async function listRuns() {
  try {
    const answer = await withClient("Benchmark runs", (vm) => vm.benchmarkResults());
    const runs = answer.runs || answer.results || answer.data || [];
    $("bench-runs").innerHTML = runs.map((r) => `<li><a href="#" data-run="${esc(r.id)}">${esc(r.id)}</a> ${esc(r.kind || "")} · ${esc(r.status)}${
      r.started_at ? ` · ${new Date(epochSeconds(r.started_at) * 1000).toLocaleTimeString()}` : ""}</li>`).join("") || '<li class="note">no run yet</li>';
  } catch (exc) {
    $("bench-runs").innerHTML = `<li style="color:var(--bad)">${esc(exc.message)}</li>`;
  }
}

// ------------------------------------------------------------------ settings

function showSettings(status) {
  const sessions = status.sessions || {};
  const limits = { mode: status.mode, redis: status.redis, auth: status.auth,
    "sessions active": sessions.active, "max sessions (total)": sessions.max_total,
    "max sessions per key": sessions.max_per_key, ...flat(status.limits || {}) };
  $("settings-limits").innerHTML = Object.entries(limits).filter(([, v]) => v !== undefined)
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd data-setting="${esc(k)}">${esc(cell(v))}</dd>`).join("");
  document.querySelectorAll("#settings-mode button").forEach((b) => b.classList.toggle("active", b.dataset.mode === status.mode));
}

async function reloadConfig() {
  $("settings-reload").disabled = true;
  show("settings-reload-info", "reloading…");
  try {
    const answer = await withClient("Config reload", (vm) => vm.reloadConfig());
    const changed = Object.entries(answer.changed || {});
    const restart = Object.entries(answer.requires_restart || {});
    const lines = changed.map(([k, v]) => `${k}: ${JSON.stringify(v.old)} → ${JSON.stringify(v.new)}`);
    if (restart.length) lines.push(`needs a restart: ${restart.map(([k]) => k).join(", ")}`);
    const out = $("settings-reload-info");
    out.dataset.changed = String(changed.length);
    out.textContent = lines.length ? `changed: ${lines.join("; ")}` : "nothing changed";
    out.style.color = "";
  } catch (exc) {
    show("settings-reload-info", exc.message, true);
  } finally {
    $("settings-reload").disabled = false;
  }
}

// ------------------------------------------------------------------ logs

/** Every event of the status feed, kept for the Logs tab (status updates are not events). */
export function logEvent(message) {
  state.logs.push(message);
  if (state.logs.length > LOG_LIMIT) state.logs.shift();
  if (!state.logTypes.has(message.type)) {
    state.logTypes.add(message.type);
    const select = $("logs-type");
    const current = select.value;
    select.innerHTML = '<option value="">all</option>' + [...state.logTypes].sort().map((t) => `<option>${esc(t)}</option>`).join("");
    select.value = current;
  }
  if (!$("tab-logs").hidden && !$("logs-pause").checked) renderLogs();
}

function renderLogs() {
  const type = $("logs-type").value;
  const text = $("logs-search").value.trim().toLowerCase();
  const shown = state.logs.filter((m) => (!type || m.type === type) &&
    (!text || JSON.stringify(m).toLowerCase().includes(text))).slice(-200).reverse();
  $("logs").innerHTML = shown.map((m) => `<li class="ev-${esc(m.type)}" data-type="${esc(m.type)}"><span class="note">${
    esc(new Date(epochSeconds(m.timestamp) * 1000).toLocaleTimeString())}</span> <strong>${esc(m.type)}</strong> <code>${
    esc(JSON.stringify(m.data))}</code></li>`).join("") || '<li class="note">no event matches</li>';
  $("logs-count").textContent = `${shown.length} of ${state.logs.length} events`;
}

// ------------------------------------------------------------------ wiring

export const adminTabs = {
  wire({ changeMode }) {
    $("models-reload").addEventListener("click", () => loadModels());
    for (const id of ["models", "tts-models"]) {
      $(id).addEventListener("click", (event) => {
        const button = event.target.closest("button[data-model]");
        if (button) modelAction(button);
      });
    }
    $("bench-form").addEventListener("submit", startBenchmark);
    $("bench-runs").addEventListener("click", (event) => {
      const link = event.target.closest("a[data-run]");
      if (link) { event.preventDefault(); followRun(link.dataset.run); }
    });
    document.querySelectorAll("#settings-mode button").forEach((b) => b.addEventListener("click", () => changeMode(b.dataset.mode, "settings-mode-message")));
    $("settings-reload").addEventListener("click", reloadConfig);
    ["logs-type", "logs-search"].forEach((id) => $(id).addEventListener("input", renderLogs));
    $("logs-pause").addEventListener("change", renderLogs);
    $("logs-clear").addEventListener("click", () => { state.logs = []; renderLogs(); });
  },

  /** A tab was opened: load what it shows. */
  opened(name) {
    if (name === "models") loadModels();
    if (name === "benchmark") listRuns();
    if (name === "settings" && state.status) showSettings(state.status);
    if (name === "logs") renderLogs();
  },

  /** A status_update: the settings tab follows the mode and limits. */
  status(status) {
    state.status = status;
    if (!$("tab-settings").hidden) showSettings(status);
    $("settings-uptime").textContent = formatDuration(status.uptime_seconds ?? status.uptime_s);
  },

  /** A feed event app.js does not show itself (config, models, benchmark progress). */
  event(message) {
    const data = message.data || {};
    if (message.type.startsWith("benchmark") && (data.id || data.run_id) === state.benchmark) followRun(state.benchmark);
    if (message.type.startsWith("model") && state.modelsLoaded && !$("tab-models").hidden) loadModels(true);
  },
};

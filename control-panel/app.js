/* VoiceMesh control panel: dashboard, routing-mode toggle, mic test, TTS and Clone tabs.
 *
 * Talks only to the gateway it was served from (or ?gateway=http://host:port). Keys the
 * user types are kept in localStorage and sent as "Authorization: Bearer" on HTTP and as
 * ?api_key= on WebSockets (browsers cannot set headers there). The dashboard and the mode
 * toggle use the admin key when one is given, the API key otherwise.
 */
"use strict";

const $ = (id) => document.getElementById(id);
const GATEWAY = (new URLSearchParams(location.search).get("gateway") || location.origin).replace(/\/$/, "");
const WS_BASE = GATEWAY.replace(/^http/, "ws");
const KEY_STORE = { api: "voicemesh.apiKey", admin: "voicemesh.adminKey" };

const panel = {
  status: null,          // last status_update
  mode: null,            // mode the gateway reports
  failovers: 0,
  previous: null,        // {ts, total} for the request-rate chart
  statusSocket: null,
  retryDelay: 1000,
  voices: [],
};

// ------------------------------------------------------------------ keys and errors

function apiKey() { return localStorage.getItem(KEY_STORE.api) || ""; }
function adminKey() { return localStorage.getItem(KEY_STORE.admin) || apiKey(); }

function authHeaders(key) { return key ? { Authorization: `Bearer ${key}` } : {}; }

function wsUrl(path, key) {
  return `${WS_BASE}${path}${key ? `?api_key=${encodeURIComponent(key)}` : ""}`;
}

/** A sentence a person can act on, from an HTTP status and the gateway's error body. */
function explain(status, body, what) {
  const err = (body && body.error) || {};
  const detail = err.message ? ` (${err.message})` : "";
  if (status === 401) return `${what}: the API key is missing or wrong. Enter it at the top and save.${detail}`;
  if (status === 403) return `${what}: this needs the admin key. Enter it at the top and save.${detail}`;
  if (status === 404) return `${what}: this gateway has no such route; the service is not deployed here.`;
  if (status === 429) return `${what}: too many requests; try again in ${err.retry_after || "a few"} s.`;
  if (status === 502 || status === 503 || status === 504) {
    return `${what}: the service is down or unreachable${detail}.`;
  }
  if (status === 0) return `${what}: cannot reach the gateway at ${GATEWAY}${detail}.`;
  return `${what}: error ${status}${detail}.`;
}

class ApiError extends Error {
  constructor(status, body, what) {
    super(explain(status, body, what));
    this.status = status;
    this.body = body;
  }
}

/** fetch() against the gateway with a key; JSON in and out unless told otherwise. */
async function api(path, { method = "GET", json, form, key = apiKey(), what = path, raw = false } = {}) {
  const headers = authHeaders(key);
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  let response;
  try {
    response = await fetch(GATEWAY + path, { method, headers, body });
  } catch (exc) {
    throw new ApiError(0, { error: { message: String(exc.message || exc) } }, what);
  }
  if (!response.ok) {
    let errorBody = null;
    try { errorBody = await response.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, errorBody, what);
  }
  if (raw) return response;
  return response.json();
}

function banner(message, kind = "error") {
  const el = $("banner");
  if (!message) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.className = kind === "info" ? "banner info" : "banner";
  el.textContent = message;
}

function show(id, message, bad = false) {
  const el = $(id);
  el.textContent = message;
  el.style.color = bad ? "var(--bad)" : "";
}

// ------------------------------------------------------------------ tabs

function selectTab(name) {
  document.querySelectorAll(".tabs button").forEach((b) => b.setAttribute("aria-selected", String(b.dataset.tab === name)));
  document.querySelectorAll(".tab").forEach((t) => { t.hidden = t.id !== `tab-${name}`; });
  if (name === "tts" && !panel.voices.length) loadVoices();
  if (name === "clone") loadClonedVoices();
  if (name === "dashboard") Object.values(charts).forEach((c) => c.draw());
}

// ------------------------------------------------------------------ dashboard

const charts = {
  rate: new LiveChart($("chart-rate"), [{ label: "req/s", color: "#2563eb" }]),
  errors: new LiveChart($("chart-errors"), [{ label: "errors %", color: "#b91c1c" }]),
  latency: new LiveChart($("chart-latency"), [{ label: "avg", color: "#15803d" }, { label: "p95", color: "#b45309" }]),
};

function connectStatus() {
  if (panel.statusSocket) panel.statusSocket.close();
  const socket = new WebSocket(wsUrl("/v1/ws/status", adminKey()));
  panel.statusSocket = socket;
  let refusal = null;
  setConn("connecting…", "warn");
  socket.onopen = () => { panel.retryDelay = 1000; };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "status_update") {
      if (panel.statusSocket === socket) { setConn("live", "ok"); banner(null); }
      onStatus(message);
    } else if (message.type === "error") {
      refusal = message;
    } else {
      onEvent(message);
    }
  };
  socket.onclose = (event) => {
    if (panel.statusSocket !== socket) return; // replaced by a newer connection
    let text;
    if (event.code === 4401) text = explain(401, { error: refusal || {} }, "Live status");
    else if (event.code === 4403) text = explain(403, { error: refusal || {} }, "Live status");
    else text = `Live status: lost the gateway at ${GATEWAY}${refusal ? ` (${refusal.message})` : ""}; retrying in ${Math.round(panel.retryDelay / 1000)} s.`;
    banner(text);
    setConn(event.code === 4401 || event.code === 4403 ? "key refused" : "offline", "bad");
    const delay = panel.retryDelay;
    panel.retryDelay = Math.min(panel.retryDelay * 2, 15000);
    setTimeout(() => { if (panel.statusSocket === socket) connectStatus(); }, delay);
  };
}

function setConn(text, kind) {
  const el = $("conn");
  el.textContent = text;
  el.className = `badge badge-${kind}`;
}

function onStatus(status) {
  panel.status = status;
  setMode(status.mode);
  $("mode-source").textContent = `as gateway ${status.instance_id || "?"} reports it`;
  const requests = status.requests || {};
  let total = 0, errors = 0, avg = null, p95 = null;
  for (const stats of Object.values(requests)) {
    total += stats.total; errors += stats.errors;
    if (stats.latency_ms_avg !== null) avg = Math.max(avg || 0, stats.latency_ms_avg);
    if (stats.latency_ms_p95 !== null) p95 = Math.max(p95 || 0, stats.latency_ms_p95);
  }
  $("t-requests").textContent = total;
  $("t-errors").textContent = errors;
  $("t-error-rate").textContent = total ? `${((100 * errors) / total).toFixed(1)} %` : "–";
  $("t-sessions").textContent = `${status.sessions.active} / ${status.sessions.max_total}`;
  $("t-redis").textContent = status.redis;
  $("t-auth").textContent = status.auth;
  $("t-uptime").textContent = formatDuration(status.uptime_s);
  $("stt-route").textContent = (status.stt_route || []).join(" → ") || "none: no STT replica is routable";
  if (panel.previous && status.ts > panel.previous.ts) {
    charts.rate.push([Math.max(0, (total - panel.previous.total) / (status.ts - panel.previous.ts))]);
  } else {
    charts.rate.push([0]);
  }
  panel.previous = { ts: status.ts, total };
  charts.errors.push([total ? (100 * errors) / total : 0]);
  charts.latency.push([avg, p95]);
  renderServices(status.services || {});
}

function countsText(counts) {
  return Object.entries(counts || {}).map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`).join(", ");
}

// Measured load of an STT replica: how busy its decode workers are, how long finals
// wait, what it shed and whom it refused (the reasons, counted).
function overload(load) {
  const parts = [];
  if (load.utilization !== undefined && load.utilization !== null) parts.push(`workers ${Math.round(100 * load.utilization)}%`);
  if (load.final_wait_s) parts.push(`finals wait ${load.final_wait_s.toFixed(2)} s`);
  if (load.admitting === false) parts.push('<span class="health-draining">not admitting</span>');
  const shed = countsText(load.shed);
  const refused = countsText(load.refused);
  if (shed) parts.push(`<span class="shed">shed: ${esc(shed)}</span>`);
  if (refused) parts.push(`<span class="refused">refused: ${esc(refused)}</span>`);
  return parts.length ? `<div class="note">${parts.join(" · ")}</div>` : "";
}

function renderServices(services) {
  const rows = [];
  for (const [kind, replicas] of Object.entries(services).sort()) {
    for (const r of replicas) {
      const load = r.load || {};
      const share = Math.round(100 * (r.load_share || 0));
      const limit = load.max_sessions ? ` / ${load.max_sessions}` : "";
      rows.push(`<tr data-kind="${esc(kind)}" data-instance="${esc(r.instance_id)}">
        <td><strong>${esc(kind)}</strong></td>
        <td title="${esc(r.instance_id)}">${esc(r.url)}</td>
        <td>${esc(r.device || "?")}</td>
        <td>${esc(r.model || "?")}${r.engine ? ` <span class="note">${esc(r.engine)}</span>` : ""}</td>
        <td class="health-${esc(r.health)}">${esc(r.health)}</td>
        <td><span class="loadbar"><span style="width:${Math.min(100, share)}%"></span></span>${load.active_sessions || 0}${limit} sessions${load.queue ? `, queue ${load.queue}` : ""}${overload(load)}</td>
        <td>${r.draining ? '<span class="health-draining">yes</span>' : "no"}</td></tr>`);
    }
  }
  $("services").tBodies[0].innerHTML = rows.join("") ||
    '<tr><td colspan="7" class="note">no service is registered: is <code>voicemesh up</code> running?</td></tr>';
}

function onEvent(event) {
  const list = $("events");
  const when = new Date((event.ts || Date.now() / 1000) * 1000).toLocaleTimeString();
  let text;
  switch (event.type) {
    case "failover":
      panel.failovers += 1;
      $("t-failovers").textContent = panel.failovers;
      text = `FAILOVER ${event.session_id || event.request_id || ""}: ${event.from} → ${event.to} (${event.reason}${event.replayed_ms !== undefined ? `, replayed ${Math.round(event.replayed_ms)} ms` : ""})`;
      break;
    case "service_up": text = `${event.kind} up: ${event.url} (${event.device}, ${event.model})`; break;
    case "service_down": text = `${event.kind} down: ${event.url} (${event.reason})`; break;
    case "mode_changed":
      setMode(event.mode);
      text = `mode ${event.previous} → ${event.mode} (${event.source}${event.by ? ` by ${event.by}` : ""})`;
      break;
    case "request_completed":
      if (!event.failovers) return; // only the interesting ones
      text = `${event.kind} finished after ${event.failovers} failover(s)`;
      break;
    default: return;
  }
  const item = document.createElement("li");
  item.className = `ev-${event.type}`;
  item.textContent = `${when}  ${text}`;
  list.prepend(item);
  while (list.children.length > 200) list.lastChild.remove();
}

function setMode(mode) {
  if (!mode) return;
  panel.mode = mode;
  $("mode-current").textContent = mode;
  document.querySelectorAll("#mode-toggle button").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
}

async function changeMode(mode) {
  show("mode-message", `switching to ${mode}…`);
  try {
    const answer = await api("/v1/admin/mode", { method: "POST", json: { mode }, key: adminKey(), what: "Mode change" });
    setMode(answer.mode);
    show("mode-message", `mode ${answer.previous} → ${answer.mode} (${answer.scope === "shared" ? "every gateway" : "this gateway only"})`);
  } catch (exc) {
    show("mode-message", exc.message, true);
  }
}

// ------------------------------------------------------------------ mic test

const mic = { socket: null, context: null, stream: null, node: null, sentSamples: 0, t0: 0, finals: 0 };

async function startMic() {
  $("mic-start").disabled = true;
  $("mic-finals").innerHTML = "";
  $("mic-partial").textContent = "";
  show("mic-info", "");
  if (!window.isSecureContext || !navigator.mediaDevices) {
    show("mic-info", "The browser allows the microphone only on https:// pages or on localhost.", true);
    $("mic-start").disabled = false;
    return;
  }
  try {
    mic.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (exc) {
    show("mic-info", `No microphone: ${exc.message || exc}`, true);
    $("mic-start").disabled = false;
    return;
  }
  try {
    mic.context = new AudioContext({ sampleRate: 16000 });
  } catch (_) {
    mic.context = new AudioContext(); // the worklet downsamples from the device rate
  }
  await mic.context.audioWorklet.addModule("pcm-worklet.js");
  const source = mic.context.createMediaStreamSource(mic.stream);
  mic.node = new AudioWorkletNode(mic.context, "pcm16-downsampler");
  source.connect(mic.node);
  mic.sentSamples = 0;
  mic.finals = 0;
  mic.t0 = 0;
  setMicState("connecting", "warn");
  const socket = new WebSocket(wsUrl("/ws/transcribe", apiKey()));
  socket.binaryType = "arraybuffer";
  mic.socket = socket;
  socket.onmessage = (event) => onMicMessage(JSON.parse(event.data));
  socket.onclose = (event) => {
    if (mic.socket !== socket) return;
    const why = event.code === 4401 ? explain(401, null, "Mic test")
      : event.code === 1013 ? "Mic test: no STT service could take the session (down or busy)."
      : event.code === 1000 ? "" : `Mic test: the connection closed (${event.code}).`;
    if (why) show("mic-info", why, true);
    stopCapture();
    setMicState("idle", "");
  };
  socket.onerror = () => show("mic-info", `Mic test: cannot reach ${WS_BASE}/ws/transcribe.`, true);
  mic.node.port.onmessage = ({ data }) => {
    drawLevel(data.peak);
    if (socket.readyState !== WebSocket.OPEN || !mic.t0) return;
    socket.send(data.pcm);
    mic.sentSamples += data.pcm.byteLength / 2;
  };
}

function onMicMessage(message) {
  const now = performance.now();
  switch (message.type) {
    case "ready":
      mic.socket.send(JSON.stringify({ type: "start", sample_rate: 16000, encoding: "pcm_s16le",
        language: $("mic-language").value || null }));
      mic.t0 = now;
      setMicState(`streaming → ${message.engine}/${message.device}`, "ok");
      $("mic-stop").disabled = false;
      break;
    case "partial":
      $("mic-partial").textContent = message.text;
      break;
    case "final": {
      mic.finals += 1;
      // Audio of stream time t was sent at about t0 + t: the wait from the end of the
      // utterance to this message is what a speaker feels.
      const felt = Math.max(0, now - mic.t0 - message.end * 1000);
      const line = document.createElement("div");
      line.className = "final";
      Object.assign(line.dataset, { text: message.text, start: message.start, end: message.end });
      line.innerHTML = `${esc(message.text)}<span class="lat">${message.start.toFixed(1)}–${message.end.toFixed(1)} s · server ${Math.round(message.latency_ms)} ms · felt ${Math.round(felt)} ms · ${esc(message.reason || "")}</span>`;
      $("mic-finals").append(line);
      $("mic-partial").textContent = "";
      break;
    }
    case "failover":
      show("mic-info", `failover ${message.from} → ${message.to} (${message.reason}), replayed ${Math.round(message.replayed_ms)} ms`);
      break;
    case "error":
      show("mic-info", `Mic test: ${message.message}`, true);
      break;
    default: break;
  }
}

function stopMic() {
  $("mic-stop").disabled = true;
  if (mic.socket && mic.socket.readyState === WebSocket.OPEN) {
    mic.socket.send(JSON.stringify({ type: "stop" }));
    setMicState("finishing", "warn");
  }
  stopCapture();
}

function stopCapture() {
  if (mic.stream) mic.stream.getTracks().forEach((t) => t.stop());
  if (mic.context) mic.context.close();
  mic.stream = null; mic.context = null; // t0 stays: finals after a stop still get their latency
  $("mic-start").disabled = false;
  $("mic-stop").disabled = true;
}

function setMicState(text, kind) {
  const el = $("mic-state");
  el.textContent = text;
  el.className = kind ? `badge badge-${kind}` : "badge";
}

function drawLevel(peak) {
  const canvas = $("mic-level");
  const ctx = canvas.getContext("2d");
  canvas.width = canvas.clientWidth || 300;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = peak > 0.9 ? "#b91c1c" : "#2563eb";
  ctx.fillRect(0, 4, canvas.width * Math.min(1, peak), canvas.height - 8);
}

// ------------------------------------------------------------------ TTS

function voiceId(v) { return v.id || v.voice_id || v.name; }
function voiceLabel(v) { return v.name && v.name !== voiceId(v) ? `${v.name} (${voiceId(v)})` : voiceId(v); }

async function loadVoices() {
  const body = $("voices").tBodies[0];
  body.innerHTML = '<tr><td colspan="5" class="note">loading…</td></tr>';
  try {
    const answer = await api("/v1/tts/voices?limit=500", { what: "TTS voices" });
    panel.voices = Array.isArray(answer) ? answer : answer.voices || answer.data || [];
    panel.defaultVoice = answer.default_voice || null;
  } catch (exc) {
    panel.voices = [];
    body.innerHTML = `<tr><td colspan="5" class="voices-error" style="color:var(--bad)">${esc(exc.message)}</td></tr>`;
    return;
  }
  fillFilter("voice-language", panel.voices.map((v) => v.language));
  fillFilter("voice-gender", panel.voices.map((v) => v.gender));
  const usable = panel.voices.filter((v) => v.installed !== false);
  for (const id of ["tts-voice", "ab-a", "ab-b"]) {
    $(id).innerHTML = usable.map((v) => `<option value="${esc(voiceId(v))}">${esc(voiceLabel(v))}</option>`).join("");
  }
  if (panel.defaultVoice && usable.some((v) => voiceId(v) === panel.defaultVoice)) {
    $("tts-voice").value = panel.defaultVoice; $("ab-a").value = panel.defaultVoice;
  }
  if (usable.length > 1) $("ab-b").selectedIndex = 1;
  renderVoices();
}

function fillFilter(id, values) {
  const select = $(id);
  const current = select.value;
  const unique = [...new Set(values.filter(Boolean))].sort();
  select.innerHTML = '<option value="">all</option>' + unique.map((v) => `<option>${esc(v)}</option>`).join("");
  select.value = unique.includes(current) ? current : "";
}

function renderVoices() {
  const language = $("voice-language").value;
  const gender = $("voice-gender").value;
  const search = $("voice-search").value.trim().toLowerCase();
  const installedOnly = $("voice-installed").checked;
  const shown = panel.voices.filter((v) =>
    (!language || v.language === language) && (!gender || v.gender === gender) &&
    (!installedOnly || v.installed !== false) &&
    (!search || `${voiceId(v)} ${v.name || ""} ${v.description || ""}`.toLowerCase().includes(search)));
  $("voices").tBodies[0].innerHTML = shown.map((v) => `<tr data-voice="${esc(voiceId(v))}">
      <td>${esc(voiceLabel(v))}</td><td>${esc(v.language || "?")}</td><td>${esc(v.gender || "–")}</td>
      <td>${esc(v.family || v.engine || v.model || "")}</td>
      <td>${v.installed === false ? '<span class="note">not installed</span>'
        : `<button class="play-voice" data-voice="${esc(voiceId(v))}">Play</button>`}</td></tr>`).join("") ||
    `<tr><td colspan="5" class="note">${panel.voices.length ? "no voice matches the filters" : "the TTS service lists no voice"}</td></tr>`;
}

/** POST a synthesis request; returns {url, info} for an <audio> element. */
async function synthesize(path, payload, what) {
  const response = await api(path, { method: "POST", json: payload, raw: true, what });
  const type = response.headers.get("content-type") || "";
  const engine = response.headers.get("x-voicemesh-engine");
  const approximate = response.headers.get("x-voicemesh-approximate") === "true";
  let blob;
  if (type.startsWith("audio/") || type === "application/octet-stream") {
    blob = await response.blob();
  } else {
    const body = await response.json();
    const b64 = body.audio_base64 || body.audio || (body.data && body.data.audio_base64);
    if (!b64) throw new Error(`${what}: the answer holds no audio`);
    blob = base64Blob(b64, body.content_type || "audio/wav");
  }
  if (!blob.size) throw new Error(`${what}: the service returned empty audio`);
  const info = `${(blob.size / 1024).toFixed(0)} KiB${engine ? ` · ${engine}` : ""}${approximate ? " (an approximation of the voice)" : ""}`;
  return { url: URL.createObjectURL(blob), info };
}

function base64Blob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function play(audioId, result) {
  const audio = $(audioId);
  if (audio.dataset.url) URL.revokeObjectURL(audio.dataset.url);
  audio.dataset.url = result.url;
  audio.src = result.url;
  // Not awaited: play() settles only once sound starts, which the caller need not wait for.
  audio.play().catch(() => { /* autoplay may be blocked; the controls remain */ });
}

/** The volume slider is a linear gain; the service takes decibels. */
function volumeDb() {
  const gain = Number($("tts-volume").value);
  return gain <= 0.001 ? -60 : Math.max(-60, Math.min(20, 20 * Math.log10(gain)));
}

function ttsPayload(text, voice) {
  return { text, voice, speed: Number($("tts-speed").value), volume_db: volumeDb(), format: "wav" };
}

async function runTts() {
  const text = $("tts-text").value.trim();
  if (!text) { show("tts-info", "Type some text first.", true); return; }
  show("tts-info", "synthesizing…");
  $("tts-go").disabled = true;
  const started = performance.now();
  try {
    const result = await synthesize("/v1/tts/synthesize", ttsPayload(text, $("tts-voice").value), "TTS");
    play("tts-audio", result);
    show("tts-info", `${result.info} · ${Math.round(performance.now() - started)} ms`);
  } catch (exc) {
    show("tts-info", exc.message, true);
  } finally {
    $("tts-go").disabled = false;
  }
}

async function playVoice(voice) {
  $("tts-voice").value = voice;
  show("tts-info", `playing a sample of ${voice}…`);
  try {
    const text = "Hello, this is how I sound.";
    const result = await synthesize("/v1/tts/synthesize", ttsPayload(text, voice), `Voice ${voice}`);
    play("tts-audio", result);
    show("tts-info", `${voice}: ${result.info}`);
  } catch (exc) {
    show("tts-info", exc.message, true);
  }
}

async function runCompare() {
  const text = $("tts-text").value.trim() || "Hello from VoiceMesh.";
  const voices = [$("ab-a").value, $("ab-b").value];
  show("ab-a-info", "…"); show("ab-b-info", "…");
  try {
    const speed = Number($("tts-speed").value);
    const answer = await api("/v1/tts/compare", { method: "POST", what: "A/B compare",
      json: { text, candidates: voices.map((voice) => ({ voice, speed })), format: "wav" } });
    const items = answer.candidates || answer.results || [];
    const best = answer.recommendation ? answer.recommendation.index : null;
    ["a", "b"].forEach((side, i) => {
      const item = items[i] || {};
      const b64 = item.audio_base64 || item.audio;
      if (!b64) { show(`ab-${side}-info`, item.error ? item.error.message || String(item.error) : "no audio", true); return; }
      const url = URL.createObjectURL(base64Blob(b64, item.content_type || "audio/wav"));
      $(`ab-${side}-audio`).src = url;
      const rtf = item.rtf !== undefined ? ` · RTF ${item.rtf}` : "";
      const length = item.duration_s !== undefined ? ` · ${item.duration_s} s` : "";
      show(`ab-${side}-info`, `${item.voice || voices[i]}${item.engine ? ` · ${item.engine}` : ""}${length}${rtf}${best === i ? " · recommended" : ""}`);
    });
  } catch (exc) {
    show("ab-a-info", exc.message, true); show("ab-b-info", "", false);
  }
}

// ------------------------------------------------------------------ Clone

async function loadClonedVoices(created = null) {
  try {
    const answer = await api("/v1/clone/voices", { what: "Cloned voices" });
    const voices = Array.isArray(answer) ? answer : answer.voices || answer.data || [];
    // A profile made a moment ago may not be listed yet: keep it in the list anyway.
    if (created && !voices.some((v) => voiceId(v) === voiceId(created))) voices.push(created);
    $("clone-voice").innerHTML = voices.map((v) => `<option value="${esc(voiceId(v))}">${esc(voiceLabel(v))}</option>`).join("");
    show("clone-info", voices.length ? "" : "No cloned voice yet: upload a reference above.");
  } catch (exc) {
    show("clone-info", exc.message, true);
  }
}

async function uploadReference(event) {
  event.preventDefault();
  const file = $("clone-file").files[0];
  const out = $("clone-validation");
  out.hidden = false;
  if (!file) { out.className = "validation bad"; out.textContent = "Choose a reference audio file."; return; }
  const form = new FormData();
  form.append("name", $("clone-name").value.trim());
  form.append("audio", file);
  if ($("clone-ref-text").value.trim()) form.append("prompt_text", $("clone-ref-text").value.trim());
  if ($("clone-language").value) form.append("language", $("clone-language").value);
  form.append("consent", $("clone-consent").checked ? "true" : "false");
  out.className = "validation"; out.textContent = "uploading and validating…";
  try {
    const answer = await api("/v1/clone/voices", { method: "POST", form, what: "Reference upload" });
    out.className = "validation ok";
    out.textContent = formatValidation(answer);
    await loadClonedVoices(answer.voice || answer);
    const id = voiceId(answer.voice || answer);
    if (id) $("clone-voice").value = id;
  } catch (exc) {
    out.className = "validation bad";
    const details = exc.body && exc.body.error ? formatValidation(exc.body.error) : "";
    out.textContent = `${exc.message}${details ? `\n\n${details}` : ""}`;
  }
}

/** The service's verdict on a reference: the profile it made, or why it refused. */
function formatValidation(answer) {
  const lines = [];
  if (answer.voice_id) lines.push(`accepted as ${answer.voice_id} "${answer.name}"`);
  for (const key of ["language", "duration_s", "prompt_text", "prompt_source", "code", "message"]) {
    if (answer[key] !== undefined && answer[key] !== null) lines.push(`${key}: ${answer[key]}`);
  }
  const quality = answer.quality || answer.validation || answer.details;
  if (quality && typeof quality === "object") {
    for (const [k, v] of Object.entries(quality)) lines.push(`  ${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
  }
  return lines.join("\n");
}

async function runClone() {
  const text = $("clone-text").value.trim();
  const voice = $("clone-voice").value;
  if (!voice) { show("clone-info", "Upload or pick a cloned voice first.", true); return; }
  show("clone-info", "synthesizing…");
  try {
    const result = await synthesize("/v1/clone/synthesize", { text, voice_id: voice, format: "wav" }, "Clone");
    play("clone-audio", result);
    show("clone-info", result.info);
  } catch (exc) {
    show("clone-info", exc.message, true);
  }
}

// ------------------------------------------------------------------ helpers and wiring

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function formatDuration(seconds) {
  const s = Math.floor(seconds || 0);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

function wire() {
  $("api-key").value = localStorage.getItem(KEY_STORE.api) || "";
  $("admin-key").value = localStorage.getItem(KEY_STORE.admin) || "";
  $("keys").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORE.api, $("api-key").value.trim());
    localStorage.setItem(KEY_STORE.admin, $("admin-key").value.trim());
    banner("Keys saved in this browser.", "info");
    panel.retryDelay = 1000;
    connectStatus();
  });
  document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => selectTab(b.dataset.tab)));
  document.querySelectorAll("#mode-toggle button").forEach((b) => b.addEventListener("click", () => changeMode(b.dataset.mode)));
  $("mic-start").addEventListener("click", startMic);
  $("mic-stop").addEventListener("click", stopMic);
  $("voices-reload").addEventListener("click", loadVoices);
  ["voice-language", "voice-gender", "voice-search", "voice-installed"].forEach((id) => $(id).addEventListener("input", renderVoices));
  $("voices").addEventListener("click", (event) => {
    const button = event.target.closest(".play-voice");
    if (button) playVoice(button.dataset.voice);
  });
  for (const name of ["speed", "volume"]) {
    $(`tts-${name}`).addEventListener("input", () => { $(`tts-${name}-out`).textContent = Number($(`tts-${name}`).value).toFixed(2); });
  }
  $("tts-go").addEventListener("click", runTts);
  $("ab-go").addEventListener("click", runCompare);
  $("clone-form").addEventListener("submit", uploadReference);
  $("clone-go").addEventListener("click", runClone);
  $("clone-reload").addEventListener("click", () => loadClonedVoices());
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.draw()));
  connectStatus();
}

wire();

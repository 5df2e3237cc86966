/* VoiceMesh control panel: dashboard, routing-mode toggle, mic test, TTS and Clone tabs;
 * the ASR models, Benchmark, Settings and Logs tabs are in admin-tabs.js.
 *
 * Talks only to the gateway it was served from (or ?gateway=http://host:port), through
 * voicemesh.js (common.js). Keys the user types are kept in localStorage and sent as
 * "Authorization: Bearer" on HTTP and as ?api_key= on WebSockets (browsers cannot set
 * headers there). The dashboard and the admin tabs use the admin key when one is given,
 * the API key otherwise.
 */
import {
  $, GATEWAY, KEY_STORE, WS_BASE, api, apiError, banner, client, epochSeconds, esc, explain,
  formatDuration, show, withClient,
} from "./common.js";
import { adminTabs, logEvent, showResources } from "./admin-tabs.js";
import { microphoneFrames } from "./voicemesh.js";

const panel = {
  status: null,          // last status_update
  mode: null,            // mode the gateway reports
  failovers: 0,
  previous: null,        // {ts, total} for the request-rate chart
  statusFeed: null,      // AbortController of the live status feed
  retryDelay: 1000,
  voices: [],
};

// ------------------------------------------------------------------ tabs

function selectTab(name) {
  document.querySelectorAll(".tabs button").forEach((b) => b.setAttribute("aria-selected", String(b.dataset.tab === name)));
  document.querySelectorAll(".tab").forEach((t) => { t.hidden = t.id !== `tab-${name}`; });
  if (name === "tts" && !panel.voices.length) loadVoices();
  if (name === "clone") loadClonedVoices();
  if (name === "dashboard") Object.values(charts).forEach((c) => c.draw());
  adminTabs.opened(name);
}

// ------------------------------------------------------------------ dashboard

const charts = {
  rate: new LiveChart($("chart-rate"), [{ label: "req/s", color: "#2563eb" }]),
  errors: new LiveChart($("chart-errors"), [{ label: "errors %", color: "#b91c1c" }]),
  latency: new LiveChart($("chart-latency"), [{ label: "avg", color: "#15803d" }, { label: "p95", color: "#b45309" }]),
};

/** Follow WS /v1/ws/status through the client's streamStatus(); reconnect with backoff. */
async function connectStatus() {
  if (panel.statusFeed) panel.statusFeed.abort();
  const feed = new AbortController();
  panel.statusFeed = feed;
  setConn("connecting…", "warn");
  let failure = null;
  try {
    for await (const event of client().streamStatus({ signal: feed.signal })) {
      if (feed.signal.aborted) return;
      panel.retryDelay = 1000;
      if (event.type === "status_update") {
        setConn("live", "ok");
        banner(null);
        onStatus(event);
      } else {
        onEvent(event);
      }
    }
  } catch (exc) {
    failure = apiError(exc, "Live status");
  }
  if (feed.signal.aborted || panel.statusFeed !== feed) return; // replaced by a newer feed
  const refused = failure && (failure.status === 4401 || failure.status === 4403);
  const reason = failure && failure.body.error.message ? ` (${failure.body.error.message})` : "";
  banner(refused ? failure.message
    : `Live status: lost the gateway at ${GATEWAY}${reason}; retrying in ${Math.round(panel.retryDelay / 1000)} s.`);
  setConn(refused ? "key refused" : "offline", "bad");
  const delay = panel.retryDelay;
  panel.retryDelay = Math.min(panel.retryDelay * 2, 15000);
  setTimeout(() => { if (panel.statusFeed === feed) connectStatus(); }, delay);
}

function setConn(text, kind) {
  const el = $("conn");
  el.textContent = text;
  el.className = `badge badge-${kind}`;
}

/** The gateway's whole status inside a status_update's data (its services, mode, requests). */
function fullStatus(data) {
  if (data.services) return data;
  return Object.values(data).find((v) => v && typeof v === "object" && v.services) || data;
}

function onStatus(event) {
  const status = { ...fullStatus(event.data), ts: epochSeconds(event.timestamp) };
  panel.status = status;
  showResources(event.data, status);
  adminTabs.status(status);
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

function onEvent(message) {
  logEvent(message);
  const event = message.data || {};
  const list = $("events");
  const when = new Date(epochSeconds(message.timestamp) * 1000).toLocaleTimeString();
  let text;
  switch (message.type) {
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
      text = `${event.kind || event.type} finished after ${event.failovers} failover(s)`;
      break;
    default: adminTabs.event(message); return;
  }
  const item = document.createElement("li");
  item.className = `ev-${message.type}`;
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

async function changeMode(mode, messageId = "mode-message") {
  show(messageId, `switching to ${mode}…`);
  try {
    const answer = await withClient("Mode change", (vm) => vm.setMode(mode));
    setMode(answer.mode);
    show(messageId, `mode ${answer.previous} → ${answer.mode} (${answer.scope === "shared" ? "every gateway" : "this gateway only"})`);
  } catch (exc) {
    show(messageId, exc.message, true);
  }
}

// ------------------------------------------------------------------ mic test

const mic = { frames: null, stream: null, sentSamples: 0, t0: 0, finals: 0, active: false };

/** Frames of the microphone, drawn on the level meter and counted on their way out. */
async function* metered(frames) {
  for await (const frame of frames) {
    let peak = 0;
    for (let i = 0; i < frame.length; i++) peak = Math.max(peak, Math.abs(frame[i]));
    drawLevel(peak / 32768);
    mic.sentSamples += frame.length;
    yield frame;
  }
}

/** The mic test: the microphone through voicemesh.js's microphoneFrames and streamTranscription. */
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
  mic.frames = microphoneFrames(mic.stream, { workletUrl: "pcm-worklet.js" });
  await mic.frames.start(); // captured from now on: nothing said before the session opens is lost
  mic.sentSamples = 0;
  mic.finals = 0;
  mic.t0 = 0;
  mic.active = true;
  setMicState("connecting", "warn");
  const language = $("mic-language").value || undefined;
  try {
    for await (const message of client().streamTranscription(metered(mic.frames), { language })) {
      onMicMessage(message);
    }
  } catch (exc) {
    show("mic-info", micFailure(exc), true);
  } finally {
    mic.active = false;
    stopCapture();
    setMicState("idle", "");
  }
}

/** Why a mic session ended early, in words. */
function micFailure(exc) {
  const error = apiError(exc, "Mic test");
  if (error.status === 4401 || error.status === 401) return explain(401, null, "Mic test");
  if (error.status === 1013) return "Mic test: no STT service could take the session (down or busy).";
  if (error.code === "connection_failed") return `Mic test: cannot reach ${WS_BASE}/ws/transcribe.`;
  return error.body.error.message ? `Mic test: ${error.body.error.message}` : error.message;
}

function onMicMessage(message) {
  const now = performance.now();
  switch (message.type) {
    case "ready": // the client sends the start message and then the audio
      if (!mic.t0) mic.t0 = now; // a reconnect's ready keeps the stream's clock
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
    case "reconnect":
      setMicState(`reconnecting (try ${message.attempt})`, "warn");
      show("mic-info", `connection lost (${message.reason}); reconnecting`, true);
      break;
    case "resumed":
      show("mic-info", `reconnected: session ${message.session_id} resumed at ${message.received_s.toFixed(1)} s, ${message.finals_resent} final(s) sent again`);
      break;
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
  // Ending the frames makes the client send "stop": the open utterance is finalized, then
  // the session closes and startMic's loop ends.
  $("mic-stop").disabled = true;
  if (mic.active) setMicState("finishing", "warn");
  stopCapture();
}

function stopCapture() {
  if (mic.frames) mic.frames.stop();
  if (mic.stream) mic.stream.getTracks().forEach((t) => t.stop());
  mic.frames = null; mic.stream = null; // t0 stays: finals after a stop still get their latency
  $("mic-start").disabled = mic.active;
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

/** POST /v1/tts/synthesize through the client: {url, info} for an <audio> element. */
async function speak(text, voice, what) {
  const result = await withClient(what, (vm) => vm.synthesize(text, {
    voiceId: voice, speed: Number($("tts-speed").value), volumeDb: volumeDb(), format: "wav" }));
  if (!result.audio.size) throw new Error(`${what}: the service returned empty audio`);
  const rtf = result.rtf !== null ? ` · RTF ${result.rtf}` : "";
  const info = `${(result.audio.size / 1024).toFixed(0)} KiB${result.engine ? ` · ${result.engine}` : ""}${rtf}`;
  return { url: URL.createObjectURL(result.audio), info };
}

async function runTts() {
  const text = $("tts-text").value.trim();
  if (!text) { show("tts-info", "Type some text first.", true); return; }
  show("tts-info", "synthesizing…");
  $("tts-go").disabled = true;
  const started = performance.now();
  try {
    const result = await speak(text, $("tts-voice").value, "TTS");
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
    const result = await speak("Hello, this is how I sound.", voice, `Voice ${voice}`);
    play("tts-audio", result);
    show("tts-info", `${voice}: ${result.info}`);
  } catch (exc) {
    show("tts-info", exc.message, true);
  }
}

/** POST /v1/tts/compare through the client; each side's audio fetched from its audio_url. */
async function runCompare() {
  const text = $("tts-text").value.trim() || "Hello from VoiceMesh.";
  const voices = [$("ab-a").value, $("ab-b").value];
  show("ab-a-info", "…"); show("ab-b-info", "…");
  try {
    const speed = Number($("tts-speed").value);
    const answer = await withClient("A/B compare", async (vm) => {
      const compared = await vm.compareVoices(text, voices.map((voice) => ({ voice_id: voice, speed })), { format: "wav" });
      const audio = await Promise.all(compared.results.map((r) => vm.fetchAudio(r.audio_url)));
      return { ...compared, audio };
    });
    ["a", "b"].forEach((side, i) => {
      const item = answer.results[i];
      const blob = answer.audio[i];
      if (!item || !blob || !blob.size) { show(`ab-${side}-info`, "no audio", true); return; }
      $(`ab-${side}-audio`).src = URL.createObjectURL(blob);
      const m = item.metrics || {};
      const rtf = m.rtf !== null && m.rtf !== undefined ? ` · RTF ${m.rtf}` : "";
      const length = m.duration_seconds !== null && m.duration_seconds !== undefined ? ` · ${m.duration_seconds} s` : "";
      show(`ab-${side}-info`, `${item.voice_name || item.voice || voices[i]}${length}${rtf}${item.preferred ? " · recommended" : ""}`);
    });
    $("ab-reason").textContent = answer.recommendation ? answer.recommendation.reason : "";
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
  adminTabs.wire({ changeMode });
  connectStatus();
}

wire();

/**
 * VoiceMesh JavaScript client: one ES module, no build step, no dependency.
 *
 *   import { VoiceMeshClient } from "./voicemesh.js";
 *   const vm = new VoiceMeshClient({ baseUrl: "http://127.0.0.1:8080", apiKey: "my-key" });
 *   const { text } = await vm.transcribe(fileInput.files[0]);
 *
 * HTTP calls send the key as `Authorization: Bearer`; WebSockets as `?api_key=` (browsers
 * cannot set headers there). Every gateway error ({"error": {code, message, request_id}},
 * or a WebSocket {"type": "error"} before a close) is thrown as a VoiceMeshError.
 * Types: voicemesh.d.ts.
 */

const SAMPLE_RATE = 16000;
const FRAME_MS = 40;

/** A gateway error: `code` (docs/errors.md), `status` (HTTP status or WS close code). */
export class VoiceMeshError extends Error {
  constructor(code, message, { status = null, requestId = null, retryAfter = null, details = {} } = {}) {
    super(`${code}: ${message}${requestId ? ` (request ${requestId})` : ""}`);
    this.name = "VoiceMeshError";
    this.code = code;
    this.serverMessage = message;
    this.status = status;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
    this.details = details;
  }

  /** True for "not now" errors (busy, rate limited, no backend): retry after `retryAfter` s. */
  get retryable() {
    return ["busy", "no_backend", "rate_limited", "draining"].includes(this.code) || this.status === 1013;
  }
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && body.error ? body.error : { code: "http_error", message: response.statusText };
  const { code, message, request_id: requestId, retry_after: retryAfter, ...details } = error;
  return new VoiceMeshError(code, message || "", {
    status: response.status,
    requestId: requestId || response.headers.get("x-request-id"),
    retryAfter: retryAfter ?? (Number(response.headers.get("retry-after")) || null),
    details,
  });
}

function errorFromMessage(message, closeCode = null) {
  const { type, code, message: text, retry_after: retryAfter, ...details } = message;
  return new VoiceMeshError(code || "internal_error", text || "", { status: closeCode, retryAfter, details });
}

/** Mono samples (Float32Array in [-1, 1], Int16Array or an ArrayBuffer of PCM16) as Int16Array. */
function toPcm16(samples) {
  if (samples instanceof Int16Array) return samples;
  if (samples instanceof ArrayBuffer) return new Int16Array(samples);
  if (ArrayBuffer.isView(samples) && !(samples instanceof Float32Array)) {
    return new Int16Array(samples.buffer, samples.byteOffset, samples.byteLength / 2);
  }
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const v = Math.max(-1, Math.min(1, samples[i]));
    out[i] = v < 0 ? v * 0x8000 : v * 0x7fff;
  }
  return out;
}

/** Messages of a WebSocket as an async iterator; ends on close, throws on a fatal error. */
function socketMessages(socket) {
  const queue = [];
  let wake = null;
  let closed = null;
  const push = (item) => {
    queue.push(item);
    if (wake) { wake(); wake = null; }
  };
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") push({ message: JSON.parse(event.data) });
  });
  socket.addEventListener("close", (event) => {
    closed = event;
    push({ close: event });
  });
  socket.addEventListener("error", () => push({ failed: true }));
  return {
    async *[Symbol.asyncIterator]() {
      let fatal = null;
      for (;;) {
        if (!queue.length) await new Promise((resolve) => { wake = resolve; });
        const item = queue.shift();
        if (item.message) {
          if (item.message.type === "error" && item.message.fatal) {
            fatal = item.message; // the close follows: thrown with its code
            continue;
          }
          yield item.message;
        } else if (item.close || item.failed) {
          const event = item.close || closed;
          if (fatal) throw errorFromMessage(fatal, event ? event.code : null);
          if (item.failed && !event) continue; // the close event comes next
          if (event.code !== 1000 && event.code !== 1005) {
            throw new VoiceMeshError("connection_lost", `the connection closed (${event.code})`, {
              status: event.code,
            });
          }
          return;
        }
      }
    },
  };
}

function opened(socket) {
  return new Promise((resolve, reject) => {
    socket.addEventListener("open", () => resolve(socket), { once: true });
    socket.addEventListener("close", (event) => {
      reject(new VoiceMeshError("connection_failed", `cannot open ${socket.url}`, { status: event.code }));
    }, { once: true });
  });
}

/** The gateway's HTTP, streaming and status interfaces. */
export class VoiceMeshClient {
  /**
   * @param {object} options
   * @param {string} [options.baseUrl] the gateway (default: the page's own origin)
   * @param {string} [options.apiKey] client key, when auth is on
   * @param {string} [options.adminKey] admin key for getStatus/streamStatus (else apiKey)
   */
  constructor({ baseUrl, apiKey = null, adminKey = null } = {}) {
    this.baseUrl = (baseUrl || globalThis.location.origin).replace(/\/$/, "");
    this.apiKey = apiKey;
    this.adminKey = adminKey;
  }

  wsUrl(path, admin = false) {
    const key = admin ? this.adminKey || this.apiKey : this.apiKey;
    const base = this.baseUrl.replace(/^http/, "ws");
    return `${base}${path}${key ? `?api_key=${encodeURIComponent(key)}` : ""}`;
  }

  async request(method, path, { json, form, admin = false, raw = false } = {}) {
    const headers = {};
    const key = admin ? this.adminKey || this.apiKey : this.apiKey;
    if (key) headers.Authorization = `Bearer ${key}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form) {
      body = form;
    }
    const response = await fetch(this.baseUrl + path, { method, headers, body });
    if (!response.ok) throw await errorFrom(response);
    return raw ? response : response.json();
  }

  /** POST /v1/asr/transcribe: a Blob, File or ArrayBuffer; JSON answer, or text for srt/vtt/txt/lrc. */
  async transcribe(audio, { model, language, responseFormat = "json", enableDiarization } = {}) {
    const form = new FormData();
    const blob = audio instanceof Blob ? audio : new Blob([audio], { type: "audio/wav" });
    form.append("audio", blob, audio.name || "audio.wav");
    if (model) form.append("model", model);
    if (language) form.append("language", language);
    form.append("response_format", responseFormat);
    if (enableDiarization !== undefined) form.append("enable_diarization", String(enableDiarization));
    const response = await this.request("POST", "/v1/asr/transcribe", { form, raw: true });
    return responseFormat === "json" ? response.json() : response.text();
  }

  /** POST /v1/tts/synthesize: the audio as a Blob and what the X-VoiceMesh headers say. */
  async synthesize(text, { voiceId, model, speed, volumeDb, format = "wav", sampleRate } = {}) {
    const json = { text, format };
    if (voiceId !== undefined) json.voice_id = voiceId;
    if (model) json.model = model;
    if (speed !== undefined) json.speed = speed;
    if (volumeDb !== undefined) json.volume_db = volumeDb;
    if (sampleRate) json.sample_rate = sampleRate;
    const response = await this.request("POST", "/v1/tts/synthesize", { json, raw: true });
    const header = (name) => response.headers.get(`x-voicemesh-${name}`);
    const number = (name) => (header(name) === null ? null : Number(header(name)));
    const name = header("voice-name");
    return {
      audio: await response.blob(),
      voice: header("voice"),
      voiceName: name ? decodeURIComponent(name) : null,
      model: header("model"),
      engine: header("engine"),
      sampleRate: number("sample-rate"),
      durationSeconds: number("duration"),
      rtf: number("rtf"),
    };
  }

  /** POST /v1/tts/compare: candidates are voice ids or {voice_id, model, speed}. */
  async compareVoices(text, candidates, { metrics, format } = {}) {
    const json = {
      text,
      candidates: candidates.map((c) => (typeof c === "object" ? c : { voice_id: c })),
    };
    if (metrics) json.metrics = metrics;
    if (format) json.format = format;
    return this.request("POST", "/v1/tts/compare", { json });
  }

  /** GET an audio_url of a compare (or a JSON synthesis) as a Blob. */
  async fetchAudio(audioUrl) {
    return (await this.request("GET", audioUrl, { raw: true })).blob();
  }

  /** GET /v1/admin/status. */
  async getStatus() {
    return this.request("GET", "/v1/admin/status", { admin: true });
  }

  /** POST /v1/admin/mode: "gpu", "cpu" or "auto" for every gateway replica. */
  async setMode(mode) {
    return this.request("POST", "/v1/admin/mode", { json: { mode }, admin: true });
  }

  /** GET /v1/admin/models: every ASR and TTS model, its replicas and their status. */
  async listModels() {
    return this.request("GET", "/v1/admin/models", { admin: true });
  }

  /** POST /v1/admin/models/{id}/load or /unload on the replicas that hold it. */
  async loadModel(id, { replicas } = {}) {
    return this.modelAction(id, "load", { replicas });
  }

  async unloadModel(id, { force, replicas } = {}) {
    return this.modelAction(id, "unload", { force, replicas });
  }

  /** POST /v1/admin/models/{id}/default: the ASR model of requests that name none. */
  async setDefaultModel(id) {
    return this.modelAction(id, "default", {});
  }

  async modelAction(id, action, { force, replicas }) {
    const json = {};
    if (force !== undefined) json.force = force;
    if (replicas !== undefined) json.replicas = replicas;
    const path = `/v1/admin/models/${encodeURIComponent(id)}/${action}`;
    return this.request("POST", path, { json, admin: true });
  }

  /** POST /v1/admin/config/reload: re-read the run-time settings on every gateway. */
  async reloadConfig() {
    return this.request("POST", "/v1/admin/config/reload", { json: {}, admin: true });
  }

  /** POST /v1/benchmark/run: starts a bounded run in the background; its id at once. */
  async startBenchmark({ kind = "stt", clients, clips, realTime } = {}) {
    const json = { kind };
    if (clients !== undefined) json.clients = clients;
    if (clips !== undefined) json.clips = clips;
    if (realTime !== undefined) json.real_time = realTime;
    return this.request("POST", "/v1/benchmark/run", { json, admin: true });
  }

  /** GET /v1/benchmark/results, or /results/{id} for one run (progress, then rows and summary). */
  async benchmarkResults(id = null) {
    const path = id ? `/v1/benchmark/results/${encodeURIComponent(id)}` : "/v1/benchmark/results";
    return this.request("GET", path, { admin: true });
  }

  /** WS /v1/ws/status: {type, timestamp, data} until `signal` aborts (or break). */
  async *streamStatus({ signal } = {}) {
    const socket = new WebSocket(this.wsUrl("/v1/ws/status", true));
    const abort = () => socket.close(1000);
    signal?.addEventListener("abort", abort);
    try {
      const messages = socketMessages(socket);
      for await (const message of messages) {
        const { type, ts, timestamp, data, ...rest } = message;
        yield { type, timestamp: timestamp ?? ts ?? null, data: data ?? rest };
      }
    } finally {
      signal?.removeEventListener("abort", abort);
      socket.close(1000);
    }
  }

  /**
   * WS /ws/transcribe: partial, final, vad, failover events for a buffer or a live source.
   *
   * `source`: samples (Float32Array, Int16Array, ArrayBuffer of PCM16) at `sampleRate`, or an
   * (async) iterable of such frames (a microphone: see `microphoneFrames`). Yields the
   * server's messages (ready first) until the last final; throws a VoiceMeshError on a
   * refusal, or once `reconnects` attempts after a lost connection have failed.
   *
   * A dropped connection is reconnected with backoff and the server session resumed: the
   * client sends `start` with the session's resume token and its last final's index, gets
   * `resumed` and the finals it missed, and sends its audio from what the gateway held on
   * (it keeps what no final covered, up to `bufferS` seconds of a live source). A session
   * that can no longer be resumed goes on as a new one, sent the audio no final covered,
   * its times shifted to stay continuous. Each reconnect yields `{type: "reconnect", attempt,
   * reason}` first.
   */
  async *streamTranscription(
    source,
    { sampleRate = SAMPLE_RATE, language, signal, reconnects = 5, bufferS = 60 } = {},
  ) {
    const buffered = source instanceof ArrayBuffer || ArrayBuffer.isView(source);
    const kept = new KeptAudio(buffered ? Infinity : Math.round(sampleRate * bufferS));
    const pump = kept.fill(source, sampleRate);
    const session = { token: null, lastFinal: -1, origin: 0, finalized: 0 };
    let attempt = 0;
    try {
      for (;;) {
        try {
          yield* this.streamConnection(kept, session, { sampleRate, language, signal, attempt });
          return;
        } catch (exc) {
          if (!exc.dropped || attempt >= reconnects || signal?.aborted) throw exc;
          attempt += 1;
          yield { type: "reconnect", attempt, reason: exc.message };
          await new Promise((resolve) => setTimeout(resolve, Math.min(8000, 500 * 2 ** (attempt - 1))));
        }
      }
    } finally {
      kept.close();
      await pump;
    }
  }

  /** One connection of streamTranscription: ready, resume or start, audio, messages. */
  async *streamConnection(kept, session, { sampleRate, language, signal, attempt }) {
    const socket = new WebSocket(this.wsUrl("/ws/transcribe"));
    socket.binaryType = "arraybuffer";
    const messages = socketMessages(socket)[Symbol.asyncIterator]();
    try {
      await opened(socket);
    } catch (exc) {
      exc.dropped = attempt > 0; // the gateway may be restarting: try again
      throw exc;
    }
    const abort = () => socket.close(1000);
    signal?.addEventListener("abort", abort);
    let sending = null;
    try {
      const first = await messages.next();
      if (first.done) return;
      const ready = first.value;
      yield ready;
      const start = { type: "start", sample_rate: sampleRate, encoding: "pcm_s16le", language };
      let from = null;
      if (session.token) {
        socket.send(JSON.stringify({ ...start, resume_token: session.token, last_final: session.lastFinal }));
        for (;;) {
          const next = await messages.next();
          if (next.done) return;
          const message = next.value;
          yield message;
          if (message.type === "resumed") {
            from = session.origin + Math.round(message.received_s * sampleRate);
            break;
          }
          if (message.type === "error" && NOT_RESUMED.includes(message.code)) break;
        }
      } else {
        socket.send(JSON.stringify(start));
      }
      if (from === null) {
        from = Math.max(session.finalized, kept.start);
        Object.assign(session, { token: ready.resume_token || null, lastFinal: -1, origin: from });
      }
      sending = kept.send(socket, from);
      const offset = session.origin / sampleRate;
      for (;;) {
        const next = await messages.next();
        if (next.done) break;
        const message = shiftTimes(next.value, offset);
        if (message.type === "final") {
          if (Number.isInteger(message.index)) {
            if (message.index <= session.lastFinal) continue; // sent again around a resume
            session.lastFinal = message.index;
          }
          session.finalized = Math.max(session.finalized, Math.round(message.end * sampleRate));
          kept.dropBefore(session.finalized);
        }
        yield message;
      }
      await sending;
    } catch (exc) {
      if (exc instanceof VoiceMeshError && exc.code === "connection_lost") {
        exc.dropped = [1001, 1006, 1011, 1012].includes(exc.status);
      }
      throw exc;
    } finally {
      signal?.removeEventListener("abort", abort);
      if (socket.readyState === WebSocket.OPEN) socket.close(1000);
    }
  }
}

const NOT_RESUMED = ["session_not_found", "resume_unavailable", "resume_unsupported"];

/** A server message's stream times moved by `offset` seconds (a new session's clock). */
function shiftTimes(message, offset) {
  if (!offset) return message;
  for (const key of ["start", "end", "t"]) {
    if (typeof message[key] === "number") message[key] = Math.round((message[key] + offset) * 1000) / 1000;
  }
  for (const segment of message.segments || []) shiftTimes(segment, offset);
  return message;
}

/**
 * The audio of a stream by absolute sample index: filled from the source, sent to the
 * connection of the moment, kept until a final covers it (at most `max` samples).
 */
class KeptAudio {
  constructor(max) {
    this.max = max;
    this.chunks = []; // [start index, Int16Array]
    this.start = 0;
    this.end = 0;
    this.done = false;
    this.closed = false;
    this.wakers = new Set();
  }

  wake() {
    for (const waker of this.wakers) waker();
    this.wakers.clear();
  }

  changed() {
    return new Promise((resolve) => this.wakers.add(resolve));
  }

  push(pcm) {
    this.chunks.push([this.end, pcm]);
    this.end += pcm.length;
    while (this.chunks.length > 1 && this.end - this.chunks[1][0] > this.max) this.chunks.shift();
    this.start = this.chunks.length ? this.chunks[0][0] : this.end;
    this.wake();
  }

  dropBefore(index) {
    while (this.chunks.length && this.chunks[0][0] + this.chunks[0][1].length <= index) this.chunks.shift();
    this.start = this.chunks.length ? this.chunks[0][0] : this.end;
  }

  /** Read `source` into the kept audio until it ends or the stream closes. */
  async fill(source, sampleRate) {
    try {
      if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
        const pcm = toPcm16(source);
        const step = Math.round((sampleRate * FRAME_MS) / 1000);
        for (let i = 0; i < pcm.length; i += step) this.push(pcm.subarray(i, i + step));
      } else {
        for await (const frame of source) {
          // A live source never ends by itself: stop reading it once the stream is over.
          if (this.closed) break;
          this.push(toPcm16(frame));
        }
      }
    } finally {
      this.done = true;
      this.wake();
    }
  }

  close() {
    this.closed = true;
    this.wake();
  }

  /** Send the audio from `index` on as it comes, then `stop` once the source ended. */
  async send(socket, index) {
    let next = index;
    while (socket.readyState === WebSocket.OPEN && !this.closed) {
      for (const [first, pcm] of this.chunks) {
        const last = first + pcm.length;
        if (last <= next) continue;
        if (socket.readyState !== WebSocket.OPEN) return;
        socket.send(pcm.subarray(Math.max(0, next - first)));
        next = last;
      }
      if (this.done && next >= this.end) {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "stop" }));
        return;
      }
      await Promise.race([this.changed(), closedPromise(socket)]);
    }
  }
}

function closedPromise(socket) {
  return new Promise((resolve) => {
    if (socket.readyState >= WebSocket.CLOSING) resolve();
    else socket.addEventListener("close", () => resolve(), { once: true });
  });
}

/**
 * A microphone's MediaStream as 16 kHz PCM16 frames (an async iterable for
 * streamTranscription), through the AudioWorklet at `workletUrl` (the control panel's
 * pcm-worklet.js). `stop()` ends it.
 */
export function microphoneFrames(stream, { workletUrl }) {
  const queue = [];
  let wake = null;
  let done = false;
  let context = null;
  const frames = {
    sampleRate: SAMPLE_RATE,
    async start() {
      context = new AudioContext();
      await context.audioWorklet.addModule(workletUrl);
      const node = new AudioWorkletNode(context, "pcm16-downsampler");
      node.port.onmessage = (event) => {
        queue.push(new Int16Array(event.data.pcm));
        if (wake) { wake(); wake = null; }
      };
      context.createMediaStreamSource(stream).connect(node);
    },
    stop() {
      done = true;
      if (wake) { wake(); wake = null; }
      if (context) context.close();
    },
    async *[Symbol.asyncIterator]() {
      if (!context) await frames.start();
      while (!done || queue.length) {
        if (!queue.length) await new Promise((resolve) => { wake = resolve; });
        if (queue.length) yield queue.shift();
      }
    },
  };
  return frames;
}

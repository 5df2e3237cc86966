/* What every tab of the control panel shares: the gateway, the keys, the client, errors.
 *
 * Every call to the gateway goes through voicemesh.js (client/js, served beside the panel
 * as /voicemesh.js), the same client an app would use; this module adds the keys the
 * user typed and turns the client's typed errors into sentences a person can act on.
 */
import { VoiceMeshClient, VoiceMeshError } from "./voicemesh.js";

export const $ = (id) => document.getElementById(id);
export const GATEWAY = (new URLSearchParams(location.search).get("gateway") || location.origin).replace(/\/$/, "");
export const WS_BASE = GATEWAY.replace(/^http/, "ws");
export const KEY_STORE = { api: "voicemesh.apiKey", admin: "voicemesh.adminKey" };

export function apiKey() { return localStorage.getItem(KEY_STORE.api) || ""; }
export function adminKey() { return localStorage.getItem(KEY_STORE.admin) || apiKey(); }

/** A client with the keys saved in this browser (made per call: the keys may change). */
export function client() {
  return new VoiceMeshClient({ baseUrl: GATEWAY, apiKey: apiKey() || null, adminKey: adminKey() || null });
}

/** A sentence a person can act on, from a status (HTTP or WS close code) and the error. */
export function explain(status, error, what) {
  const err = error || {};
  const detail = err.message ? ` (${err.message})` : "";
  if (status === 401 || status === 4401) return `${what}: the API key is missing or wrong. Enter it at the top and save.${detail}`;
  if (status === 403 || status === 4403) return `${what}: this needs the admin key. Enter it at the top and save.${detail}`;
  if (status === 404) return `${what}: not found${detail || ": the service is not deployed here"}.`;
  if (status === 429) return `${what}: too many requests; try again in ${err.retry_after || "a few"} s.`;
  if (status === 502 || status === 503 || status === 504) return `${what}: the service is down or unreachable${detail}.`;
  if (status === 0) return `${what}: cannot reach the gateway at ${GATEWAY}${detail}.`;
  return `${what}: error ${status}${detail}.`;
}

/** A failed call: `status`, the gateway's error body under `body.error`, and `code`. */
export class ApiError extends Error {
  constructor(status, body, what) {
    super(explain(status, body && body.error, what));
    this.status = status;
    this.body = body;
    this.code = body && body.error ? body.error.code : null;
  }
}

/** The client's error (or a network failure) as an ApiError for `what`. */
export function apiError(exc, what) {
  if (exc instanceof ApiError) return exc;
  if (exc instanceof VoiceMeshError) {
    const error = { code: exc.code, message: exc.serverMessage,
      retry_after: exc.retryAfter, request_id: exc.requestId, ...exc.details };
    return new ApiError(exc.status || 0, { error }, what);
  }
  return new ApiError(0, { error: { message: String((exc && exc.message) || exc) } }, what);
}

/** Run `call(client)`; any failure is thrown as an ApiError naming `what`. */
export async function withClient(what, call) {
  try {
    return await call(client());
  } catch (exc) {
    throw apiError(exc, what);
  }
}

/** fetch() against the gateway through the client: JSON in and out unless `raw`. */
export async function api(path, { method = "GET", json, form, admin = false, what = path, raw = false } = {}) {
  return withClient(what, (vm) => vm.request(method, path, { json, form, admin, raw }));
}

export function banner(message, kind = "error") {
  const el = $("banner");
  if (!message) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.className = kind === "info" ? "banner info" : "banner";
  el.textContent = message;
}

export function show(id, message, bad = false) {
  const el = $(id);
  el.textContent = message;
  el.style.color = bad ? "var(--bad)" : "";
}

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

export function formatDuration(seconds) {
  const s = Math.floor(seconds || 0);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

/** Seconds since the epoch from a feed timestamp (ISO 8601 text or a number). */
export function epochSeconds(timestamp) {
  if (typeof timestamp === "number") return timestamp;
  const parsed = Date.parse(timestamp || "");
  return Number.isNaN(parsed) ? Date.now() / 1000 : parsed / 1000;
}

/** A number with `digits` decimals, or "–" when there is none. */
export function num(value, digits = 0) {
  return value === null || value === undefined || Number.isNaN(Number(value)) ? "–" : Number(value).toFixed(digits);
}

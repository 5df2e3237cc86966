// Types of voicemesh.js, the VoiceMesh JavaScript client.

export type Samples = Float32Array | Int16Array | ArrayBuffer;
export type AudioSource = Samples | Iterable<Samples> | AsyncIterable<Samples>;

export class VoiceMeshError extends Error {
  constructor(
    code: string,
    message: string,
    options?: { status?: number | null; requestId?: string | null; retryAfter?: number | null; details?: Record<string, unknown> },
  );
  /** The error code (docs/errors.md), e.g. "unauthorized", "busy", "validation_error". */
  code: string;
  /** The gateway's own message, without the code and request id the `message` adds. */
  serverMessage: string;
  /** HTTP status, or the WebSocket close code of a refused stream. */
  status: number | null;
  requestId: string | null;
  /** Seconds to wait before retrying, when the gateway said. */
  retryAfter: number | null;
  details: Record<string, unknown>;
  /** True for "not now" errors (busy, rate limited, no backend). */
  readonly retryable: boolean;
}

export interface ClientOptions {
  /** The gateway, e.g. "http://127.0.0.1:8080" (default: the page's origin). */
  baseUrl?: string;
  apiKey?: string | null;
  /** Used by the admin methods (status, models, config, benchmarks) when given. */
  adminKey?: string | null;
}

export interface TranscriptSegment {
  text: string;
  start_time: number;
  end_time: number;
  confidence: number | null;
}

export interface Transcription {
  success: boolean;
  text: string;
  model: string | null;
  confidence: number | null;
  duration_seconds: number | null;
  processing_time_ms: number | null;
  language: string | null;
  format: string;
  segments: TranscriptSegment[];
  metadata: { engine: string | null; rtf: number | null; model_load_time_ms: number | null; [key: string]: unknown };
}

export interface TranscribeOptions {
  model?: string;
  language?: string;
  responseFormat?: "json" | "srt" | "vtt" | "txt" | "lrc";
  enableDiarization?: boolean;
}

export interface Synthesis {
  audio: Blob;
  voice: string | null;
  voiceName: string | null;
  model: string | null;
  engine: string | null;
  sampleRate: number | null;
  durationSeconds: number | null;
  rtf: number | null;
}

export interface SynthesizeOptions {
  voiceId?: number | string;
  model?: string;
  speed?: number;
  volumeDb?: number;
  format?: "wav" | "mp3" | "flac" | "pcm" | "opus";
  sampleRate?: number;
}

export interface VoiceCandidate {
  voice_id?: number | string;
  model?: string;
  speed?: number;
}

export interface Comparison {
  results: {
    voice_id: number | string | null;
    voice_name: string | null;
    model: string | null;
    audio_url: string;
    metrics: { rtf: number | null; latency_ms: number | null; duration_seconds: number | null };
    preferred: boolean;
  }[];
  recommendation: { for: string; recommended: number | string | null; index: number | null; reason: string };
}

export interface StatusEvent {
  type: string;
  timestamp: number | string | null;
  data: Record<string, unknown>;
}

export type StreamEvent =
  | {
      type: "ready";
      session_id: string;
      engine: string;
      device: string;
      model: string;
      backend?: string;
      resume_token?: string;
    }
  | { type: "partial"; utterance_id: number; text: string; stable_text: string; start: number; end: number }
  | {
      type: "final";
      utterance_id: number;
      text: string;
      start: number;
      end: number;
      language: string | null;
      engine: string;
      device: string;
      model: string;
      latency_ms: number;
      reason: "endpoint" | "flush" | "stop" | "max_length";
      segments: { start: number; end: number; text: string }[];
      index?: number;
    }
  | { type: "vad"; event: "speech_start" | "speech_end"; t: number; source: string }
  | { type: "failover"; from: string | null; to: string; replayed_ms: number; reason: string }
  | { type: "ack"; received_s: number }
  | {
      type: "resumed";
      session_id: string;
      received_s: number;
      replayed_ms: number;
      finals_resent: number;
      finals_missing: number;
    }
  | { type: "reconnect"; attempt: number; reason: string }
  | { type: "error"; code: string; message: string; fatal: boolean };

export interface ModelAction {
  model: string;
  action: "load" | "unload";
  replicas: { instance_id: string; status: string; previous?: string; error?: string }[];
}

export interface ConfigReload {
  changed: Record<string, { old: unknown; new: unknown }>;
  unchanged: string[];
  requires_restart?: Record<string, { old: unknown; new: unknown }>;
}

export class VoiceMeshClient {
  constructor(options?: ClientOptions);
  baseUrl: string;
  transcribe(audio: Blob | ArrayBuffer, options?: TranscribeOptions & { responseFormat?: "json" }): Promise<Transcription>;
  transcribe(audio: Blob | ArrayBuffer, options: TranscribeOptions): Promise<Transcription | string>;
  synthesize(text: string, options?: SynthesizeOptions): Promise<Synthesis>;
  compareVoices(
    text: string,
    candidates: (VoiceCandidate | number | string)[],
    options?: { metrics?: ("rtf" | "latency_ms" | "duration_seconds")[]; format?: string },
  ): Promise<Comparison>;
  fetchAudio(audioUrl: string): Promise<Blob>;
  getStatus(): Promise<Record<string, unknown>>;
  setMode(mode: "gpu" | "cpu" | "auto"): Promise<{ mode: string; previous: string; scope: "shared" | "local" }>;
  listModels(): Promise<Record<string, unknown>>;
  loadModel(id: string, options?: { replicas?: string[] }): Promise<ModelAction>;
  unloadModel(id: string, options?: { force?: boolean; replicas?: string[] }): Promise<ModelAction>;
  setDefaultModel(id: string): Promise<Record<string, unknown>>;
  reloadConfig(): Promise<ConfigReload>;
  startBenchmark(options?: {
    kind?: "stt" | "tts" | "both";
    clients?: number;
    clips?: number;
    realTime?: boolean;
  }): Promise<{ id: string; status: string; results_url: string }>;
  benchmarkResults(id?: string | null): Promise<Record<string, unknown>>;
  streamStatus(options?: { signal?: AbortSignal }): AsyncGenerator<StatusEvent, void, undefined>;
  streamTranscription(
    source: AudioSource,
    options?: {
      sampleRate?: number;
      language?: string;
      signal?: AbortSignal;
      reconnects?: number;
      bufferS?: number;
    },
  ): AsyncGenerator<StreamEvent, void, undefined>;
}

export interface MicrophoneFrames extends AsyncIterable<Int16Array> {
  readonly sampleRate: 16000;
  start(): Promise<void>;
  stop(): void;
}

/** A MediaStream as 16 kHz PCM16 frames, through the control panel's pcm-worklet.js. */
export function microphoneFrames(stream: MediaStream, options: { workletUrl: string | URL }): MicrophoneFrames;

/* AudioWorklet: microphone samples -> 16 kHz mono PCM16 frames of 20 ms, posted to the page. */
"use strict";

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 320; // 20 ms at 16 kHz

class Pcm16Downsampler extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / TARGET_RATE; // input samples per output sample
    this.position = 0; // fractional read position into the pending input
    this.pending = new Float32Array(0);
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
    this.peak = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    // Mix down to mono.
    const block = new Float32Array(input[0].length);
    for (const channel of input) for (let i = 0; i < block.length; i++) block[i] += channel[i] / input.length;
    const joined = new Float32Array(this.pending.length + block.length);
    joined.set(this.pending); joined.set(block, this.pending.length);
    // Box-filter over each output sample's span of input, then pick: enough for speech.
    let pos = this.position;
    while (pos + this.ratio <= joined.length) {
      const start = Math.floor(pos), end = Math.max(start + 1, Math.floor(pos + this.ratio));
      let sum = 0;
      for (let i = start; i < end; i++) sum += joined[i];
      const value = Math.max(-1, Math.min(1, sum / (end - start)));
      this.peak = Math.max(this.peak, Math.abs(value));
      this.frame[this.filled++] = value < 0 ? value * 0x8000 : value * 0x7fff;
      if (this.filled === FRAME_SAMPLES) {
        const out = this.frame.slice(0);
        this.port.postMessage({ pcm: out.buffer, peak: this.peak }, [out.buffer]);
        this.filled = 0; this.peak = 0;
      }
      pos += this.ratio;
    }
    const keep = Math.floor(pos);
    this.pending = joined.slice(keep);
    this.position = pos - keep;
    return true;
  }
}

registerProcessor("pcm16-downsampler", Pcm16Downsampler);

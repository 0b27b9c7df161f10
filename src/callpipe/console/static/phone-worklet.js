// AudioWorklet processors of the softphone: the microphone -> 20 ms encoded frames, and the
// bot's encoded audio -> the speaker through a small jitter buffer. Codecs: G.711 μ-law
// (PCMU, 8 kHz) and L16 (big-endian 16-bit PCM, network byte order as RTP carries it).
"use strict";

// Streaming windowed-sinc resampler (Blackman window, ZEROS zero crossings each side).
// Low-pass at 92% of the lower Nyquist, so 48 kHz -> 8 kHz does not alias.
const ZEROS = 8;
class Resampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate;
    this.cut = Math.min(1, outRate / inRate) * 0.92;
    this.half = Math.ceil(ZEROS / this.cut);
    this.pos = this.half; // position of the next output sample in `buf` (input samples)
    this.buf = new Float32Array(this.half); // history of zeros
  }
  kernel(d) {
    if (d === 0) return this.cut;
    const x = Math.PI * this.cut * d;
    const w = 0.42 + 0.5 * Math.cos((Math.PI * d) / this.half) + 0.08 * Math.cos((2 * Math.PI * d) / this.half);
    return (this.cut * Math.sin(x) / x) * w;
  }
  process(input) {
    const joined = new Float32Array(this.buf.length + input.length);
    joined.set(this.buf); joined.set(input, this.buf.length);
    const out = [];
    const h = this.half;
    while (this.pos + h < joined.length) {
      const center = Math.floor(this.pos), frac = this.pos - center;
      let acc = 0;
      for (let k = -h + 1; k <= h; k++) acc += joined[center + k] * this.kernel(k - frac);
      out.push(acc);
      this.pos += this.step;
    }
    const keep = Math.max(0, Math.floor(this.pos) - h);
    this.buf = joined.slice(keep);
    this.pos -= keep;
    return Float32Array.from(out);
  }
}

function muLawEncode(sample) {
  // ITU-T G.711 μ-law, from a 16-bit linear sample.
  const BIAS = 0x84, CLIP = 32635;
  let s = Math.max(-32768, Math.min(32767, Math.round(sample)));
  const sign = s < 0 ? 0x80 : 0;
  if (s < 0) s = -s;
  if (s > CLIP) s = CLIP;
  s += BIAS;
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

const MU_TABLE = new Float32Array(256);
for (let i = 0; i < 256; i++) {
  const u = ~i & 0xff;
  const exponent = (u >> 4) & 0x07, mantissa = u & 0x0f;
  const magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
  MU_TABLE[i] = ((u & 0x80) ? -magnitude : magnitude) / 32768;
}

function decode(bytes, encoding) {
  if (encoding === "PCMU") {
    const out = new Float32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = MU_TABLE[bytes[i]];
    return out;
  }
  const n = bytes.length >> 1, out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = (bytes[2 * i] << 8) | bytes[2 * i + 1];
    if (v >= 0x8000) v -= 0x10000;
    out[i] = v / 32768;
  }
  return out;
}

function encode(samples, encoding) {
  if (encoding === "PCMU") {
    const out = new Uint8Array(samples.length);
    for (let i = 0; i < samples.length; i++) out[i] = muLawEncode(samples[i] * 32768);
    return out;
  }
  const out = new Uint8Array(samples.length * 2);
  for (let i = 0; i < samples.length; i++) {
    const v = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768)));
    out[2 * i] = (v >> 8) & 0xff; out[2 * i + 1] = v & 0xff;
  }
  return out;
}

// Microphone -> resample -> 20 ms frames, posted to the page (which sends them as `media`).
class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { outRate, encoding } = options.processorOptions;
    this.encoding = encoding;
    this.frame = Math.round(outRate * 0.02);
    this.resampler = new Resampler(sampleRate, outRate);
    this.pending = new Float32Array(this.frame);
    this.filled = 0;
    this.muted = false;
    this.level = 0;
    this.frames = 0;
    this.port.onmessage = (event) => { if (event.data.type === "mute") this.muted = event.data.on; };
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const samples = this.resampler.process(channel);
    for (let i = 0; i < samples.length; i++) {
      this.pending[this.filled++] = this.muted ? 0 : samples[i];
      this.level = Math.max(this.level * 0.999, Math.abs(samples[i])); // peak, decaying in ~0.1 s
      if (this.filled === this.frame) {
        const bytes = encode(this.pending, this.encoding);
        this.frames++;
        this.port.postMessage({ type: "frame", bytes, level: this.level }, [bytes.buffer]);
        this.filled = 0;
      }
    }
    return true;
  }
}

// The bot's audio -> speaker. Starts playing once PREBUFFER is queued (or a mark follows the
// audio: the end of a reply); echoes each mark once the audio before it has played; `clear`
// drops what is queued and returns its marks at once, as a phone does.
const PREBUFFER_SECS = 0.06;
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { inRate, encoding } = options.processorOptions;
    this.inRate = inRate;
    this.encoding = encoding;
    this.resampler = new Resampler(inRate, sampleRate);
    this.queue = []; // Float32Array chunks and {mark: name}
    this.head = 0; // read position in queue[0]
    this.queued = 0; // samples queued
    this.playing = false;
    this.played = 0; // samples played (at sampleRate)
    this.underruns = 0;
    this.sinceStats = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }
  onMessage(msg) {
    if (msg.type === "media") {
      const pcm = this.resampler.process(decode(msg.bytes, this.encoding));
      if (pcm.length) { this.queue.push(pcm); this.queued += pcm.length; }
    } else if (msg.type === "mark") {
      this.queue.push({ mark: msg.name });
      if (this.queued === 0) this.flushMarks();
    } else if (msg.type === "clear") {
      const names = this.queue.filter((item) => item.mark !== undefined).map((item) => item.mark);
      this.queue = []; this.head = 0; this.queued = 0; this.playing = false;
      this.resampler = new Resampler(this.inRate, sampleRate);
      if (names.length) this.port.postMessage({ type: "marks", names });
    }
  }
  flushMarks() {
    const names = [];
    while (this.queue.length && this.queue[0].mark !== undefined) names.push(this.queue.shift().mark);
    if (names.length) this.port.postMessage({ type: "marks", names });
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing) {
      const markQueued = this.queue.some((item) => item.mark !== undefined);
      if (this.queued >= PREBUFFER_SECS * sampleRate || (this.queued > 0 && markQueued)) this.playing = true;
    }
    let written = 0;
    while (this.playing && written < out.length && this.queue.length) {
      const item = this.queue[0];
      if (item.mark !== undefined) { this.flushMarks(); continue; }
      const n = Math.min(out.length - written, item.length - this.head);
      out.set(item.subarray(this.head, this.head + n), written);
      written += n; this.head += n; this.queued -= n;
      if (this.head >= item.length) { this.queue.shift(); this.head = 0; }
    }
    if (this.playing && this.queue.length && this.queue[0].mark !== undefined) this.flushMarks();
    this.played += written;
    if (this.playing && written < out.length && this.queued === 0) { this.playing = false; if (written) this.underruns++; }
    for (let ch = 1; ch < outputs[0].length; ch++) outputs[0][ch].set(out);
    this.sinceStats += out.length;
    if (this.sinceStats >= sampleRate / 8) {
      this.sinceStats = 0;
      this.port.postMessage({ type: "stats", playedSecs: this.played / sampleRate, queuedSecs: this.queued / sampleRate });
    }
    return true;
  }
}

registerProcessor("callpipe-capture", CaptureProcessor);
registerProcessor("callpipe-playback", PlaybackProcessor);

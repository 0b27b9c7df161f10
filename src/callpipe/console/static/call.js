// /dashboard/calls/{id}: recording with waveform, transcript at its times, timeline, waterfall, usage.
"use strict";

const callId = document.querySelector('meta[name="call-id"]').content;
const apiBase = `/console/api/calls/${encodeURIComponent(callId)}`;
const view = { record: null, t0: 0, duration: 0, peaks: null, items: [], playing: -1 };

const offset = (iso) => (iso ? (Date.parse(iso) / 1000) - view.t0 : null);

// ---------------------------------------------------------------- the WAV and its waveform

function parseWav(buffer) {
  const dv = new DataView(buffer);
  const tag = (at) => String.fromCharCode(...new Uint8Array(buffer, at, 4));
  if (buffer.byteLength < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new Error("not a WAV file");
  let pos = 12, fmt = null, data = null;
  while (pos + 8 <= buffer.byteLength) {
    const id = tag(pos), size = dv.getUint32(pos + 4, true);
    if (id === "fmt ") fmt = { channels: dv.getUint16(pos + 10, true), rate: dv.getUint32(pos + 12, true), bits: dv.getUint16(pos + 22, true) };
    if (id === "data") {
      // A recording cut short (a crash mid-call) may carry a size of 0 or too large: use what is there.
      const rest = buffer.byteLength - pos - 8;
      data = { at: pos + 8, size: size === 0 || size > rest ? rest : size };
      break;
    }
    pos += 8 + size + (size & 1);
  }
  if (!fmt || !data || fmt.bits !== 16) throw new Error("expected a 16-bit PCM WAV");
  const frames = Math.floor(data.size / (2 * fmt.channels));
  return { ...fmt, frames, samples: new Int16Array(buffer, data.at, frames * fmt.channels) };
}

function computePeaks(wav, columns) {
  const peaks = [new Float32Array(columns), new Float32Array(columns)];
  const per = Math.max(1, Math.floor(wav.frames / columns));
  for (let c = 0; c < columns; c++) {
    for (let ch = 0; ch < 2; ch++) {
      const source = Math.min(ch, wav.channels - 1);
      let peak = 0;
      for (let i = c * per; i < Math.min((c + 1) * per, wav.frames); i++) {
        const v = Math.abs(wav.samples[i * wav.channels + source]);
        if (v > peak) peak = v;
      }
      peaks[ch][c] = peak / 32768;
    }
  }
  return peaks;
}

function drawWave() {
  const canvas = document.getElementById("waveform");
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.max(300, Math.floor(canvas.clientWidth * ratio));
  canvas.height = Math.floor(140 * ratio);
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const colors = [style.getPropertyValue("--caller"), style.getPropertyValue("--bot")];
  if (view.peaks) {
    const lane = height / 2;
    for (let ch = 0; ch < 2; ch++) {
      ctx.fillStyle = colors[ch];
      const peaks = view.peaks[ch], mid = lane * ch + lane / 2;
      for (let x = 0; x < width; x++) {
        const h = Math.max(1, peaks[Math.floor((x / width) * peaks.length)] * lane * 0.95);
        ctx.fillRect(x, mid - h / 2, 1, h);
      }
    }
  }
  const audio = document.getElementById("player");
  if (view.duration > 0) {
    const x = (audio.currentTime / view.duration) * width;
    ctx.fillStyle = style.getPropertyValue("--text");
    ctx.fillRect(x, 0, Math.max(1, ratio), height);
  }
}

async function loadRecording(url) {
  const status = document.getElementById("recording-status");
  const link = document.getElementById("download-recording");
  link.href = url; link.hidden = false; link.setAttribute("download", "");
  status.textContent = "loading the recording…";
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) { status.textContent = `no recording (${response.status})`; return; }
  const buffer = await response.arrayBuffer();
  const wav = parseWav(buffer);
  view.duration = wav.frames / wav.rate;
  view.peaks = computePeaks(wav, 2000);
  const audio = document.getElementById("player");
  audio.src = URL.createObjectURL(new Blob([buffer], { type: "audio/wav" }));
  audio.dataset.ready = "1";
  status.textContent = `${CP.clock(view.duration)} · ${wav.channels} channel(s) · ${wav.rate} Hz`;
  document.getElementById("waveform").dataset.drawn = "1";
  drawWave();
  renderTimeline();
}

// ---------------------------------------------------------------- transcript and timeline

function buildItems(record) {
  const items = [];
  record.turns.forEach((turn, index) => {
    items.push({ kind: turn.speaker, at: offset(turn.started_at), end: offset(turn.ended_at), turn, index });
    for (const tool of turn.tool_calls || []) items.push({ kind: "event", at: offset(tool.at), label: `tool ${tool.name}`, detail: JSON.stringify(tool.arguments) });
  });
  for (const event of record.events) {
    const detail = event.type === "dtmf" ? event.name : `${event.name} ${Object.keys(event.data || {}).length ? JSON.stringify(event.data) : ""}`;
    items.push({ kind: "event", at: offset(event.at), label: event.type, detail });
  }
  items.sort((a, b) => (a.at ?? 0) - (b.at ?? 0));
  return items;
}

function turnLine(item) {
  const turn = item.turn;
  const parts = [CP.el("span", { class: "at" }, CP.clock(Math.max(0, item.at ?? 0))),
    CP.el("span", { class: "who" }, turn.speaker === "bot" ? "Bot" : "Caller")];
  if (turn.speaker === "bot" && turn.interrupted && turn.heard_text !== null && turn.heard_text !== undefined) {
    // What the bot meant to say, with the part the caller never heard struck through.
    const heard = turn.heard_text;
    const rest = turn.text.startsWith(heard) ? turn.text.slice(heard.length) : turn.text;
    parts.push(CP.el("span", { class: "heard" }, heard), " ",
      CP.el("span", { class: "unheard", title: "meant, not heard" }, rest),
      CP.el("span", { class: "flag interrupted" }, "⚡ interrupted"));
    if (!turn.text.startsWith(heard)) parts.push(CP.el("div", { class: "small muted" }, `heard: ${heard || "(nothing)"}`));
  } else if (turn.text || turn.heard_text) {
    parts.push(CP.el("span", {}, turn.text || turn.heard_text));
  } else {
    parts.push(CP.el("span", { class: "muted" }, "(audio, no words)"));
  }
  const v2v = turn.latency ? (turn.latency.heard_ms ?? turn.latency.first_audio_sent_ms) : null;
  if (v2v !== null && v2v !== undefined) {
    // How much of it was waiting for a shared model worker (embedded Whisper/Piper), if any.
    const wait = turn.latency.queue_wait_ms;
    const title = wait === null || wait === undefined ? "voice to voice"
      : `voice to voice; ${Math.round(wait)} ms of it waiting for model workers`;
    parts.push(CP.el("span", { class: "flag v2v", title, "data-queue-wait-ms": wait ?? "" }, `${Math.round(v2v)} ms`));
    if (wait >= 50) parts.push(CP.el("span", { class: "flag queued" }, `⏳ ${Math.round(wait)} ms queued`));
  }
  return parts;
}

function renderTranscript() {
  const list = document.getElementById("transcript");
  list.replaceChildren();
  view.items.forEach((item, i) => {
    const content = item.turn ? turnLine(item)
      : [CP.el("span", { class: "at" }, CP.clock(Math.max(0, item.at ?? 0))), CP.el("span", { class: "who" }, item.label), item.detail];
    list.append(CP.el("li", { class: `${item.kind} line`, "data-index": i, "data-at": item.at ?? 0,
      onclick: () => seek(item.at ?? 0) }, content));
  });
  if (!view.items.length) list.append(CP.el("li", { class: "muted" }, "Nothing was said."));
}

function renderTimeline() {
  const bar = document.getElementById("timeline");
  bar.replaceChildren();
  const total = view.duration || view.record.duration_secs || 1;
  for (const item of view.items) {
    if (item.kind !== "event" || item.at === null) continue;
    const mark = CP.el("span", { class: "mark event-mark", title: `${item.label} ${item.detail || ""}`, onclick: () => seek(item.at) }, item.label);
    const at = Math.min(100, Math.max(0, (item.at / total) * 100));
    mark.style.left = `${at}%`;
    if (at > 85) mark.style.transform = "translateX(-100%)";
    else if (at < 10) mark.style.transform = "none";
    bar.append(mark);
  }
}

function seek(secs) {
  const audio = document.getElementById("player");
  if (!audio.src) return;
  audio.currentTime = Math.max(0, secs);
  audio.play().catch(() => {});
  drawWave();
}

function highlight() {
  const audio = document.getElementById("player");
  const now = audio.currentTime;
  let current = -1;
  view.items.forEach((item, i) => {
    if (!item.turn || item.at === null || item.at > now) return;
    const end = item.end ?? item.at + 3;
    if (now < end + 0.3) current = i;
  });
  if (current !== view.playing) {
    document.querySelector("#transcript li.playing")?.classList.remove("playing");
    const line = document.querySelector(`#transcript li[data-index="${current}"]`);
    line?.classList.add("playing");
    line?.scrollIntoView({ block: "nearest" });
    view.playing = current;
  }
  drawWave();
}

// ---------------------------------------------------------------- facts, waterfall, usage

function renderFacts(record) {
  document.getElementById("call-title").textContent =
    `${record.direction === "outbound" ? "Outbound" : "Inbound"} call ${record.from || "?"} → ${record.to || "?"}`;
  const facts = [["Call id", record.call_control_id], ["Started", CP.when(record.started_at)],
    ["Duration", CP.duration(record.duration_secs)], ["End reason", record.end_reason],
    ["Hung up by", record.hangup_by || "–"], ["Codec", `${record.codec || "?"} ${record.sample_rate || ""}`],
    ["Instance", record.instance || "–"], ["p50 voice-to-voice", CP.ms(record.v2v_p50_ms)],
    ["AMD", record.amd ? JSON.stringify(record.amd) : "–"]];
  for (const [k, v] of Object.entries(record.custom || {})) facts.push([k, typeof v === "string" ? v : JSON.stringify(v)]);
  document.getElementById("facts").replaceChildren(...facts.map(([k, v], i) =>
    CP.el("div", { class: i === 0 ? "wide" : null }, CP.el("dt", {}, k), CP.el("dd", {}, v))));
  const json = document.getElementById("download-json");
  json.href = `${apiBase}?download=1`;
}

function renderWaterfall(record) {
  const rows = [];
  record.turns.forEach((turn, index) => {
    if (turn.speaker !== "bot" || !turn.latency) return;
    rows.push({ index, label: `turn ${index + 1}`, latency: turn.latency });
  });
  Charts.waterfall(document.getElementById("waterfall"), document.getElementById("waterfall-legend"), rows);
}

function renderUsage(record) {
  const usage = record.usage || {};
  const rows = [];
  const add = (what, values, unit) => { for (const [provider, v] of Object.entries(values || {})) rows.push([what, provider, `${Math.round(v * 100) / 100} ${unit}`]); };
  add("speech-to-text", usage.stt_audio_secs, "s of audio");
  add("LLM prompt", usage.llm_prompt_tokens, "tokens");
  add("LLM completion", usage.llm_completion_tokens, "tokens");
  add("text-to-speech", usage.tts_characters, "characters");
  const table = CP.el("table", {}, CP.el("thead", {}, CP.el("tr", {}, CP.el("th", {}, "What"), CP.el("th", {}, "Provider"), CP.el("th", { class: "num" }, "Used"))),
    CP.el("tbody", {}, rows.map((r) => CP.el("tr", {}, CP.el("td", {}, r[0]), CP.el("td", {}, r[1]), CP.el("td", { class: "num" }, r[2])))));
  const cost = record.cost;
  const parts = cost ? Object.entries(cost.parts).map(([k, v]) => `${k} $${v.toFixed(4)}`).join(" · ") : "";
  document.getElementById("usage").replaceChildren(rows.length ? table : CP.el("p", { class: "muted" }, "No usage recorded."),
    CP.el("p", { id: "cost" }, cost ? `Estimated cost: $${cost.total.toFixed(4)} (${parts})` : ""),
    CP.el("p", { class: "muted small" }, "Per-unit prices are settings (PRICE_* in .env.example); embedded providers cost nothing."));
}

function render(record) {
  view.record = record;
  view.t0 = Date.parse(record.started_at) / 1000;
  view.items = buildItems(record);
  renderFacts(record);
  renderTranscript();
  renderTimeline();
  renderWaterfall(record);
  renderUsage(record);
  document.getElementById("call-status").textContent = record.end_reason === "in_progress" ? "· live, updating" : "";
  document.body.dataset.loaded = "1";
}

document.addEventListener("DOMContentLoaded", async () => {
  const audio = document.getElementById("player");
  audio.addEventListener("timeupdate", highlight);
  audio.addEventListener("seeked", highlight);
  audio.addEventListener("play", function tick() { highlight(); if (!audio.paused) requestAnimationFrame(tick); });
  document.getElementById("waveform").addEventListener("click", (event) => {
    const rect = event.currentTarget.getBoundingClientRect();
    if (view.duration) seek(((event.clientX - rect.left) / rect.width) * view.duration);
  });
  window.addEventListener("resize", () => { drawWave(); if (view.record) renderWaterfall(view.record); });
  let record;
  try {
    record = await CP.api(apiBase);
  } catch (err) {
    document.getElementById("call-title").textContent = `Call ${callId}: ${err.message}`;
    return;
  }
  render(record);
  if (record.end_reason === "in_progress") {
    CP.watch(`${apiBase}/live`, render, async () => {
      const final = await CP.api(apiBase);
      render(final);
      if (final.recording_url) loadRecording(final.recording_url).catch((e) => (document.getElementById("recording-status").textContent = e.message));
    });
  } else if (record.recording_url) {
    loadRecording(record.recording_url).catch((err) => (document.getElementById("recording-status").textContent = err.message));
  } else {
    document.getElementById("recording-status").textContent = "No recording of this call.";
  }
  drawWave();
});

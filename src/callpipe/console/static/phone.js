// /phone: a softphone speaking Telnyx's media-stream protocol to this server's /ws.
"use strict";

// What the page did, for people (the stats line) and for automated tests.
const stats = window.callpipePhone = {
  state: "idle", callControlId: null, mediaSent: 0, mediaReceived: 0, marksReceived: 0, marksEchoed: 0,
  clears: 0, dtmfSent: 0, playedSecs: 0, closeCode: null, closeReason: "", error: null,
};

let call = null; // { session, ws, ctx, stream, capture, playback, seq, chunk, muted, events }

function setStatus(text, bad = false) {
  stats.state = text;
  const el = document.getElementById("phone-status");
  el.textContent = text;
  el.classList.toggle("bad", bad);
}

function message(text) {
  document.getElementById("phone-message").textContent = text;
}

function showStats() {
  document.getElementById("phone-stats").textContent =
    `sent ${stats.mediaSent} · received ${stats.mediaReceived} media · played ${stats.playedSecs.toFixed(1)} s · ` +
    `marks ${stats.marksEchoed}/${stats.marksReceived} · clears ${stats.clears}`;
}

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
  return btoa(text);
}

function unbase64(text) {
  const raw = atob(text), bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function parseParams(text) {
  const params = {};
  for (const part of text.split(",")) {
    const [key, ...rest] = part.split("=");
    if (key.trim()) params[key.trim()] = rest.join("=").trim();
  }
  return params;
}

function send(obj) {
  if (call?.ws?.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify(obj));
}

const nextSeq = () => String(++call.seq);

function micError(err) {
  if (err && (err.name === "NotAllowedError" || err.name === "SecurityError")) {
    return "Microphone access was refused. Allow the microphone for this site (the icon in the address bar) and press Call again.";
  }
  if (err && err.name === "NotFoundError") return "No microphone was found. Plug one in and press Call again.";
  if (!navigator.mediaDevices) return "This page needs a secure context (https or localhost) to use the microphone.";
  return `Could not open the microphone: ${err?.message || err}`;
}

// Audio graph (microphone -> capture worklet; playback worklet -> speaker) and the stream.
async function connect(session, stream) {
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/console/static/phone-worklet.js");
  if (ctx.state === "suspended") {
    message("Click anywhere on the page to let it play sound.");
    document.addEventListener("click", () => ctx.resume(), { once: true });
    ctx.resume().catch(() => {});
  }
  const source = ctx.createMediaStreamSource(stream);
  const capture = new AudioWorkletNode(ctx, "callpipe-capture", { numberOfOutputs: 1, processorOptions: { outRate: session.sample_rate, encoding: session.encoding } });
  const sink = ctx.createGain();
  sink.gain.value = 0; // the capture node must be pulled by the graph, but not heard
  source.connect(capture).connect(sink).connect(ctx.destination);
  const playback = new AudioWorkletNode(ctx, "callpipe-playback", { numberOfInputs: 0, outputChannelCount: [1], processorOptions: { inRate: session.sample_rate, encoding: session.encoding } });
  playback.connect(ctx.destination);
  const wsUrl = new URL("/ws?" + session.stream_query, location.href);
  wsUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(wsUrl);
  call = { session, ws, ctx, stream, capture, playback, seq: 0, chunk: 0, muted: false, started: false, events: null };
  stats.callControlId = session.call_control_id;
  ws.onopen = () => onOpen(session);
  ws.onmessage = (event) => onMessage(event.data);
  ws.onclose = (event) => onClose(event);
  capture.port.onmessage = (event) => onFrame(event.data);
  playback.port.onmessage = (event) => onPlayback(event.data);
}

async function startCall() {
  if (call) return;
  message("");
  setStatus("starting…");
  document.getElementById("call").disabled = true;
  // The microphone first: the stream URL's one-use token is short-lived.
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
  } catch (err) {
    stats.error = "microphone";
    return fail(micError(err));
  }
  let session;
  try {
    session = await CP.api("/console/api/phone/session", { method: "POST", json: {
      from: document.getElementById("from").value, to: document.getElementById("to").value,
      custom_parameters: parseParams(document.getElementById("params").value), hd: !!document.getElementById("hd").value } });
  } catch (err) {
    stream.getTracks().forEach((track) => track.stop());
    return fail(`Could not start the call: ${err.message}`);
  }
  try {
    await connect(session, stream);
  } catch (err) {
    stream.getTracks().forEach((track) => track.stop());
    return fail(`Could not start the audio: ${err?.message || err}`);
  }
  setStatus("connecting…");
}

function onOpen(session) {
  send({ event: "connected", version: "1.0.0" });
  send({ event: "start", sequence_number: nextSeq(), stream_id: session.stream_id, start: {
    user_id: "console", call_control_id: session.call_control_id, call_session_id: session.call_session_id,
    from: session.from, to: session.to, tags: [], client_state: null, custom_parameters: session.custom_parameters,
    media_format: { encoding: session.encoding, sample_rate: session.sample_rate, channels: 1 } } });
  call.started = true;
  setStatus("in call");
  for (const id of ["hangup", "mute"]) document.getElementById(id).disabled = false;
  for (const button of document.querySelectorAll("#dialpad button")) button.disabled = false;
  const link = document.getElementById("call-link");
  link.href = CP.callLink(session.call_control_id); link.hidden = false;
  watchRecord(session.call_control_id);
}

function onFrame(data) {
  document.getElementById("level").style.width = `${Math.min(100, data.level * 120)}%`;
  if (!call?.started) return;
  call.chunk += 1;
  send({ event: "media", sequence_number: nextSeq(), stream_id: call.session.stream_id,
    media: { track: "inbound", chunk: String(call.chunk), timestamp: String((call.chunk - 1) * 20), payload: base64(data.bytes) } });
  stats.mediaSent += 1;
  if (stats.mediaSent % 25 === 0) showStats();
}

function onMessage(text) {
  let msg;
  try { msg = JSON.parse(text); } catch { return; }
  if (msg.event === "media" && msg.media?.payload) {
    stats.mediaReceived += 1;
    const bytes = unbase64(msg.media.payload);
    call.playback.port.postMessage({ type: "media", bytes }, [bytes.buffer]);
  } else if (msg.event === "mark" && msg.mark?.name) {
    stats.marksReceived += 1;
    call.playback.port.postMessage({ type: "mark", name: msg.mark.name });
  } else if (msg.event === "clear") {
    stats.clears += 1;
    call.playback.port.postMessage({ type: "clear" });
  }
}

function onPlayback(data) {
  if (data.type === "marks") {
    for (const name of data.names) {
      send({ event: "mark", sequence_number: nextSeq(), stream_id: call.session.stream_id, mark: { name } });
      stats.marksEchoed += 1;
    }
  } else if (data.type === "stats") {
    stats.playedSecs = data.playedSecs;
  }
}

function hangUp() {
  if (!call) return;
  send({ event: "stop", sequence_number: nextSeq(), stream_id: call.session.stream_id,
    stop: { user_id: "console", call_control_id: call.session.call_control_id } });
  call.ws.close(1000, "caller hung up");
}

function onClose(event) {
  stats.closeCode = event.code;
  stats.closeReason = event.reason;
  const ended = call;
  call = null;
  if (ended) {
    ended.stream.getTracks().forEach((track) => track.stop());
    ended.ctx.close().catch(() => {});
  }
  showStats();
  const clean = event.code === 1000 || event.code === 1005;
  setStatus(clean ? "call ended" : `call ended (${event.code})`, !clean);
  if (!clean && event.reason) message(`The server closed the call: ${event.reason}`);
  for (const id of ["hangup", "mute"]) document.getElementById(id).disabled = true;
  for (const button of document.querySelectorAll("#dialpad button")) button.disabled = true;
  document.getElementById("call").disabled = false;
}

function fail(text) {
  setStatus("not connected", true);
  message(text);
  document.getElementById("call").disabled = false;
}

function toggleMute() {
  if (!call) return;
  call.muted = !call.muted;
  call.capture.port.postMessage({ type: "mute", on: call.muted });
  const button = document.getElementById("mute");
  button.textContent = call.muted ? "Unmute" : "Mute";
  button.setAttribute("aria-pressed", String(call.muted));
}

function dtmf(digit) {
  if (!call?.started) return;
  send({ event: "dtmf", stream_id: call.session.stream_id, occurred_at: new Date().toISOString(),
    sequence_number: nextSeq(), dtmf: { digit } });
  stats.dtmfSent += 1;
}

// The call's record as it is written: both sides' words and each bot turn's latency.
function watchRecord(id) {
  const list = document.getElementById("live-transcript");
  const source = new EventSource(`/console/api/calls/${encodeURIComponent(id)}/live`);
  source.onmessage = (event) => {
    const record = JSON.parse(event.data);
    list.replaceChildren(...record.turns.map((turn) => {
      const v2v = turn.latency ? (turn.latency.heard_ms ?? turn.latency.first_audio_sent_ms) : null;
      const text = turn.speaker === "bot" && turn.interrupted ? (turn.heard_text ?? turn.text) : turn.text;
      return CP.el("li", { class: turn.speaker }, CP.el("span", { class: "who" }, turn.speaker === "bot" ? "Bot" : "You"), text,
        v2v !== null && v2v !== undefined ? CP.el("span", { class: "flag latency" }, `${Math.round(v2v)} ms`) : null,
        turn.interrupted ? CP.el("span", { class: "flag" }, "⚡ interrupted") : null);
    }));
    list.scrollTop = list.scrollHeight;
  };
  source.addEventListener("end", () => source.close());
  source.addEventListener("signed-out", () => source.close()); // the call itself goes on
  source.onerror = () => { if (!call) source.close(); };
}

document.addEventListener("DOMContentLoaded", () => {
  const pad = document.getElementById("dialpad");
  for (const digit of "123456789*0#") {
    pad.append(CP.el("button", { type: "button", disabled: true, "data-digit": digit, onclick: () => dtmf(digit) }, digit));
  }
  document.getElementById("call").addEventListener("click", startCall);
  document.getElementById("hangup").addEventListener("click", hangUp);
  document.getElementById("mute").addEventListener("click", toggleMute);
  const query = new URLSearchParams(location.search);
  for (const key of ["from", "to", "params"]) if (query.get(key)) document.getElementById(key).value = query.get(key);
  if (query.get("hd") === "1") document.getElementById("hd").value = "1";
  setInterval(() => { if (call) showStats(); }, 500);
  if (query.get("autocall") === "1") startCall();
});

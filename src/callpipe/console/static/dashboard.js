// /dashboard: live calls (server-sent events) and the searchable call list.
"use strict";

const END_REASONS = ["caller_hangup", "bot_ended", "transferred", "max_duration", "idle_timeout",
  "error", "shutdown", "process_died", "busy", "no_answer", "in_progress"];

function renderLive(calls) {
  const body = document.getElementById("live-calls");
  body.replaceChildren();
  if (!calls.length) {
    body.append(CP.el("tr", {}, CP.el("td", { colspan: 5, class: "muted" }, "No live calls.")));
    return;
  }
  for (const call of calls) {
    const started = Date.parse(call.started_at) / 1000;
    const hangup = CP.el("button", { class: "danger", type: "button", "data-hangup": call.call_control_id,
      onclick: async (event) => {
        event.stopPropagation();
        event.target.disabled = true;
        try {
          await CP.api(`/console/api/calls/${encodeURIComponent(call.call_control_id)}/hangup`, { method: "POST" });
        } catch (err) {
          event.target.disabled = false;
          alert(`Hang-up failed: ${err.message}`);
        }
      } }, "Hang up");
    const now = call.now_text ? `${call.now_speaker === "bot" ? "bot" : "caller"}: ${call.now_text}` : "…";
    body.append(CP.el("tr", { class: "click live-call", onclick: () => (location.href = CP.callLink(call.call_control_id)) },
      CP.el("td", {}, `${call.from_masked || "?"} → ${call.to_masked || "?"}`),
      CP.el("td", {}, call.direction),
      CP.el("td", { class: "num elapsed", "data-started": started }, CP.duration(Date.now() / 1000 - started)),
      CP.el("td", { class: "now-text" }, now.length > 90 ? now.slice(0, 90) + "…" : now),
      CP.el("td", {}, hangup)));
  }
}

function startLive() {
  const status = document.getElementById("live-status");
  const source = new EventSource("/console/api/live");
  source.onopen = () => (status.textContent = "updating live");
  source.onmessage = (event) => {
    const data = JSON.parse(event.data);
    renderLive(data.calls);
    status.textContent = `${data.calls.length} live · updated ${new Date().toLocaleTimeString()}`;
  };
  source.onerror = () => (status.textContent = "reconnecting…");
  source.addEventListener("signed-out", () => {
    source.close();
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  });
  // Durations tick between updates.
  setInterval(() => {
    for (const cell of document.querySelectorAll("#live-calls .elapsed")) {
      cell.textContent = CP.duration(Date.now() / 1000 - Number(cell.dataset.started));
    }
  }, 1000);
}

let nextCursor = null;

function row(call) {
  return CP.el("tr", { class: "click call-row", "data-id": call.call_control_id,
      onclick: () => (location.href = CP.callLink(call.call_control_id)) },
    CP.el("td", {}, CP.el("a", { href: CP.callLink(call.call_control_id) }, CP.when(call.started_at))),
    CP.el("td", {}, call.from_masked),
    CP.el("td", {}, call.to_masked),
    CP.el("td", {}, call.direction),
    CP.el("td", { class: "num" }, CP.duration(call.duration_secs)),
    CP.el("td", { class: "num" }, call.turn_count ?? "–"),
    CP.el("td", { class: "num" }, CP.ms(call.v2v_p50_ms)),
    CP.el("td", {}, CP.el("span", { class: `pill ${call.end_reason}` }, call.end_reason)));
}

async function loadCalls(append) {
  const form = new FormData(document.getElementById("filters"));
  const params = new URLSearchParams();
  for (const [key, value] of form) if (value) params.set(key, value);
  if (append && nextCursor) params.set("cursor", nextCursor);
  if (!append) history.replaceState(null, "", params.toString() ? `?${params}` : location.pathname);
  const status = document.getElementById("list-status");
  status.textContent = "loading…";
  try {
    const data = await CP.api(`/console/api/calls?${params}`);
    const body = document.getElementById("calls");
    if (!append) body.replaceChildren();
    for (const call of data.calls) body.append(row(call));
    nextCursor = data.next_cursor;
    document.getElementById("more").hidden = !nextCursor;
    status.textContent = body.children.length ? "" : "No calls match.";
  } catch (err) {
    status.textContent = `Could not load calls: ${err.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("filters");
  const select = form.elements.end_reason;
  for (const reason of END_REASONS) select.append(CP.el("option", { value: reason }, reason));
  for (const [key, value] of new URLSearchParams(location.search)) if (form.elements[key]) form.elements[key].value = value;
  form.addEventListener("submit", (event) => { event.preventDefault(); loadCalls(false); });
  for (const name of ["direction", "end_reason", "since", "until"]) form.elements[name].addEventListener("change", () => loadCalls(false));
  document.getElementById("more").addEventListener("click", () => loadCalls(true));
  loadCalls(false);
  startLive();
});

// /dashboard/overview: calls per day, voice-to-voice p50/p95, end reasons, errors.
"use strict";

async function loadOverview() {
  const days = document.getElementById("range").elements.days.value;
  const data = await CP.api(`/console/api/overview?days=${days}`);
  document.getElementById("totals").textContent =
    `${data.total_calls} calls · v2v p50 ${CP.ms(data.total_v2v_p50_ms)}, p95 ${CP.ms(data.total_v2v_p95_ms)}`;
  Charts.bars(document.getElementById("chart-calls"), data.days, data.calls);
  Charts.lines(document.getElementById("chart-v2v"), data.days, [
    { name: "p50", values: data.v2v_p50_ms }, { name: "p95", values: data.v2v_p95_ms, color: "var(--s6)" }]);
  Charts.hbars(document.getElementById("chart-reasons"), Object.entries(data.end_reasons));
  Charts.bars(document.getElementById("chart-errors"), data.days, data.errors, "var(--bad)");
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("range").elements.days.addEventListener("change", loadOverview);
  loadOverview().catch((err) => (document.getElementById("totals").textContent = err.message));
});

// Small SVG charts for the console (bars, lines, horizontal bars, latency waterfall).
"use strict";

const Charts = (() => {
  const W = 480, H = 200, PAD = { l: 40, r: 10, t: 10, b: 28 };
  const COLORS = ["var(--s1)", "var(--s2)", "var(--s3)", "var(--s4)", "var(--s5)", "var(--s6)"];

  function niceMax(value, floor = 1) {
    value = Math.max(value || 0, floor);
    const p = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= value);
  }

  function frame(container, max, labels) {
    const root = CP.svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
    const plotH = H - PAD.t - PAD.b;
    for (let i = 0; i <= 4; i++) {
      const y = PAD.t + plotH - (plotH * i) / 4;
      root.append(CP.svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "axis" }));
      const tick = (max * i) / 4;
      root.append(CP.svg("text", { x: PAD.l - 4, y: y + 4, "text-anchor": "end" }, Number.isInteger(tick) ? tick : tick.toFixed(1)));
    }
    const step = (W - PAD.l - PAD.r) / Math.max(labels.length, 1);
    const every = Math.ceil(labels.length / 7);
    labels.forEach((label, i) => {
      if (i % every) return;
      root.append(CP.svg("text", { x: PAD.l + step * (i + 0.5), y: H - 8, "text-anchor": "middle" }, label.slice(5)));
    });
    container.replaceChildren(root);
    return { root, step, y: (v) => PAD.t + plotH - (plotH * v) / max };
  }

  function bars(container, labels, values, color = COLORS[0]) {
    const max = niceMax(Math.max(...values, 0), 4);
    const { root, step, y } = frame(container, max, labels);
    values.forEach((v, i) => {
      const top = y(v);
      const bar = CP.svg("rect", { x: PAD.l + step * i + step * 0.15, y: top, width: step * 0.7,
        height: y(0) - top, fill: color, class: "bar" });
      bar.append(CP.svg("title", {}, `${labels[i]}: ${v}`));
      root.append(bar);
    });
  }

  function lines(container, labels, series) {
    const all = series.flatMap((s) => s.values.filter((v) => v !== null));
    const max = niceMax(Math.max(...all, 0));
    const { root, step, y } = frame(container, max, labels);
    series.forEach((s, k) => {
      const color = s.color || COLORS[k];
      let d = "";
      s.values.forEach((v, i) => {
        if (v === null) return;
        const x = PAD.l + step * (i + 0.5);
        d += `${d ? "L" : "M"}${x.toFixed(1)},${y(v).toFixed(1)}`;
        const dot = CP.svg("circle", { cx: x, cy: y(v), r: 3, fill: color });
        dot.append(CP.svg("title", {}, `${s.name} ${labels[i]}: ${v} ms`));
        root.append(dot);
      });
      if (d) root.append(CP.svg("path", { d, fill: "none", stroke: color, "stroke-width": 2, class: "line" }));
      root.append(CP.svg("text", { x: W - PAD.r - 80 + k * 40, y: PAD.t + 12, fill: color }, s.name));
    });
  }

  function hbars(container, entries) {
    const rowH = 22, height = Math.max(entries.length, 1) * rowH + 8, labelW = 110;
    const root = CP.svg("svg", { viewBox: `0 0 ${W} ${height}`, width: "100%", role: "img" });
    const max = Math.max(...entries.map((e) => e[1]), 1);
    entries.forEach(([name, value], i) => {
      const y = 4 + i * rowH;
      root.append(CP.svg("text", { x: labelW - 6, y: y + 14, "text-anchor": "end" }, name));
      const width = ((W - labelW - 50) * value) / max;
      root.append(CP.svg("rect", { x: labelW, y: y + 3, width, height: rowH - 8, fill: COLORS[i % COLORS.length], class: "bar" }));
      root.append(CP.svg("text", { x: labelW + width + 6, y: y + 14 }, value));
    });
    if (!entries.length) root.append(CP.svg("text", { x: 10, y: 18 }, "no calls"));
    container.replaceChildren(root);
  }

  // One row per bot turn; each stage a segment from the previous stage's time to its own.
  const STAGES = [
    ["vad_stop_ms", "VAD stop"], ["stt_final_ms", "STT final"], ["llm_first_token_ms", "LLM first token"],
    ["tts_first_audio_ms", "TTS first audio"], ["first_audio_sent_ms", "on the wire"], ["heard_ms", "heard"],
  ];

  function waterfall(container, legend, rows) {
    legend.replaceChildren(...STAGES.map(([, name], i) =>
      CP.el("span", {}, CP.el("i", { class: `stage-${i}` }), name)));
    const width = Math.max(320, Math.min(1200, container.clientWidth || 900));
    const rowH = 26, labelW = width < 500 ? 56 : 90, height = rows.length * rowH + 24;
    const max = niceMax(Math.max(...rows.flatMap((r) => STAGES.map(([k]) => r.latency[k] ?? 0)), 1));
    const scale = (v) => labelW + ((width - labelW - 70) * v) / max;
    const root = CP.svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", class: "waterfall" });
    for (let i = 0; i <= 4; i++) {
      const x = scale((max * i) / 4);
      root.append(CP.svg("line", { x1: x, x2: x, y1: 0, y2: height - 18, class: "axis" }));
      root.append(CP.svg("text", { x, y: height - 4, "text-anchor": "middle" }, `${Math.round((max * i) / 4)} ms`));
    }
    rows.forEach((row, r) => {
      const y = r * rowH + 4;
      const g = CP.svg("g", { class: "waterfall-row", "data-turn": row.index });
      g.append(CP.svg("text", { x: labelW - 6, y: y + 15, "text-anchor": "end" }, row.label));
      let previous = 0;
      STAGES.forEach(([key, name], i) => {
        const value = row.latency[key];
        if (value === null || value === undefined) return;
        const start = Math.min(previous, value);
        const seg = CP.svg("rect", { x: scale(start), y: y + 3, width: Math.max(scale(value) - scale(start), 2),
          height: rowH - 8, fill: COLORS[i], class: "segment" });
        seg.append(CP.svg("title", {}, `${name}: ${Math.round(value)} ms`));
        g.append(seg);
        previous = Math.max(previous, value);
      });
      g.append(CP.svg("text", { x: scale(previous) + 6, y: y + 15 }, `${Math.round(previous)} ms`));
      root.append(g);
    });
    container.replaceChildren(rows.length ? root : CP.el("p", { class: "muted" }, "No bot turns with latency."));
  }

  return { bars, lines, hbars, waterfall, COLORS };
})();

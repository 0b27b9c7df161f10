// callpipe console: helpers shared by every page (no framework, no build step).
"use strict";

const CP = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  async function api(path, options = {}) {
    const init = { credentials: "same-origin", ...options, headers: { ...(options.headers || {}) } };
    if (init.method && init.method !== "GET") init.headers["X-CSRF-Token"] = csrf();
    if (init.json !== undefined) {
      init.body = JSON.stringify(init.json);
      init.headers["Content-Type"] = "application/json";
      delete init.json;
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("signed out");
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data?.error?.detail || `HTTP ${response.status}`);
    return data;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const svgNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(svgNS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function duration(secs) {
    if (secs === null || secs === undefined) return "–";
    const s = Math.max(0, Math.round(secs));
    const m = Math.floor(s / 60);
    return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m` : `${m}:${String(s % 60).padStart(2, "0")}`;
  }

  const ms = (value) => (value === null || value === undefined ? "–" : `${Math.round(value)} ms`);
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
  const clock = (secs) => `${Math.floor(secs / 60)}:${(secs % 60).toFixed(1).padStart(4, "0")}`;

  function maskNumber(number) {
    if (!number) return "";
    const plus = number.startsWith("+") ? "+" : "";
    const digits = number.replace(/^\+/, "");
    if (digits.length <= 4) return number;
    const front = digits.length > 7 ? 1 : 0;
    return plus + digits.slice(0, front) + "•".repeat(digits.length - front - 4) + digits.slice(-4);
  }

  // A live stream whose session expired: back to the sign-in page.
  function watch(url, onData, onEnd) {
    const source = new EventSource(url);
    source.onmessage = (event) => onData(JSON.parse(event.data));
    source.addEventListener("end", () => { source.close(); onEnd?.(); });
    source.addEventListener("signed-out", () => {
      source.close();
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    });
    return source;
  }

  function callLink(id) {
    return "/dashboard/calls/" + encodeURIComponent(id);
  }

  function initHeader() {
    const here = location.pathname;
    for (const link of document.querySelectorAll("header.top nav a")) {
      if (link.getAttribute("href") === here) link.classList.add("on");
    }
    document.getElementById("logout")?.addEventListener("click", async () => {
      await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" });
      location.href = "/login";
    });
  }

  document.addEventListener("DOMContentLoaded", initHeader);
  return { api, watch, el, svg, duration, ms, when, clock, maskNumber, callLink, csrf };
})();

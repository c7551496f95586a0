// dreambot admin: tiny SVG charts, live refresh of the overview, confirm prompts.
// Served from the package (no CDN); the page's CSP allows only scripts from /admin/static.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#3b6fd8", "#e0673a", "#2e9e5b", "#9b59b6", "#c9a227", "#555"];

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// labels: x values (strings); series: [{name, values: [numbers]}]; kind: "line" | "bar"
function drawChart(container, labels, series, kind) {
  container.textContent = "";
  if (!labels.length) {
    container.textContent = "no data yet";
    container.classList.add("empty");
    return;
  }
  container.classList.remove("empty");
  const W = 560, H = 220, L = 48, R = 10, T = 10, B = 46;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart-svg" });
  const all = series.flatMap((s) => s.values.filter((v) => Number.isFinite(v)));
  const max = niceMax(Math.max(0, ...all));
  const plotW = W - L - R, plotH = H - T - B;
  const y = (v) => T + plotH - (v / max) * plotH;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    svg.appendChild(el("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "tick" }, +v.toPrecision(3)));
  }
  const step = plotW / labels.length;
  const every = Math.ceil(labels.length / 10);
  labels.forEach((label, i) => {
    if (i % every) return;
    svg.appendChild(el("text", { x: L + step * (i + 0.5), y: H - B + 14, "text-anchor": "middle", class: "tick" },
      String(label).slice(0, 16)));
  });
  series.forEach((s, si) => {
    const color = COLORS[si % COLORS.length];
    if (kind === "bar") {
      const bw = (step * 0.8) / series.length;
      s.values.forEach((v, i) => {
        if (!Number.isFinite(v)) return;
        const rect = el("rect", { x: L + step * i + step * 0.1 + bw * si, y: y(v), width: Math.max(1, bw),
          height: T + plotH - y(v), fill: color });
        rect.appendChild(el("title", {}, `${labels[i]}: ${v}`));
        svg.appendChild(rect);
      });
    } else {
      const pts = s.values.map((v, i) => (Number.isFinite(v) ? `${L + step * (i + 0.5)},${y(v)}` : null))
        .filter(Boolean).join(" ");
      svg.appendChild(el("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 2 }));
      s.values.forEach((v, i) => {  // dots, so a single day still shows
        if (!Number.isFinite(v)) return;
        const dot = el("circle", { cx: L + step * (i + 0.5), cy: y(v), r: 3, fill: color });
        dot.appendChild(el("title", {}, `${labels[i]}: ${+v.toPrecision(4)}`));
        svg.appendChild(dot);
      });
    }
    svg.appendChild(el("rect", { x: L + si * 120, y: H - 16, width: 10, height: 10, fill: color }));
    svg.appendChild(el("text", { x: L + si * 120 + 14, y: H - 7, class: "legend" }, s.name));
  });
  container.appendChild(svg);
}

function pivot(rows, key, kinds, value) {
  const labels = [...new Set(rows.map((r) => r[key]))].sort();
  const series = kinds.map((k) => ({
    name: k,
    values: labels.map((l) => {
      const row = rows.find((r) => r[key] === l && r.kind === k);
      return row ? value(row) : 0;
    }),
  }));
  return { labels, series };
}

function drawOverview(data) {
  const kinds = ["train", "sample"];
  const charts = {
    throughput: () => ({ ...pivot(data.throughput, "bucket", kinds, (r) => r.succeeded + r.failed + r.cancelled), kind: "bar" }),
    failure_rate: () => ({ ...pivot(data.throughput, "bucket", kinds, (r) => r.failure_rate * 100), kind: "line" }),
    llm_tokens: () => ({ labels: data.llm_per_day.map((r) => r.day), kind: "bar", series: [
      { name: "prompt", values: data.llm_per_day.map((r) => r.prompt_tokens) },
      { name: "completion", values: data.llm_per_day.map((r) => r.completion_tokens) }] }),
    llm_cost: () => ({ labels: data.llm_per_day.map((r) => r.day), kind: "line", series: [
      { name: "USD", values: data.llm_per_day.map((r) => r.cost_usd) }] }),
  };
  document.querySelectorAll("[data-chart]").forEach((node) => {
    const make = charts[node.dataset.chart];
    if (!make) return;
    const c = make();
    drawChart(node, c.labels, c.series, c.kind);
  });
  document.querySelectorAll("[data-key]").forEach((node) => {
    const value = node.dataset.key.split(".").reduce((o, k) => (o == null ? undefined : o[k]), data);
    if (value !== undefined) node.textContent = value;
  });
}

function startOverview() {
  const source = document.getElementById("overview-data");
  if (!source) return;
  drawOverview(JSON.parse(source.textContent));
  const live = document.querySelector("[data-live]");
  if (!live) return;
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const res = await fetch(live.dataset.live, { credentials: "same-origin" });
      if (res.ok) drawOverview(await res.json());
    } catch (e) { /* offline for a moment: the next tick tries again */ }
  }, 15000);
}

function startSqlChart() {
  const source = document.getElementById("sql-result");
  const button = document.getElementById("chart-draw");
  if (!source || !button) return;
  const result = JSON.parse(source.textContent);
  const draw = () => {
    const xi = +document.getElementById("chart-x").value;
    const yi = +document.getElementById("chart-y").value;
    const labels = result.rows.map((r) => (r[xi] == null ? "" : String(r[xi])));
    const values = result.rows.map((r) => Number(r[yi]));
    drawChart(document.getElementById("sql-chart"), labels, [{ name: result.columns[yi], values }],
      labels.length > 40 ? "line" : "bar");
  };
  button.addEventListener("click", draw);
  if (result.columns.length >= 2 && result.rows.some((r) => Number.isFinite(Number(r[1])))) draw();
}

function startConfirms() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  startOverview();
  startSqlChart();
  startConfirms();
});

// A loss curve as a hand-drawn SVG line chart: one vertex per training step, drawn at the container's
// width (redrawn when it changes), with its summary as the chart's accessible name and a value table.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 200;
const PAD = { left: 52, right: 12, top: 12, bottom: 30 };

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value) {
  return Math.abs(value) >= 0.01 || value === 0 ? value.toFixed(3) : value.toExponential(2);
}

export function summary(title, values) {
  const low = Math.min(...values);
  return `${title}: ${values.length} steps, first ${fmt(values[0])}, last ${fmt(values[values.length - 1])}, ` +
    `lowest ${fmt(low)} at step ${values.indexOf(low) + 1}`;
}

function draw(box, title, values) {
  const width = Math.max(240, Math.floor(box.clientWidth || 480));
  const svg = el("svg", { width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: "img",
                          "aria-label": summary(title, values), class: "chart" });
  svg.append(el("title", {}, title));
  const lo = Math.min(...values), hi = Math.max(...values);
  const span = hi - lo || Math.abs(hi) || 1;
  const x0 = PAD.left, x1 = width - PAD.right, y0 = HEIGHT - PAD.bottom, y1 = PAD.top;
  const x = (i) => values.length === 1 ? (x0 + x1) / 2 : x0 + (x1 - x0) * i / (values.length - 1);
  const y = (v) => y0 - (y0 - y1) * (v - lo) / span;
  svg.append(el("line", { x1: x0, y1: y0, x2: x1, y2: y0, class: "axis" }),
             el("line", { x1: x0, y1: y0, x2: x0, y2: y1, class: "axis" }));
  for (const v of [lo, (lo + hi) / 2, hi]) {
    svg.append(el("line", { x1: x0 - 4, y1: y(v), x2: x1, y2: y(v), class: "grid" }),
               el("text", { x: x0 - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, fmt(v)));
  }
  svg.append(el("text", { x: x0, y: HEIGHT - 8, "text-anchor": "start", class: "tick" }, "step 1"),
             el("text", { x: x1, y: HEIGHT - 8, "text-anchor": "end", class: "tick" }, `step ${values.length}`));
  const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.append(el("polyline", { points, class: "line", "data-points": values.length }));
  box.replaceChildren(svg);
}

// Draw `values` into `box` (an element): the chart, and a collapsed table of the values under it.
export function lossChart(box, title, values) {
  const plot = document.createElement("div");
  plot.className = "plot";
  const details = document.createElement("details");
  const caption = document.createElement("summary");
  caption.textContent = `${title}: the ${values.length} values`;
  const table = document.createElement("table");
  table.innerHTML = "<thead><tr><th scope='col'>Step</th><th scope='col'>Loss</th></tr></thead>";
  const body = document.createElement("tbody");
  values.forEach((v, i) => {
    const row = body.insertRow();
    row.insertCell().textContent = String(i + 1);
    row.insertCell().textContent = fmt(v);
  });
  table.append(body);
  details.append(caption, table);
  box.replaceChildren(plot, details);
  draw(plot, title, values);
  let width = plot.clientWidth;
  new ResizeObserver(() => {
    if (plot.isConnected && Math.abs(plot.clientWidth - width) > 4) { width = plot.clientWidth; draw(plot, title, values); }
  }).observe(plot);
}

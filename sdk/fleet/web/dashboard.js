// edgec dashboard: draws the fleet from /events (server-sent events, one JSON snapshot each).
// Everything from the boards is set as text, never as HTML: event messages are arbitrary.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits === undefined ? 1 : digits);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}

function rollout(update) {
  if (!update) return "";
  let text = update.state || "";
  if (update.desired && update.desired !== update.running) text += ` → ${update.desired}`;
  if (typeof update.progress === "number" && update.state === "downloading") text += ` ${Math.round(update.progress * 100)}%`;
  return text;
}

function cell(row, field, text, cls) {
  const td = el("td", { "data-field": field, class: cls || "" }, text);
  row.appendChild(td);
  return td;
}

function drawBoards(boards) {
  const table = document.getElementById("boards");
  for (const old of table.querySelectorAll("tbody")) old.remove();
  document.getElementById("empty").hidden = boards.length > 0;
  for (const b of boards) {
    const body = el("tbody", { "data-board": b.id, "data-state": b.state });
    const models = b.models.length ? b.models : [null];
    const hot = new Set(b.alerts.map((a) => a.kind));
    models.forEach((m, i) => {
      const row = el("tr", { "data-model": m ? m.name : "" });
      if (i === 0) {
        const span = String(models.length);
        cell(row, "device", b.device).setAttribute("rowspan", span);
        cell(row, "state", b.state, `state ${b.state}`).setAttribute("rowspan", span);
      }
      cell(row, "model", m ? m.name : "–");
      cell(row, "version", m && m.version ? m.version : "–");
      cell(row, "p50_ms", fmt(m && m.p50_ms, 2), "n");
      cell(row, "p95_ms", fmt(m && m.p95_ms, 2), "n");
      cell(row, "requests_per_s", fmt(m && m.requests_per_s, 1), "n");
      cell(row, "errors", m ? fmt(m.errors, 0) : "–", m && m.errors_per_s > 0 ? "n hot" : "n");
      cell(row, "drift", fmt(m && m.drift, 2), m && m.drift_alert ? "n hot" : "n")
        .setAttribute("title", m && m.drift_statistic ? `largest on ${m.drift_statistic}` : "");
      if (i === 0) {
        const span = String(models.length);
        const cache = b.cache_used_mb === null ? "–" : `${fmt(b.cache_used_mb)} / ${fmt(b.cache_budget_mb, 0)}`;
        for (const [field, text, cls] of [
          ["cache_mb", cache, hot.has("memory") ? "n hot" : "n"],
          ["rss_mb", fmt(b.rss_mb), "n"],
          ["cpu_percent", fmt(b.cpu_percent, 0), "n"],
          ["cpu_temp_c", fmt(b.cpu_temp_c, 1), "n"],
          ["spool_queued", fmt(b.spool_queued, 0), b.spool_queued > 0 ? "n hot" : "n"],
          ["uptime_s", duration(b.uptime_s), "n"],
          ["seen_s_ago", `${duration(b.seen_s_ago)} ago`, "n"],
        ]) cell(row, field, text, cls).setAttribute("rowspan", span);
      }
      cell(row, "rollout", m ? rollout(m.update) : "");
      body.appendChild(row);
    });
    table.appendChild(body);
  }
}

function drawAlerts(alerts) {
  const list = document.getElementById("alerts");
  list.replaceChildren();
  if (!alerts.length) list.appendChild(el("li", { class: "none" }, "none"));
  for (const a of alerts) {
    const item = el("li", { class: a.kind, "data-board": a.board });
    item.appendChild(el("span", { class: "kind" }, a.kind));
    item.appendChild(document.createTextNode(a.message));
    list.appendChild(item);
  }
}

function chart(points) {
  const width = 300, height = 90, pad = 22;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const values = points.flatMap((p) => [p[1], p[2]]).filter((v) => typeof v === "number");
  const top = values.length ? Math.max(...values) * 1.1 || 1 : 1;
  const t0 = points.length ? points[0][0] : 0;
  const t1 = points.length > 1 ? points[points.length - 1][0] : t0 + 1;
  const x = (t) => pad + ((t - t0) / (t1 - t0 || 1)) * (width - pad - 4);
  const y = (v) => height - 12 - (v / top) * (height - 20);
  const grid = document.createElementNS(SVG, "line");
  for (const [k, v] of Object.entries({ x1: pad, x2: width - 4, y1: height - 12, y2: height - 12, class: "grid" })) grid.setAttribute(k, v);
  svg.appendChild(grid);
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "0");
  label.setAttribute("y", "10");
  label.textContent = `${top.toFixed(top < 10 ? 2 : 0)} ms`;
  svg.appendChild(label);
  for (const [index, cls] of [[1, "p50"], [2, "p95"]]) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", cls);
    line.setAttribute("points", points.filter((p) => typeof p[index] === "number").map((p) => `${x(p[0]).toFixed(1)},${y(p[index]).toFixed(1)}`).join(" "));
    svg.appendChild(line);
  }
  return svg;
}

function drawCharts(boards) {
  const box = document.getElementById("charts");
  box.replaceChildren();
  for (const b of boards) {
    for (const m of b.models) {
      const figure = el("figure", { "data-board": b.id, "data-model": m.name, "data-points": String(m.history.length) });
      const last = m.history.length ? m.history[m.history.length - 1] : null;
      figure.appendChild(el("figcaption", {}, `${b.device} · ${m.name}` + (last ? ` · p50 ${fmt(last[1], 2)} ms, p95 ${fmt(last[2], 2)} ms` : "")));
      figure.appendChild(chart(m.history));
      box.appendChild(figure);
    }
  }
}

function draw(state) {
  document.getElementById("source").textContent = state.source ? `from ${state.source}` : "";
  const online = state.boards.filter((b) => b.state === "online").length;
  document.getElementById("summary").textContent = `${online} of ${state.boards.length} boards online · updated ${new Date(state.time * 1000).toLocaleTimeString()}`;
  drawAlerts(state.alerts);
  drawBoards(state.boards);
  drawCharts(state.boards);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

function connect() {
  const link = document.getElementById("link");
  const events = new EventSource("/events");
  events.onopen = () => { link.textContent = "live"; link.className = "link up"; };
  events.onerror = () => { link.textContent = "reconnecting…"; link.className = "link down"; };
  events.onmessage = (message) => draw(JSON.parse(message.data));
}

connect();

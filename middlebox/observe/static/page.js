// The live status page of an mpproxy gateway or node: polls /status.json (the snapshot
// the process's loop publishes) and draws it with SVG. No third-party code, nothing
// loaded from anywhere but this listener. Text from the process is only ever set with
// textContent, never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 2000;
let errors = 0;

window.addEventListener("error", () => {
  errors += 1;
  document.body.dataset.errors = String(errors);
});

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function mbit(bytesPerSecond) {
  return (bytesPerSecond * 8 / 1e6).toFixed(2) + " Mbit/s";
}

function fmtSeconds(s) {
  if (s >= 3600) return (s / 3600).toFixed(1) + " h";
  if (s >= 60) return (s / 60).toFixed(1) + " min";
  return s.toFixed(0) + " s";
}

// A chart of one or more series over the rows' time (column 0); outages (column 4 == 0)
// shaded. series: [{col, cls, scale}]; unit: label of the top of the scale.
function chart(rows, series, unit, fmt) {
  const W = 360, H = 90, L = 2, B = 12;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", preserveAspectRatio: "none" });
  if (rows.length < 2) {
    const t = svg("text", { x: 8, y: 40 });
    t.textContent = "waiting for samples";
    s.appendChild(t);
    return s;
  }
  const t0 = rows[0][0], t1 = rows[rows.length - 1][0];
  const span = Math.max(t1 - t0, 1);
  let top = 0;
  for (const r of rows) for (const c of series) top = Math.max(top, (r[c.col] || 0) * c.scale);
  top = top > 0 ? top * 1.1 : 1;
  const x = (t) => L + (t - t0) / span * (W - L - 2);
  const y = (v) => (H - B) - v / top * (H - B - 4);
  for (let i = 0; i < rows.length - 1; i++) {
    if (rows[i][4] === 0) {
      s.appendChild(svg("rect", { class: "outage", x: x(rows[i][0]), y: 0,
        width: Math.max(x(rows[i + 1][0]) - x(rows[i][0]), 1), height: H - B }));
    }
  }
  s.appendChild(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  for (const c of series) {
    const pts = rows.map((r) => `${x(r[0]).toFixed(1)},${y((r[c.col] || 0) * c.scale).toFixed(1)}`);
    s.appendChild(svg("polyline", { class: c.cls, points: pts.join(" ") }));
  }
  const lab = svg("text", { x: W - 4, y: 10, "text-anchor": "end" });
  lab.textContent = fmt(top) + " " + unit;
  s.appendChild(lab);
  const span_lab = svg("text", { x: L + 2, y: H - 1 });
  span_lab.textContent = "last " + fmtSeconds(span);
  s.appendChild(span_lab);
  return s;
}

function renderCarriers(doc) {
  const box = document.getElementById("carriers");
  box.replaceChildren();
  let n = 0;
  // [gateway, label, path dict]: labelled as the process's metrics label them
  for (const [gw, label, p] of doc.paths || []) {
    const key = `${gw}|${label}`;
    const rows = doc.history[key] || [];
    const card = el("div", { class: "carrier", "data-path": label });
    const h = el("h3");
    h.appendChild(el("span", {}, (doc.status.role === "node" ? gw + " " : "") + label));
    h.appendChild(el("span", { class: p.state === "up" ? "state-up" : "state-down" }, p.state || "?"));
    card.appendChild(h);
    const last = rows.length ? rows[rows.length - 1] : [0, 0, 0, 0, 0];
    const o = (doc.outages || {})[key] || { count: 0, seconds_total: 0 };
    const facts = `in ${mbit(last[1])}, out ${mbit(last[2])}, RTT ${(p.rtt_ms || 0).toFixed(1)} ms, ` +
      `kernel retransmits ${p.lost || 0}, outages ${o.count} (${o.seconds_total.toFixed(1)} s)`;
    card.appendChild(el("div", { class: "facts" }, facts));
    card.appendChild(chart(rows, [{ col: 1, cls: "in", scale: 8 / 1e6 }, { col: 2, cls: "out", scale: 8 / 1e6 }],
      "Mbit/s", (v) => v.toFixed(1)));
    card.appendChild(chart(rows, [{ col: 3, cls: "rtt", scale: 1000 }], "ms RTT", (v) => v.toFixed(0)));
    box.appendChild(card);
    n += 1;
  }
  if (!n) box.appendChild(el("p", { class: "hint" }, "no paths yet"));
  document.body.dataset.carriers = String(n);
}

// Throughput (bit/s) to a colour from red (nothing) to green (the best seen on the map).
function colour(thr, best) {
  if (thr === null || thr === undefined || !isFinite(thr)) return "#a0a8b0";
  const f = best > 0 ? Math.min(thr / best, 1) : 0;
  return `hsl(${(f * 120).toFixed(0)}, 75%, 42%)`;
}

function renderTrack(doc) {
  const track = doc.track || {};
  const names = Object.keys(track).sort();
  const section = document.getElementById("track-section");
  const box = document.getElementById("track");
  box.replaceChildren();
  section.hidden = doc.status.role !== "gateway";
  let points = 0;
  let lat0 = Infinity, lat1 = -Infinity, lon0 = Infinity, lon1 = -Infinity, best = 0;
  const ctx = {};
  for (const sess of doc.status.sessions || []) Object.assign(ctx, sess.context || {});
  const extend = (lat, lon) => {
    lat0 = Math.min(lat0, lat); lat1 = Math.max(lat1, lat);
    lon0 = Math.min(lon0, lon); lon1 = Math.max(lon1, lon);
  };
  for (const c of names) {
    for (const [, lat, lon, thr] of track[c]) {
      extend(lat, lon);
      if (thr !== null && isFinite(thr)) best = Math.max(best, thr);
    }
    const pos = (ctx[c] || {}).position;
    if (pos && pos.length === 2) extend(pos[0], pos[1]);  // the windows lag the vehicle
  }
  if (!names.length) {
    box.appendChild(el("p", { class: "hint" }, "no track yet (needs [context] with positions and use_contextdb)"));
    document.body.dataset.trackpoints = "0";
    return;
  }
  // equirectangular around the track's middle: the track itself is the picture
  const k = Math.cos((lat0 + lat1) / 2 * Math.PI / 180);
  const w = Math.max((lon1 - lon0) * k, 1e-6), h = Math.max(lat1 - lat0, 1e-6);
  // as tall as the track's shape needs (a straight line east-west needs little)
  const W = 360, P = 12;
  const H = Math.round(Math.min(260, Math.max(80, (W - 2 * P) * h / w + 2 * P)));
  const scale = Math.min((W - 2 * P) / w, (H - 2 * P) / h);
  const px = (lon) => P + ((lon - lon0) * k) * scale + ((W - 2 * P) - w * scale) / 2;
  const py = (lat) => H - P - (lat - lat0) * scale - ((H - 2 * P) - h * scale) / 2;
  for (const c of names) {
    const rows = track[c];
    const card = el("div", { class: "trackmap", "data-carrier": c });
    card.appendChild(el("h3", {}, c));
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "map" });
    s.style.height = `${H}px`;  // CSSOM, not a style attribute: the page's CSP allows no inline style
    s.appendChild(svg("polyline", { class: "path",
      points: rows.map((r) => `${px(r[2]).toFixed(1)},${py(r[1]).toFixed(1)}`).join(" ") }));
    for (const [t, lat, lon, thr] of rows) {
      const dot = svg("circle", { cx: px(lon).toFixed(1), cy: py(lat).toFixed(1), r: 3, fill: colour(thr, best) });
      const tip = svg("title");
      tip.textContent = `${new Date(t * 1000).toLocaleTimeString()}: ` +
        (thr === null || !isFinite(thr) ? "not measured" : (thr / 1e6).toFixed(2) + " Mbit/s");
      dot.appendChild(tip);
      s.appendChild(dot);
      points += 1;
    }
    const pos = (ctx[c] || {}).position;
    if (pos && pos.length === 2) {
      s.appendChild(svg("circle", { class: "now", cx: px(pos[1]).toFixed(1), cy: py(pos[0]).toFixed(1), r: 6 }));
    }
    card.appendChild(s);
    card.appendChild(el("div", { class: "legend" },
      `${rows.length} windows; red 0 to green ${(best / 1e6).toFixed(1)} Mbit/s; ring: now`));
    box.appendChild(card);
  }
  document.body.dataset.trackpoints = String(points);
}

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  for (const r of rows) {
    const tr = el("tr");
    r.forEach((v, i) => tr.appendChild(el("td", i === r.length - 1 ? { class: "num" } : {}, String(v))));
    body.appendChild(tr);
  }
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: "3" }, "none"));
    body.appendChild(tr);
  }
}

function render(doc) {
  const st = doc.status || {};
  document.getElementById("role").textContent = st.role || "mpproxy";
  document.getElementById("ident").textContent = st.id || "";
  const conns = (st.sessions || []).reduce((n, s) => n + Object.keys(s.connections || {}).length, 0);
  document.getElementById("summary").textContent =
    `up ${fmtSeconds(st.uptime || 0)}, ${(st.sessions || []).length} session(s), ${conns} connection(s); ` +
    `snapshot of ${new Date((doc.at || 0) * 1000).toLocaleTimeString()}`;
  renderCarriers(doc);
  renderTrack(doc);
  fillTable("clients", (doc.clients || []).map((r) => [r[0], r[1]]));
  fillTable("counters", (doc.alerts || []).map((r) => [r[1], r[3], r[4]]));
  document.body.dataset.ready = "1";
}

async function poll() {
  try {
    const r = await fetch("/status.json", { cache: "no-store" });
    if (r.ok) render(await r.json());
    else document.getElementById("summary").textContent = `status.json: HTTP ${r.status}`;
  } catch (e) {
    document.getElementById("summary").textContent = "the process does not answer";
  }
  setTimeout(poll, POLL_MS);
}

document.body.dataset.errors = "0";
poll();

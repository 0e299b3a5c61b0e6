// The fleet dashboard: a Leaflet map of the sensors (no basemap unless dashboard.tile_url is set: points, scale and
// labels draw without one), a sensor's panels on click, the alert list. Data: the read-only API of `custom-ingest serve`.
"use strict";

const BANDS = [[75, "#d7191c", ">= 75"], [65, "#fd8d3c", "65-75"], [55, "#fecc5c", "55-65"], [-Infinity, "#1a9641", "< 55"]];
const SILENT = "#8c8c8c";
const LABELS_UP_TO = 60; // more sensors than this: labels on hover only
const CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                       "#bcbd22", "#17becf"];

const $ = (id) => document.getElementById(id);
const iso = (date) => date.toISOString().replace(/\.\d{3}Z$/, "Z");
const when = (text) => (text ? text.replace("T", " ").replace(/\.\d+Z$/, "Z") : text); // for people: no "T", no µs

async function getJSON(url) {
  const reply = await fetch(url);
  if (reply.status === 401) window.location.assign("/login"); // the session ended (expired, logged out elsewhere)
  if (!reply.ok) throw new Error(`${url}: ${reply.status} ${(await reply.text()).slice(0, 200)}`);
  return reply.json();
}

function colour(props) {
  if (props.silent) return SILENT;
  if (props.laeq === null) return SILENT;
  return BANDS.find(([low]) => props.laeq >= low)[1];
}

function cell(row, text, tag = "td") {
  const el = document.createElement(tag);
  el.textContent = text === null || text === undefined ? "–" : String(text);
  row.appendChild(el);
  return el;
}

function fillTable(table, header, rows) {
  table.replaceChildren();
  const head = table.insertRow();
  header.forEach((h) => cell(head, h, "th"));
  rows.forEach((values) => {
    const row = table.insertRow();
    values.forEach((v) => cell(row, v));
  });
  return table;
}

const state = { map: null, layer: null, sensor: null, plot: null, settings: null };

function initMap(settings) {
  const map = L.map("map", { zoomControl: true, attributionControl: Boolean(settings.tile_url) });
  if (settings.tile_url) {
    L.tileLayer(settings.tile_url, { attribution: settings.tile_attribution, maxZoom: 19 }).addTo(map);
  }
  L.control.scale({ metric: true, imperial: false }).addTo(map);
  map.setView([40.4168, -3.7038], 12);
  $("legend").innerHTML = BANDS.map(([, c, t]) => `<span><i style="background:${c}"></i>LAeq ${t} dB(A)</span>`)
    .join("") + `<span><i style="background:${SILENT}"></i>silent</span>`;
  return map;
}

async function loadSensors(fit) {
  const geojson = await getJSON("/api/sensors");
  const features = geojson.features;
  if (state.layer) state.layer.remove();
  state.layer = L.layerGroup().addTo(state.map);
  const permanent = features.length <= LABELS_UP_TO;
  features.forEach((f) => {
    const p = f.properties;
    const [lon, lat] = f.geometry.coordinates;
    const marker = L.circleMarker([lat, lon], {
      radius: 8, weight: p.open_alerts > 0 ? 3 : 1, color: p.open_alerts > 0 ? "#000" : "#333",
      fillColor: colour(p), fillOpacity: 0.9, className: `sensor-marker sensor-${p.sensor_id.replace(/[^A-Za-z0-9_-]/g, "_")}`,
    });
    const level = p.laeq === null ? "–" : `${p.laeq.toFixed(1)} dB`;
    marker.bindTooltip(`${p.sensor_id} ${level}${p.silent ? " silent" : ""}${p.top_class ? " · " + p.top_class : ""}`,
                       { permanent, direction: "right", className: "sensor-label" });
    marker.on("click", () => openSensor(p.sensor_id));
    state.layer.addLayer(marker);
  });
  if (fit && features.length) {
    state.map.fitBounds(L.latLngBounds(features.map((f) => [f.geometry.coordinates[1], f.geometry.coordinates[0]])),
                        { padding: [30, 30], maxZoom: 16 });
  }
  const silent = features.filter((f) => f.properties.silent).length;
  $("status").textContent = `${features.length} sensors, ${silent} silent`;
  $("status").dataset.sensors = String(features.length);
}

function sensorUrl(id, panel, params) {
  return `/api/sensors/${encodeURIComponent(id)}/${panel}?${new URLSearchParams(params)}`;
}

async function openSensor(id) {
  state.sensor = id;
  const now = new Date();
  const day = { since: iso(new Date(now - 86400e3)), until: iso(now) };
  const month = { since: iso(new Date(now - 30 * 86400e3)), until: iso(now) };
  const [series, heat, lden, health] = await Promise.all([
    getJSON(sensorUrl(id, "series", day)), getJSON(sensorUrl(id, "heatmap", month)),
    getJSON(sensorUrl(id, "lden", month)), getJSON(sensorUrl(id, "health", day)),
  ]);
  $("sensor-panel").hidden = false;
  $("sensor-title").textContent = `Sensor ${id}`;
  $("dl-series").href = sensorUrl(id, "series", { ...day, format: "csv" });
  $("dl-lden").href = sensorUrl(id, "lden", { ...month, format: "csv" });
  $("dl-heatmap").href = sensorUrl(id, "heatmap", { ...month, format: "csv" });
  $("dl-sensor-geojson").href = "/api/sensors?format=geojson";
  drawHealth(health[0]);
  drawLevels(series);
  drawClasses(series);
  drawHeatmap(heat);
  fillTable($("lden"), ["day", "Ld", "Le", "Ln", "Lden", "hours"],
            lden.map((r) => [r.day, r.ld, r.le, r.ln, r.lden, r.hours]));
  $("sensor-panel").dataset.sensor = id;
  $("sensor-panel").dataset.windows = String(series.length);
}

function drawHealth(h) {
  const synced = h.synced_share === null ? null : `${(100 * h.synced_share).toFixed(1)} % of windows`;
  fillTable($("health"), ["", ""], [
    ["last seen", when(h.last_seen)], ["first seen", when(h.first_seen)], ["bundle", h.bundle_id],
    ["windows (24 h)", h.windows], ["clock synced", synced],
    ["largest clock error", h.max_clock_error_ms === null ? null : `${h.max_clock_error_ms} ms`],
    [`unmeasured minutes (mic down), hour ${when(h.summary_hour) || "–"}`, h.mic_down_min],
  ]);
}

function drawLevels(series) {
  const t = series.map((r) => Date.parse(r.window_start) / 1000);
  const data = [t, series.map((r) => r.laeq), series.map((r) => r.lafmax), series.map((r) => r.la90)];
  if (state.plot) state.plot.destroy();
  const width = Math.max(320, $("chart-levels").clientWidth || 600);
  state.plot = new uPlot({
    width, height: 220, scales: { x: { time: true } },
    axes: [{}, { label: "dB(A)" }],
    series: [{}, { label: "LAeq", stroke: "#1f77b4" }, { label: "LAFmax", stroke: "#d62728" },
             { label: "LA90", stroke: "#2ca02c" }],
  }, data, $("chart-levels"));
}

function drawClasses(series) {
  const canvas = $("chart-classes");
  const ctx = canvas.getContext("2d");
  const classes = [...new Set(series.map((r) => r.top_class).filter(Boolean))].sort();
  canvas.height = Math.max(40, 18 * classes.length + 20);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!series.length) return;
  const t0 = Date.parse(series[0].window_start), t1 = Date.parse(series[series.length - 1].window_end);
  const x = (ms) => 110 + ((ms - t0) / Math.max(1, t1 - t0)) * (canvas.width - 120);
  ctx.font = "11px sans-serif";
  classes.forEach((name, i) => {
    ctx.fillStyle = "#222";
    ctx.fillText(name, 2, 14 + 18 * i);
    ctx.fillStyle = CLASS_COLOURS[i % CLASS_COLOURS.length];
    series.filter((r) => r.top_class === name).forEach((r) => {
      const a = x(Date.parse(r.window_start));
      ctx.fillRect(a, 4 + 18 * i, Math.max(1, x(Date.parse(r.window_end)) - a), 12);
    });
  });
  ctx.fillStyle = "#555";
  ctx.fillText(new Date(t0).toISOString().slice(0, 16).replace("T", " "), 110, canvas.height - 4);
  canvas.dataset.classes = classes.join(",");
}

function drawHeatmap(rows) {
  const classes = [...new Set(rows.map((r) => r.class))].sort();
  const most = Math.max(1, ...rows.map((r) => r.events));
  const table = fillTable($("heatmap"), ["", ...Array.from({ length: 24 }, (_, h) => h)], []);
  classes.forEach((name) => {
    const row = table.insertRow();
    cell(row, name, "th").className = "cls";
    for (let h = 0; h < 24; h++) {
      const found = rows.find((r) => r.class === name && r.hour === h);
      const td = cell(row, "");
      const n = found ? found.events : 0;
      td.title = `${name} ${h}:00 – ${n} windows`;
      td.style.background = n ? `rgba(215, 25, 28, ${0.15 + 0.85 * n / most})` : "#f4f4f4";
    }
  });
}

async function loadAlerts() {
  const since = iso(new Date(Date.now() - 86400e3));
  $("dl-alerts-csv").href = `/api/alerts?format=csv&since=${since}`;
  const rows = await getJSON(`/api/alerts?since=${since}`);
  const table = fillTable($("alerts"), ["sensor", "rule", "kind", "opened", "closed", "detail"],
                          rows.map((a) => [a.sensor_id, a.rule, a.kind, when(a.opened_at), when(a.closed_at) || "open", a.detail]));
  [...table.rows].slice(1).forEach((tr, i) => { if (!rows[i].closed_at) tr.className = "open"; });
  $("alerts").dataset.count = String(rows.length);
}

async function main() {
  state.settings = await getJSON("/api/settings");
  state.map = initMap(state.settings);
  await Promise.all([loadSensors(true), loadAlerts()]);
  document.body.dataset.ready = "1";
  setInterval(() => loadSensors(false).catch(console.error), 15000);
  setInterval(() => loadAlerts().catch(console.error), 5000);
}

main().catch((err) => { $("status").textContent = `error: ${err.message}`; });

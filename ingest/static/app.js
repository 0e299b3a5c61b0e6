// The fleet dashboard: a Leaflet map of the sensors (a basemap only when the server has one: tiles it serves from an
// MBTiles file, or a configured tile URL; otherwise an optional outline and the scale), a sensor's panels on click,
// the alert list. Data: the read-only API of `custom-ingest serve`. Every time shown is in the fleet's time zone
// (/api/settings), 24-hour, with the zone named; downloads stay ISO 8601 UTC.
"use strict";

const BANDS = [[75, "#d7191c", ">= 75"], [65, "#fd8d3c", "65-75"], [55, "#fecc5c", "55-65"], [-Infinity, "#1a9641", "< 55"]];
const SILENT = "#8c8c8c";
const LABELS_UP_TO = 60; // more sensors than this: labels on hover only, and markers cluster
const SERIES_DAYS = 7; // the server's longest per-window span
const DAY_MS = 86400e3;
const CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                       "#bcbd22", "#17becf"];

const $ = (id) => document.getElementById(id);
const iso = (date) => date.toISOString().replace(/\.\d{3}Z$/, "Z");

async function getJSON(url) {
  const reply = await fetch(url);
  if (reply.status === 401) window.location.assign("/login"); // the session ended (expired, logged out elsewhere)
  if (!reply.ok) throw new Error(`${url}: ${reply.status} ${(await reply.text()).slice(0, 200)}`);
  return reply.json();
}

// One clock for the whole page: the fleet's zone, 24-hour, "2026-03-29 03:00 CEST".
function makeClock(zone) {
  const format = new Intl.DateTimeFormat("en-GB", {
    timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    second: "2-digit", hourCycle: "h23", timeZoneName: "short",
  });
  const parts = (date) => Object.fromEntries(format.formatToParts(date).map((p) => [p.type, p.value]));
  const day = (p) => `${p.year}-${p.month}-${p.day}`;
  return {
    zone,
    abbr: (date) => parts(date).timeZoneName,
    minute(date) { const p = parts(date); return `${day(p)} ${p.hour}:${p.minute} ${p.timeZoneName}`; },
    second(date) { const p = parts(date); return `${day(p)} ${p.hour}:${p.minute}:${p.second} ${p.timeZoneName}`; },
    tick(date, withDay) { const p = parts(date); return withDay ? `${p.day}/${p.month} ${p.hour}:${p.minute}` : `${p.hour}:${p.minute}`; },
    date: (date) => day(parts(date)),
  };
}

function colour(props) {
  const value = props[state.colourBy];
  if (props.silent && state.colourBy === "laeq") return SILENT;
  if (value === null || value === undefined) return SILENT;
  return BANDS.find(([low]) => value >= low)[1];
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

const state = {
  map: null, layer: null, sensor: null, plot: null, settings: null, clock: null, colourBy: "laeq",
  points: [], inView: [], loads: 0, range: { kind: "24h" },
  extra: {}, // per sensor: yesterday's Lden/Ln and the hours over the chosen rule, merged into the map's properties
};
const INDICATORS = { laeq: "LAeq", lden_yesterday: "Lden", ln_yesterday: "Ln" };
window.dashboard = state; // for a look from the browser's console (and the tests)

const when = (text) => (text ? state.clock.minute(new Date(text)) : text);

function initMap(settings) {
  const map = L.map("map", { zoomControl: true, attributionControl: Boolean(settings.tile_url), maxZoom: 19,
                         zoomSnap: 0.25, // fits hug the sensors
                         fadeAnimation: false }); // a redrawn map's old labels go at once, not over 200 ms
  const tiles = settings.tile_layer;
  if (tiles.url) { // the server's own MBTiles (/api/tiles: only where the file has tiles) or a configured tile server
    const [west, south, east, north] = tiles.bounds || [];
    L.tileLayer(tiles.url, {
      attribution: tiles.attribution, maxZoom: 19, minZoom: tiles.minZoom || 0, maxNativeZoom: tiles.maxNativeZoom,
      bounds: tiles.bounds ? L.latLngBounds([south, west], [north, east]) : undefined,
    }).addTo(map);
  }
  if (settings.outline) {
    getJSON("/api/outline").then((outline) => {
      L.geoJSON(outline, { interactive: false, style: { color: "#5a6b80", weight: 1.2, fillOpacity: 0.04,
                                                       className: "basemap-outline" } }).addTo(map).bringToBack();
      $("map").dataset.outline = "1";
    }).catch(showError);
  }
  L.control.scale({ metric: true, imperial: false }).addTo(map);
  map.setView([40.4168, -3.7038], 12);
  map.on("moveend", () => { state.inView = state.points.filter((p) => map.getBounds().contains(p)); });
  // The map's box changes when a sensor's panel opens or closes and when the window resizes: Leaflet must measure
  // again, and the sensors that were in view must stay in view.
  new ResizeObserver(() => {
    const keep = state.inView.length ? state.inView : state.points; // before re-measuring moves the view
    map.invalidateSize({ animate: false, pan: false });
    refit(keep);
  }).observe($("map"));
  return map;
}

function drawLegend() {
  const what = INDICATORS[state.colourBy];
  $("legend").innerHTML = BANDS.map(([, c, t]) => `<span><i style="background:${c}"></i>${what} ${t} dB(A)</span>`)
    .join("") + `<span><i style="background:${SILENT}"></i>${state.colourBy === "laeq" ? "silent" : "no data"}</span>`;
  $("legend").dataset.colourBy = state.colourBy;
}

function refit(points) {
  if (!points.length || !state.map) return;
  // Permanent labels sit right of their point: leave room for the widest.
  const widths = [...document.querySelectorAll(".sensor-label")].map((el) => el.offsetWidth);
  const labels = state.points.length <= LABELS_UP_TO ? 30 + Math.max(120, ...widths) : 30;
  state.map.fitBounds(L.latLngBounds(points), { paddingTopLeft: [30, 30], paddingBottomRight: [labels, 30],
                                                 maxZoom: 16, animate: false });
}

function clusterIcon(cluster) {
  const children = cluster.getAllChildMarkers();
  const loudest = children.reduce((top, m) => (m.level > top.level ? m : top), { level: -Infinity, colour: SILENT });
  const alerting = children.some((m) => m.alerting) ? " alerting" : "";
  return L.divIcon({ html: `<div style="background:${loudest.colour}">${children.length}</div>`,
                     className: `sensor-cluster${alerting}`, iconSize: L.point(40, 40) });
}

async function loadSensors(fit) {
  const ticket = ++state.loads;
  const geojson = await getJSON("/api/sensors");
  if (ticket !== state.loads) return; // a later load (a refresh, another colour) draws instead: one layer only
  const features = geojson.features;
  if (state.layer) state.layer.remove();
  const permanent = features.length <= LABELS_UP_TO;
  state.layer = permanent ? L.featureGroup() : L.markerClusterGroup({
    showCoverageOnHover: false, maxClusterRadius: 45, iconCreateFunction: clusterIcon,
    animate: false, // clusters are redrawn at once: no half-merged frames, and less work at 1,000 sensors
  });
  const rule = $("rule").value;
  const markers = features.map((f) => {
    const p = Object.assign(f.properties, state.extra[f.properties.sensor_id]);
    const [lon, lat] = f.geometry.coordinates;
    const marker = L.circleMarker([lat, lon], {
      radius: 8, weight: p.open_alerts > 0 ? 3 : 1, color: p.open_alerts > 0 ? "#000" : "#333",
      fillColor: colour(p), fillOpacity: 0.9, className: `sensor-marker sensor-${p.sensor_id.replace(/[^A-Za-z0-9_-]/g, "_")}`,
    });
    marker.colour = colour(p);
    marker.level = marker.colour === SILENT ? -Infinity : p[state.colourBy]; // a cluster's colour: its loudest
    marker.alerting = p.open_alerts > 0;
    const value = p[state.colourBy];
    const level = `${INDICATORS[state.colourBy]} ${value === null || value === undefined ? "–" : value.toFixed(1) + " dB"}`;
    const over = rule && p.hours_over !== undefined ? ` · ${p.hours_over} h over ${rule}` : "";
    marker.bindTooltip(`${p.sensor_id} ${level}${p.silent ? " silent" : ""}${p.top_class ? " · " + p.top_class : ""}${over}`,
                       { permanent, direction: "right", className: "sensor-label" });
    marker.on("click", () => openSensor(p.sensor_id).catch(showError));
    return marker;
  });
  if (permanent) markers.forEach((m) => state.layer.addLayer(m));
  else state.layer.addLayers(markers);
  state.layer.addTo(state.map);
  state.points = features.map((f) => L.latLng(f.geometry.coordinates[1], f.geometry.coordinates[0]));
  if (fit) refit(state.points);
  const silent = features.filter((f) => f.properties.silent).length;
  $("status").textContent = `${features.length} sensors, ${silent} silent`;
  $("status").dataset.sensors = String(features.length);
}

// The chosen range as [since, until) Dates; "dates" includes its last day, both read as the fleet's local days.
function rangeSpan() {
  const now = new Date();
  const back = { "24h": 1, "7d": 7, "30d": 30 }[state.range.kind];
  if (back) return { since: new Date(now - back * DAY_MS), until: now };
  return { since: new Date(state.range.since), until: new Date(state.range.until) };
}

const asParams = (span) => ({ since: iso(span.since), until: iso(span.until) });
const describe = (span) => `(${when(iso(span.since))} – ${when(iso(span.until))})`;

function sensorUrl(id, panel, params) {
  return `/api/sensors/${encodeURIComponent(id)}/${panel}?${new URLSearchParams(params)}`;
}

async function openSensor(id) {
  state.sensor = id;
  const span = rangeSpan();
  // Per-window panels: the range's last 7 days at most; hourly and daily ones: the range, at least 30 days.
  const windows = { since: new Date(Math.max(span.since, span.until - SERIES_DAYS * DAY_MS)), until: span.until };
  const daily = { since: new Date(Math.min(span.since, span.until - 30 * DAY_MS)), until: span.until };
  const [series, heat, lden, health] = await Promise.all([
    getJSON(sensorUrl(id, "series", asParams(windows))), getJSON(sensorUrl(id, "heatmap", asParams(daily))),
    getJSON(sensorUrl(id, "lden", asParams(daily))), getJSON(sensorUrl(id, "health", asParams(windows))),
  ]);
  if (state.sensor !== id) return; // another sensor was clicked meanwhile
  $("sensor-panel").hidden = false;
  $("sensor-title").textContent = `Sensor ${id}`;
  $("series-span").textContent = describe(windows);
  $("heatmap-span").textContent = describe(daily);
  $("lden-span").textContent = describe(daily);
  $("dl-series").href = sensorUrl(id, "series", { ...asParams(windows), format: "csv" });
  $("dl-lden").href = sensorUrl(id, "lden", { ...asParams(daily), format: "csv" });
  $("dl-heatmap").href = sensorUrl(id, "heatmap", { ...asParams(daily), format: "csv" });
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

function closeSensor() {
  state.sensor = null;
  $("sensor-panel").hidden = true;
  delete $("sensor-panel").dataset.sensor;
}

function drawHealth(h) {
  const synced = h.synced_share === null ? null : `${(100 * h.synced_share).toFixed(1)} % of windows`;
  fillTable($("health"), ["", ""], [
    ["last seen", when(h.last_seen)], ["first seen", when(h.first_seen)], ["bundle", h.bundle_id],
    ["windows (range)", h.windows], ["clock synced", synced],
    ["largest clock error", h.max_clock_error_ms === null ? null : `${h.max_clock_error_ms} ms`],
    [`unmeasured minutes (mic down), hour ${when(h.summary_hour) || "–"}`, h.mic_down_min],
    ...overLimitRow(),
  ]);
}

function drawLevels(series) {
  const t = series.map((r) => Date.parse(r.window_start) / 1000);
  const data = [t, series.map((r) => r.laeq), series.map((r) => r.lafmax), series.map((r) => r.la90)];
  if (state.plot) state.plot.destroy();
  const width = Math.max(300, $("chart-levels").clientWidth || 600);
  const clock = state.clock;
  const long = t.length > 1 && t[t.length - 1] - t[0] > 86400;
  state.plot = new uPlot({
    width, height: 220,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), clock.zone),
    scales: { x: { time: true } },
    axes: [{ values: (u, ticks) => ticks.map((s) => clock.tick(new Date(s * 1000), long)) }, { label: "dB(A)" }],
    series: [{ label: "time", value: (u, v) => (v === null || v === undefined ? "–" : clock.second(new Date(v * 1000))) },
             { label: "LAeq", stroke: "#1f77b4" }, { label: "LAFmax", stroke: "#d62728" },
             { label: "LA90", stroke: "#2ca02c" }],
  }, data, $("chart-levels"));
}

function drawClasses(series) {
  const canvas = $("chart-classes");
  const ctx = canvas.getContext("2d");
  const classes = [...new Set(series.map((r) => r.top_class).filter(Boolean))].sort();
  canvas.width = Math.max(300, canvas.clientWidth || 640);
  canvas.height = Math.max(40, 18 * classes.length + 20);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  canvas.onmousemove = null;
  if (!series.length) return;
  const t0 = Date.parse(series[0].window_start), t1 = Date.parse(series[series.length - 1].window_end);
  const x = (ms) => 110 + ((ms - t0) / Math.max(1, t1 - t0)) * (canvas.width - 120);
  state.timeline = { t0, t1 };
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
  ctx.fillText(state.clock.minute(new Date(t0)), 110, canvas.height - 4);
  const last = state.clock.minute(new Date(t1));
  ctx.fillText(last, canvas.width - 4 - ctx.measureText(last).width, canvas.height - 4);
  canvas.dataset.classes = classes.join(",");
  // Hover: the window under the pointer, in the page's clock.
  canvas.onmousemove = (event) => {
    const box = canvas.getBoundingClientRect();
    const px = (event.clientX - box.left) * (canvas.width / box.width);
    const ms = t0 + ((px - 110) / (canvas.width - 120)) * (t1 - t0);
    const hit = series.find((r) => Date.parse(r.window_start) <= ms && ms < Date.parse(r.window_end))
      || series.reduce((best, r) => (Math.abs(Date.parse(r.window_start) - ms) < Math.abs(Date.parse(best.window_start) - ms) ? r : best));
    const text = `${state.clock.second(new Date(hit.window_start))}: ${hit.top_class || "nothing on top"}`;
    $("timeline-at").textContent = text;
    canvas.title = text;
  };
}

function drawHeatmap(rows) {
  const classes = [...new Set(rows.map((r) => r.class))].sort();
  const most = Math.max(1, ...rows.map((r) => r.events));
  const hh = (h) => String(h).padStart(2, "0");
  const table = fillTable($("heatmap"), [state.clock.zone, ...Array.from({ length: 24 }, (_, h) => hh(h))], []);
  table.rows[0].cells[0].className = "cls";
  table.rows[0].cells[0].title = "hour of day in the fleet's time zone";
  classes.forEach((name) => {
    const row = table.insertRow();
    const label = cell(row, name, "th");
    label.className = "cls";
    label.title = name;
    for (let h = 0; h < 24; h++) {
      const found = rows.find((r) => r.class === name && r.hour === h);
      const td = cell(row, "");
      const n = found ? found.events : 0;
      td.title = `${name} ${hh(h)}:00–${hh((h + 1) % 24)}:00: ${n} windows`;
      td.dataset.hour = hh(h);
      td.dataset.events = String(n);
      td.style.background = n ? `rgba(215, 25, 28, ${0.15 + 0.85 * n / most})` : "#f4f4f4";
    }
  });
}

function overLimitRow() {
  const rule = state.settings.level_rules.find((r) => r.name === $("rule").value);
  const mine = state.extra[state.sensor] || {};
  if (!rule || mine.hours_over === undefined) return [];
  const period = rule.between ? `, ${rule.between}` : "";
  return [[`hours over ${rule.name} (LAeq > ${rule.laeq_above} dB${period}), range`,
           `${mine.hours_over} of ${mine.hours_measured} measured`]];
}

// What the map can be coloured by besides the latest LAeq, and the hours over the chosen rule: asked for on demand.
async function loadIndicators() {
  const extra = {};
  const merge = (id, values) => { extra[id] = Object.assign(extra[id] || {}, values); };
  const rule = $("rule").value;
  const [levels, over] = await Promise.all([
    state.colourBy === "laeq" ? [] : getJSON("/api/levels"),
    rule ? getJSON(`/api/over-limit?${new URLSearchParams({ rule, ...asParams(rangeSpan()) })}`) : [],
  ]);
  levels.forEach((r) => merge(r.sensor_id, { lden_yesterday: r.lden, ln_yesterday: r.ln }));
  over.forEach((r) => merge(r.sensor_id, { hours_over: r.hours_over, hours_measured: r.hours_measured }));
  state.extra = extra;
  drawLegend();
  await loadSensors(false);
  $("map-controls").dataset.shown = `${state.colourBy}:${rule}:${$("range").dataset.applied || ""}`;
}

async function loadAlerts() {
  const span = rangeSpan();
  $("dl-alerts-csv").href = `/api/alerts?${new URLSearchParams({ ...asParams(span), format: "csv" })}`;
  const rows = await getJSON(`/api/alerts?${new URLSearchParams(asParams(span))}`);
  const table = fillTable($("alerts"), ["sensor", "rule", "kind", "opened", "closed", "detail"],
                          rows.map((a) => [a.sensor_id, a.rule, a.kind, when(a.opened_at), when(a.closed_at) || "open", a.detail]));
  [...table.rows].slice(1).forEach((tr, i) => { if (!rows[i].closed_at) tr.className = "open"; });
  $("alerts").dataset.count = String(rows.length);
}

// A local day (the fleet's zone) "YYYY-MM-DD" -> the UTC instant it starts: search the offset, DST included.
function localMidnight(text) {
  const guess = new Date(`${text}T00:00:00Z`);
  for (const hours of [0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6, 6, -7, 7, -8, 8, -9, 9, -10, 10, -11, 11, -12, 12, -13, 13, -14, 14]) {
    const at = new Date(guess - hours * 3600e3);
    if (state.clock.tick(at, true) === `${text.slice(8, 10)}/${text.slice(5, 7)} 00:00`) return at;
  }
  return guess;
}

function readRange() {
  const kind = $("range").value;
  $("range-dates").hidden = kind !== "dates";
  if (kind !== "dates") return { kind };
  const from = $("range-from").value, to = $("range-to").value;
  if (!from || !to || to < from) return null;
  const next = new Date(Date.parse(`${to}T12:00:00Z`) + DAY_MS).toISOString().slice(0, 10);
  return { kind, since: localMidnight(from).getTime(), until: localMidnight(next).getTime() };
}

async function applyRange() {
  const range = readRange();
  if (!range) return;
  state.range = range;
  $("range").dataset.applied = `${range.kind}:${range.since || ""}:${range.until || ""}`;
  await Promise.all([loadAlerts(), loadIndicators()]);
  if (state.sensor) await openSensor(state.sensor);
}

function showError(err) { $("status").textContent = `error: ${err.message || err}`; }

async function main() {
  state.settings = await getJSON("/api/settings");
  state.clock = makeClock(state.settings.timezone);
  const now = new Date();
  $("clock").textContent = `times: ${state.settings.timezone} (${state.clock.abbr(now)}), 24-hour`;
  $("range-from").value = $("range-to").value = state.clock.date(now);
  state.map = initMap(state.settings);
  drawLegend();
  $("close-panel").addEventListener("click", closeSensor);
  state.settings.level_rules.forEach((r) => $("rule").add(new Option(r.name, r.name)));
  $("rule-choice").hidden = !state.settings.level_rules.length;
  $("colour-by").addEventListener("change", () => { state.colourBy = $("colour-by").value; loadIndicators().catch(showError); });
  $("rule").addEventListener("change", () => loadIndicators().then(() => state.sensor && openSensor(state.sensor)).catch(showError));
  $("range").addEventListener("change", () => applyRange().catch(showError));
  $("range-form").addEventListener("submit", (event) => { event.preventDefault(); applyRange().catch(showError); });
  await Promise.all([loadSensors(true), loadAlerts()]);
  document.body.dataset.ready = "1";
  if ($("rule").value) loadIndicators().catch(showError); // hours over the rule: after the first view
  setInterval(() => loadSensors(false).catch(console.error), 15000);
  setInterval(() => loadAlerts().catch(console.error), 5000);
}

main().catch(showError);

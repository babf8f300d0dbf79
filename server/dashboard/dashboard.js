/* Ferry dashboard: polls the worker's HTTP API and renders it. Vanilla JS, no external requests.

   Every rendered value carries a stable hook for the browser test
   (tests/server/test_dashboard_browser.py):
     totals        data-field="<key of /accounting>"
     fleet table   data-device="<id>" data-field="<key of /devices[id] or of its health>"
     device panel  data-panel="<id>" data-field="<dotted path in /devices/<id>>"
                   data-panel="<id>" data-metric="<m>" data-field="<key of the newest closed 1m window>"
     alerts        data-alert="<index>" data-field="<key of the alert>"
     pipeline      data-pipeline="path" data-key="<stage>" data-field="<key of the /pipeline path entry>"
                   data-pipeline="gateway" data-key="<metrics URL>" data-field="up" or "<key of its figures>"
                   data-pipeline="lag" data-key="<worker URL> <topic> <partition>" data-field="lag"
                   data-pipeline="worker" data-key="<worker URL>" data-field="error"
                   data-pipeline="latency" data-key="fleet" data-field="readings" or "p50_s" / "p95_s" /
                   "p99_s" (seconds in data-value)
     charts        data-chart="<metric>" data-x-min / data-x-max: the time axis' range in seconds
   A value the API does not give (absent or null) is rendered as "—"; times are shown
   relative, with the raw milliseconds in data-value.

   A worker with an api_token answers its API only to `Authorization: Bearer <token>`. The page
   takes the token from a `#token=<token>` fragment (then removes it from the address bar) or from
   the form it shows when the worker answers 401, keeps it in sessionStorage (this tab only, gone
   when the tab closes) and sends it with every API request. */
"use strict";

(() => {
  const POLL_MS = 5000;
  const NONE = "\u2014";
  const ALERT_LIMIT = 50;
  const TOTALS = ["received", "duplicates", "gaps", "lost_at_device", "late", "invalid", "devices", "offline",
    "alerts"];
  const TOTALS_BAD = new Set(["gaps", "lost_at_device", "offline"]);
  const TOTALS_WARN = new Set(["late", "invalid", "alerts"]);
  const COUNTS = ["received", "duplicates", "gaps", "lost_at_device", "late", "invalid"];
  const STATES = ["offline", "warning", "unknown", "ok"];
  const CHART_HEIGHT = 200;
  const X_PAD_S = 60; // a chart of one point (or of equal times) spans a window either side of it
  const TOKEN_KEY = "ferry.apiToken";
  const TOKEN_HASH = "#token=";

  let memoryToken = ""; // where the token lives when sessionStorage refuses it
  takeTokenFromHash();
  const view = { selected: decodeHash(), timer: null, chartDevice: null, charts: new Map() };

  // ---- the API token ------------------------------------------------------------------------

  class AuthError extends Error {}

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (err) {
      return "";
    }
  }

  function storeToken(value) {
    memoryToken = value;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (err) {
      // storage refused (a browser's policy): the token lasts until the page is left
    }
  }

  function token() {
    return storedToken() || memoryToken;
  }

  /* `#token=<token>`: keep it, and take it out of the address bar. */
  function takeTokenFromHash() {
    if (!location.hash.startsWith(TOKEN_HASH)) return false;
    let value = location.hash.slice(TOKEN_HASH.length);
    try {
      value = decodeURIComponent(value);
    } catch (err) {
      // not percent-encoded: taken as is
    }
    storeToken(value.trim());
    history.replaceState(null, "", location.pathname + location.search);
    return true;
  }

  function askForToken(refused) {
    const form = $("#token-form");
    form.hidden = false;
    $("#token-note").textContent = refused ? "token refused: " : "this worker needs its API token: ";
    document.body.dataset.state = "auth";
    setStatus(refused ? "the worker refused the API token" : "API token needed", true);
  }

  // ---- helpers ------------------------------------------------------------------------------

  function decodeHash() {
    try {
      return decodeURIComponent(location.hash.slice(1)) || null;
    } catch (err) {
      return null;
    }
  }

  function $(selector) {
    return document.querySelector(selector);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function present(value) {
    return value !== undefined && value !== null;
  }

  function fmtNum(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return NONE;
    return value.toLocaleString("en-US", { maximumFractionDigits: 2 });
  }

  function fmtText(value) {
    return present(value) && value !== "" ? String(value) : NONE;
  }

  function span(seconds) {
    if (seconds < 90) return `${seconds} s`;
    const minutes = seconds / 60;
    if (minutes < 90) return `${Math.round(minutes)} min`;
    const hours = minutes / 60;
    if (hours < 36) return `${Math.round(hours)} h`;
    return `${Math.round(hours / 24)} d`;
  }

  function ago(ms, now) {
    if (typeof ms !== "number" || !Number.isFinite(ms)) return NONE;
    const seconds = Math.round((now - ms) / 1000);
    if (seconds < 0) return `in ${span(-seconds)}`;
    if (seconds < 2) return "just now";
    return `${span(seconds)} ago`;
  }

  function isoTime(ms) {
    return typeof ms === "number" && Number.isFinite(ms) ? new Date(ms).toISOString() : null;
  }

  function path(obj, dotted) {
    let value = obj;
    for (const key of dotted.split(".")) {
      if (value === null || typeof value !== "object" || !Object.prototype.hasOwnProperty.call(value, key)) {
        return undefined;
      }
      value = value[key];
    }
    return value;
  }

  async function getJSON(url) {
    const headers = { Accept: "application/json" };
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const response = await fetch(url, { cache: "no-store", headers });
    if (response.status === 401) throw new AuthError(bearer ? "refused" : "needed");
    if (response.status === 404) return undefined; // not there (yet): rendered as "—"
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  function enc(part) {
    return encodeURIComponent(part);
  }

  function setStatus(text, error) {
    const node = $("#status");
    node.textContent = text;
    node.classList.toggle("error", Boolean(error));
  }

  function stateBadge(state, attrs) {
    const known = STATES.includes(state) ? state : "unknown";
    return el("span", { ...attrs, class: `state state-${present(state) ? known : "unknown"}` }, fmtText(state));
  }

  // ---- totals -------------------------------------------------------------------------------

  function renderTotals(accounting) {
    for (const key of TOTALS) {
      const node = document.querySelector(`.totals [data-field="${key}"]`);
      const value = accounting ? accounting[key] : undefined;
      node.textContent = fmtNum(value);
      const stat = node.parentElement;
      stat.classList.toggle("bad", TOTALS_BAD.has(key) && value > 0);
      stat.classList.toggle("warn", TOTALS_WARN.has(key) && value > 0);
    }
  }

  // ---- fleet table --------------------------------------------------------------------------

  function renderFleet(devices, now) {
    const body = $("#fleet-rows");
    const ids = Object.keys(devices || {}).sort();
    if (!ids.length) {
      body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 14 }, "no devices yet")));
      $("#fleet-summary").textContent = "";
      return;
    }
    const byState = new Map();
    const rows = ids.map((id) => {
      const numbers = devices[id] || {};
      const health = numbers.health && typeof numbers.health === "object" ? numbers.health : null;
      const state = health ? health.state : undefined;
      byState.set(state || NONE, (byState.get(state || NONE) || 0) + 1);
      const cell = (field, content, cls, extra) =>
        el("td", { "data-device": id, "data-field": field, class: cls, ...extra }, content);
      const healthValue = (key) => (health ? health[key] : undefined);
      const lastSeen = healthValue("last_seen_ms");
      const problems = healthValue("problems");
      const tr = el("tr", { "data-device": id, class: id === view.selected ? "selected" : null, title: id },
        el("td", {}, el("b", {}, id)),
        el("td", {}, stateBadge(state, {
          "data-device": id, "data-field": "state",
          title: health && health.offline_reason ? `offline: ${health.offline_reason}` : null,
        })),
        cell("last_seen_ms", ago(lastSeen, now), present(lastSeen) ? null : "dim",
          { "data-value": present(lastSeen) ? lastSeen : "", title: isoTime(lastSeen) }),
        cell("battery_mv", fmtNum(healthValue("battery_mv")), healthValue("battery_low") ? "num flag" : "num"),
        cell("rssi_dbm", fmtNum(healthValue("rssi_dbm")), healthValue("rssi_poor") ? "num flag" : "num"),
        cell("reboots_recent", fmtNum(healthValue("reboots_recent")),
          healthValue("reboot_loop") ? "num flag" : "num"),
        ...COUNTS.map((key) =>
          cell(key, fmtNum(numbers[key]), key !== "received" && numbers[key] > 0 ? "num nonzero" : "num")),
        cell("alerts", fmtNum(numbers.alerts), numbers.alerts > 0 ? "num nonzero" : "num"),
        cell("problems", Array.isArray(problems) && problems.length ? problems.join(", ") : NONE, "problems"),
      );
      return tr;
    });
    body.replaceChildren(...rows);
    const parts = [`${ids.length} device${ids.length === 1 ? "" : "s"}`];
    for (const state of [...STATES, NONE]) {
      if (byState.get(state)) parts.push(`${byState.get(state)} ${state === NONE ? "no health" : state}`);
    }
    $("#fleet-summary").textContent = parts.join(" · ");
  }

  function markSelected() {
    for (const tr of document.querySelectorAll("#fleet-rows tr[data-device]")) {
      tr.classList.toggle("selected", tr.dataset.device === view.selected);
    }
  }

  // ---- alerts -------------------------------------------------------------------------------

  function renderAlerts(data, now) {
    const body = $("#alert-rows");
    const alerts = data && Array.isArray(data.alerts) ? data.alerts : null;
    if (alerts === null) {
      body.replaceChildren(el("tr", { class: "empty" },
        el("td", { colspan: 6 }, data === undefined ? "this worker serves no /alerts yet" : "alerts unavailable")));
      return;
    }
    if (!alerts.length) {
      body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 6 }, "no alerts")));
      return;
    }
    body.replaceChildren(...alerts.flatMap((alert, index) => {
      const cell = (field, content, cls, extra) =>
        el("td", { "data-alert": index, "data-field": field, class: cls, ...extra }, content);
      const kind = `kind-${String(alert.kind).replace(/[^a-z0-9_-]/gi, "")}`;
      return [
        el("tr", { "data-device-link": alert.device, class: `alert ${kind}` },
          cell("ts_ms", ago(alert.ts_ms, now), null, { "data-value": present(alert.ts_ms) ? alert.ts_ms : "",
            title: isoTime(alert.ts_ms) }),
          cell("device", fmtText(alert.device)),
          cell("kind", fmtText(alert.kind), "kind"),
          cell("metric", fmtText(alert.metric)),
          cell("value", fmtNum(alert.value), "num"),
          cell("score", fmtNum(alert.score), "num"),
        ),
        el("tr", { "data-device-link": alert.device, class: "reason" },
          cell("reason", fmtText(alert.reason), "reason", { colspan: 6 })),
      ];
    }));
  }

  // ---- pipeline -----------------------------------------------------------------------------

  const STAGES = [
    ["devices", "devices made", "readings up to each boot's newest seq (received + gaps)"],
    ["gateway", "gateways received", "PUBLISH packets, every topic, since each gateway started"],
    ["kafka", "Kafka acknowledged", "records, every topic, since each gateway started"],
    ["worker", "worker counted", "readings, each (device, boot, seq) once"],
  ];
  const STAGE_EXTRAS = {
    devices: [["lost", "lost at device"]],
    gateway: [["waiting", "waiting for Kafka"]],
    kafka: [["waiting", "waiting for the worker (lag)"]],
    worker: [["duplicates", "duplicates removed"], ["invalid", "invalid"]],
  };
  const GATEWAY_FIELDS = [["connections", "num"], ["received", "num"], ["unacked", "num"], ["spooled", "num"],
    ["oldest_age_s", "seconds"], ["kafka_connected", "link"], ["acked", "num"], ["deadlettered", "num"],
    ["rejected", "num"], ["free_disk_bytes", "bytes"]];

  function fmtBytes(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return NONE;
    const units = ["B", "KB", "MB", "GB", "TB"];
    let n = value, unit = 0;
    while (n >= 1000 && unit < units.length - 1) {
      n /= 1000;
      unit += 1;
    }
    return `${n.toLocaleString("en-US", { maximumFractionDigits: unit ? 1 : 0 })} ${units[unit]}`;
  }

  /* A gateway figure as text, and its raw value for data-value where the text is not the number. */
  function gatewayFigure(value, kind) {
    const raw = present(value) ? String(value) : "";
    if (kind === "link") return [present(value) ? (value ? "up" : "down") : NONE, { "data-value": raw }];
    if (kind === "bytes") return [fmtBytes(value), { "data-value": raw }];
    if (kind === "seconds") return [present(value) ? `${fmtNum(value)} s` : NONE, { "data-value": raw }];
    return [fmtNum(value), {}];
  }

  function renderPath(path) {
    const byStage = new Map((Array.isArray(path) ? path : []).map((entry) => [entry.stage, entry]));
    $("#pipeline-path").replaceChildren(...STAGES.map(([stage, label, note]) => {
      const entry = byStage.get(stage) || {};
      const hook = (field, text) => el("b", { "data-pipeline": "path", "data-key": stage, "data-field": field }, text);
      const extras = (STAGE_EXTRAS[stage] || []).map(([field, name]) =>
        el("small", {}, `${name} `, hook(field, fmtNum(entry[field]))));
      return el("li", { class: "stage", title: note }, el("span", { class: "label" }, label),
        hook("count", fmtNum(entry.count)), ...extras);
    }));
  }

  function renderGateways(gateways) {
    const body = $("#gateway-rows");
    if (!gateways.length) {
      body.replaceChildren(el("tr", { class: "empty" },
        el("td", { colspan: 12 }, "no gateways configured (server.gateways)")));
      return;
    }
    body.replaceChildren(...gateways.map((g) => {
      const figures = g.figures || {};
      const cell = (field, text, cls, extra) =>
        el("td", { "data-pipeline": "gateway", "data-key": g.url, "data-field": field, class: cls, ...extra }, text);
      return el("tr", {},
        el("td", {}, el("b", {}, g.url)),
        cell("up", g.up ? "up" : `down: ${fmtText(g.error)}`, g.up ? "up" : "down", { "data-value": String(g.up) }),
        ...GATEWAY_FIELDS.map(([field, kind]) => {
          const [text, extra] = gatewayFigure(figures[field], kind);
          const flagged = (field === "kafka_connected" && figures[field] === false) ||
            (field === "deadlettered" || field === "rejected") && figures[field] > 0;
          return cell(field, text, kind === "link" ? (flagged ? "flag" : null) : (flagged ? "num nonzero" : "num"),
            extra);
        }));
    }));
  }

  function renderLag(workers) {
    const rows = [];
    for (const w of workers) {
      if (w.error) {
        rows.push(el("tr", {}, el("td", {}, w.url),
          el("td", { colspan: 2, class: "down", "data-pipeline": "worker", "data-key": w.url, "data-field": "error" },
            w.error)));
        continue;
      }
      for (const entry of w.lag || []) {
        rows.push(el("tr", {}, el("td", {}, w.url), el("td", {}, `${entry.topic} / ${entry.partition}`),
          el("td", { "data-pipeline": "lag", "data-key": `${w.url} ${entry.topic} ${entry.partition}`,
            "data-field": "lag", class: entry.lag > 0 ? "num nonzero" : "num" }, fmtNum(entry.lag))));
      }
    }
    $("#lag-rows").replaceChildren(...(rows.length ? rows :
      [el("tr", { class: "empty" }, el("td", { colspan: 3 }, "no lag known yet"))]));
  }

  /* Sample time on the device -> counted by a worker, over every worker's histogram (clock-synced
     readings); the percentiles are interpolated within the histogram's buckets. */
  function renderLatency(latency) {
    const value = (field) => (latency && typeof latency === "object" ? latency[field] : undefined);
    const hook = (field, text) => el("b", { "data-pipeline": "latency", "data-key": "fleet", "data-field": field,
      "data-value": present(value(field)) ? String(value(field)) : "" }, text);
    const seconds = (field) => hook(field, present(value(field)) ? `${fmtNum(value(field))} s` : NONE);
    $("#pipeline-latency").replaceChildren(
      el("span", { class: "label" }, "end-to-end latency, device sample → counted"),
      "p50 ", seconds("p50_s"), " · p95 ", seconds("p95_s"), " · p99 ", seconds("p99_s"),
      el("small", {}, "over ", hook("readings", fmtNum(value("readings"))), " clock-synced readings"));
  }

  function renderPipeline(data) {
    if (!data || typeof data !== "object") {
      const note = data === undefined ? "this worker serves no /pipeline yet" : "pipeline unavailable";
      $("#pipeline-note").textContent = note;
      renderPath([]);
      renderLatency(null);
      $("#gateway-rows").replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 12 }, note)));
      renderLag([]);
      return;
    }
    const gateways = Array.isArray(data.gateways) ? data.gateways : [];
    const workers = Array.isArray(data.workers) ? data.workers : [];
    $("#pipeline-note").textContent = `device → gateway → Kafka → worker · ${gateways.length} gateway` +
      `${gateways.length === 1 ? "" : "s"}, ${workers.length} worker${workers.length === 1 ? "" : "s"}` +
      (data.complete === false ? " · incomplete: a gateway or worker did not answer" : "");
    renderPath(data.path);
    renderLatency(data.latency);
    renderGateways(gateways);
    renderLag(workers);
  }

  // ---- device panel -------------------------------------------------------------------------

  const FACTS = [
    ["firmware", "status.fw"], ["update", "status.ota.state"], ["update version", "status.ota.ver"],
    ["last update", "status.ota.last"], ["boot", "last.boot"], ["last seq", "last.seq"],
    ["last reading", "last.ts_ms", "time"], ["reset", "status.reset"],
    ["outbox dropped", "status.outbox_dropped", "num"], ["received", "received", "num"],
    ["duplicates", "duplicates", "num"], ["gaps", "gaps", "num"], ["lost at device", "lost_at_device", "num"],
    ["battery mV", "health.battery_mv", "num"], ["RSSI dBm", "health.rssi_dbm", "num"],
    ["reboots", "health.reboots_recent", "num"],
  ];

  function openGaps(boots) {
    const parts = [];
    for (const [boot, info] of Object.entries(boots || {})) {
      for (const [first, last] of (info && info.gaps) || []) {
        parts.push(`boot ${boot}: ${first === last ? first : `${first}–${last}`}`);
      }
    }
    return parts.length ? parts.join(", ") : null;
  }

  function renderDeviceFacts(id, detail, now) {
    $("#device-title").textContent = id;
    const health = detail ? detail.health : undefined;
    $("#device-state").replaceChildren(stateBadge(health ? health.state : undefined,
      { "data-panel": id, "data-field": "health.state" }));
    const facts = $("#device-facts");
    if (!detail) {
      facts.replaceChildren(el("div", {}, el("dt", {}, "not found on this worker")));
      return;
    }
    const items = FACTS.map(([label, field, kind]) => {
      const value = path(detail, field);
      const attrs = { "data-panel": id, "data-field": field };
      let text;
      if (kind === "time") {
        text = ago(value, now);
        Object.assign(attrs, { "data-value": present(value) ? value : "", title: isoTime(value) });
      } else {
        text = kind === "num" ? fmtNum(value) : fmtText(value);
      }
      return el("div", {}, el("dt", {}, label), el("dd", attrs, text));
    });
    const problems = health && Array.isArray(health.problems) && health.problems.length ? health.problems : null;
    items.push(el("div", {}, el("dt", {}, "problems"),
      el("dd", { "data-panel": id, "data-field": "health.problems" }, problems ? problems.join(", ") : NONE)));
    const gaps = openGaps(detail.boots);
    if (gaps) items.push(el("div", {}, el("dt", {}, "open gaps"), el("dd", {}, gaps)));
    facts.replaceChildren(...items);
  }

  function destroyCharts() {
    for (const chart of view.charts.values()) {
      if (chart.plot) chart.plot.destroy();
    }
    view.charts.clear();
  }

  function chartData(windows) {
    const xs = [], mean = [], min = [], max = [];
    for (const w of windows) {
      xs.push(w.start_ms / 1000);
      mean.push(w.mean);
      min.push(w.min);
      max.push(w.max);
    }
    return [xs, mean, min, max];
  }

  /* The time axis' range: the data's, except that one point (or points at one time) gets a window
     either side. uPlot (1.6.32) widens such a range itself before asking this, to
     `min + 86400 / ms`, which with times in seconds (ms = 1e-3) is 1,000 days: so the data decide. */
  function timeRange(u, min, max) {
    const xs = u.data && u.data[0];
    if (xs && xs.length) {
      const first = xs[0], last = xs[xs.length - 1]; // windows come sorted by start
      if (Number.isFinite(first) && Number.isFinite(last) && last - first < 1) {
        return [first - X_PAD_S, last + X_PAD_S];
      }
    }
    return [min, max];
  }

  function makeChart(id, metric, box) {
    const stat = (field) => el("b", { "data-panel": id, "data-metric": metric, "data-field": field }, NONE);
    const stats = { mean: stat("mean"), min: stat("min"), max: stat("max"), count: stat("count") };
    const title = el("h3", {}, el("span", {}, metric), el("small", { class: "stats" },
      "last closed minute: mean ", stats.mean, " · min ", stats.min, " · max ", stats.max,
      " · n ", stats.count));
    const windowsNote = el("small", { class: "windows" });
    const plotBox = el("div", { class: "plot" });
    const card = el("div", { class: "chart", "data-chart": metric }, title, plotBox, windowsNote);
    box.append(card);
    const chart = { stats, plotBox, windowsNote, plot: null };
    if (typeof window.uPlot !== "function") {
      plotBox.replaceChildren(el("p", { class: "nochart" }, "chart library not installed: run make install"));
      return chart;
    }
    const band = "rgba(37, 99, 235, 0.35)";
    chart.plot = new window.uPlot({
      width: Math.max(plotBox.clientWidth, 300),
      height: CHART_HEIGHT,
      scales: { x: { time: true, range: timeRange } },
      hooks: {
        setScale: [(u, key) => {
          if (key !== "x") return;
          card.dataset.xMin = String(u.scales.x.min);
          card.dataset.xMax = String(u.scales.x.max);
        }],
      },
      series: [
        {},
        { label: "mean", stroke: "#2563eb", width: 2, points: { show: true, size: 4 } },
        { label: "min", stroke: band, width: 1, points: { show: false } },
        { label: "max", stroke: band, width: 1, points: { show: false } },
      ],
      bands: [{ series: [3, 2], fill: "rgba(37, 99, 235, 0.12)" }],
      axes: [{}, { size: 52 }],
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
    }, [[], [], [], []], plotBox);
    return chart;
  }

  function renderCharts(id, metrics, seriesList) {
    const box = $("#charts");
    const same = view.chartDevice === id && metrics.length === view.charts.size &&
      metrics.every((m) => view.charts.has(m));
    if (!same) {
      destroyCharts();
      box.replaceChildren();
      view.chartDevice = id;
      if (!metrics.length) box.append(el("p", { class: "hint" }, "no metrics yet"));
      for (const metric of metrics) view.charts.set(metric, makeChart(id, metric, box));
    }
    metrics.forEach((metric, i) => {
      const chart = view.charts.get(metric);
      const series = seriesList[i];
      const windows = series && Array.isArray(series["1m"]) ? series["1m"] : [];
      const closed = windows.filter((w) => w.closed);
      const newest = closed.length ? closed[closed.length - 1] : null;
      for (const [field, node] of Object.entries(chart.stats)) {
        node.textContent = fmtNum(newest ? newest[field] : undefined);
      }
      chart.windowsNote.textContent =
        `1-minute windows: ${closed.length} closed, ${windows.length - closed.length} open (mean, min–max band)`;
      if (chart.plot) chart.plot.setData(chartData(windows));
    });
  }

  async function refreshDevice(id, now) {
    const detail = await getJSON(`/devices/${enc(id)}`);
    const metrics = detail && Array.isArray(detail.metrics) ? detail.metrics : [];
    const seriesList = await Promise.all(metrics.map((metric) =>
      getJSON(`/devices/${enc(id)}/series/${enc(metric)}`).catch(() => undefined)));
    if (id !== view.selected) return; // the operator picked another device meanwhile
    renderDeviceFacts(id, detail, now);
    renderCharts(id, metrics, seriesList);
  }

  function select(id) {
    if (!id || id === view.selected) return;
    view.selected = id;
    history.replaceState(null, "", `#${enc(id)}`);
    markSelected();
    refreshDevice(id, Date.now()).catch((err) => setStatus(`device ${id}: ${err.message}`, true));
  }

  // ---- the poll loop ------------------------------------------------------------------------

  async function refresh() {
    clearTimeout(view.timer);
    try {
      const optional = (err) => {
        if (err instanceof AuthError) throw err;
        return null;
      };
      const [accounting, devices, alerts, pipeline] = await Promise.all([
        getJSON("/accounting"),
        getJSON("/devices"),
        getJSON(`/alerts?limit=${ALERT_LIMIT}`).catch(optional),
        getJSON("/pipeline").catch(optional),
      ]);
      const ids = Object.keys(devices || {}).sort();
      if (ids.length && !ids.includes(view.selected)) view.selected = ids[0];
      const now = Date.now();
      renderTotals(accounting);
      renderFleet(devices, now);
      renderAlerts(alerts, now);
      renderPipeline(pipeline);
      if (view.selected) await refreshDevice(view.selected, now);
      setStatus(`updated ${new Date(now).toLocaleTimeString("en-GB")} · every ${POLL_MS / 1000} s`);
      $("#token-form").hidden = true;
      document.body.dataset.state = "ready";
    } catch (err) {
      if (err instanceof AuthError) {
        askForToken(err.message === "refused");
        return; // no polling until a token is given
      }
      setStatus(`worker unreachable: ${err.message}`, true);
      document.body.dataset.state = "error";
    }
    view.timer = setTimeout(refresh, POLL_MS);
  }

  $("#fleet-rows").addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-device]");
    if (tr) select(tr.dataset.device);
  });
  $("#alert-rows").addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-device-link]");
    if (tr) select(tr.dataset.deviceLink);
  });
  window.addEventListener("hashchange", () => {
    if (takeTokenFromHash()) refresh();
    else select(decodeHash());
  });
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#token-input");
    storeToken(input.value.trim());
    input.value = "";
    refresh();
  });
  window.addEventListener("resize", () => {
    for (const chart of view.charts.values()) {
      if (chart.plot) chart.plot.setSize({ width: Math.max(chart.plotBox.clientWidth, 300), height: CHART_HEIGHT });
    }
  });
  refresh();
})();

// The web console: a client of the public HTTP API, with nothing private.
// Everything it shows comes from the routes the CLI and curl use, through
// /lib/cairn.js, which moves to another node when this one dies.

import { Cairn, ApiError, login, saveLogin, logout } from "/lib/cairn.js";

const $ = (selector) => document.querySelector(selector);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
};
const errorText = (error) => (error instanceof ApiError && error.code ? `${error.code}: ${error.message}` : String(error.message || error));

let session = await login();
let cairn = new Cairn({ token: session.token });
let page = null;
let lastCluster = null;

// ---- Pages -------------------------------------------------------------

const pages = {
  login: { show() {} },
  cluster: { show: showCluster },
  tables: { show: refreshTables },
  data: { show: showData },
  changes: { show: showChanges },
  performance: { show: () => drawChart() },
  desired: { show: showDesired },
};

function route() {
  let name = (location.hash.match(/^#\/(\w+)/) || [])[1] || "cluster";
  if (!session.token) name = "login";
  if (!pages[name]) name = "cluster";
  page = name;
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== "page-" + name;
  for (const link of document.querySelectorAll("nav a[data-page]")) link.classList.toggle("active", link.dataset.page === name);
  pages[name].show();
}

window.addEventListener("hashchange", route);

// ---- Connection ----------------------------------------------------------

// Nodes that stopped answering this page, by URL: when, and when they
// answered again. The badge says so for as long as the page lives.
const outages = new Map();

cairn.onNodeChange((_, down) => {
  for (const url of down) if (!outages.has(url) || outages.get(url).back) outages.set(url, { since: new Date(), back: null });
  showConnection();
});

function showConnection(failure) {
  const badge = $("#connection");
  if (failure) {
    badge.textContent = `no node answers: ${failure}`;
    badge.className = "badge bad";
    return;
  }
  const notes = [...outages].map(([url, outage]) => {
    const host = new URL(url).host;
    const since = outage.since.toLocaleTimeString();
    return outage.back ? `${host} stopped answering at ${since}, answers again since ${outage.back.toLocaleTimeString()}` : `${host} stopped answering at ${since}`;
  });
  const down = [...outages.values()].some((outage) => !outage.back);
  const latest = Math.max(0, ...[...outages.values()].map((outage) => outage.since.getTime()));
  if (latest) badge.dataset.outageAtMs = String(latest);
  badge.textContent = [`${down || notes.length ? "via" : "connected to"} ${new URL(cairn.node).host}`, ...notes].join(" · ");
  badge.className = "badge " + (down ? "warn" : "ok");
}

// ---- Login ---------------------------------------------------------------

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const candidate = {
    token: $("#login-token").value.trim(),
    cloud: $("#login-cloud").value.trim() || null,
    cloudToken: $("#login-cloud-token").value.trim() || null,
  };
  const probe = new Cairn({ token: candidate.token });
  try {
    await probe.call("GET", "/v1/tables?read=local");
  } catch (error) {
    $("#login-error").textContent = errorText(error);
    return;
  }
  saveLogin(candidate);
  location.reload();
});

$("#logout").addEventListener("click", () => {
  logout();
  location.hash = "";
  location.reload();
});

// ---- Cluster ---------------------------------------------------------------

const health = new Map();
const observedHistory = [];

async function pollCluster() {
  if (!session.token) return;
  try {
    const view = await cairn.refreshNodes();
    lastCluster = view;
    showConnection();
    noteReconciliation(view.reconciliation);
    if (page === "cluster") renderCluster(view);
    if (page === "desired") renderDesiredStatus(view.reconciliation);
  } catch (error) {
    showConnection(errorText(error));
    if (error.status === 401) {
      logout();
      session = { token: null };
      route();
    }
  }
}

async function pollHealth() {
  if (!session.token || !lastCluster) return;
  const scheme = new URL(cairn.node).protocol;
  await Promise.all(
    lastCluster.nodes.map(async (node) => {
      if (!node.address) return;
      const url = `${scheme}//${node.address}/v1/health`;
      try {
        const response = await fetch(url, { signal: AbortSignal.timeout(1500) });
        const body = await response.json().catch(() => ({}));
        health.set(node.id, response.ok ? "ok" : (body.error && body.error.code) || String(response.status));
        // A node that answers again is no longer counted out.
        const base = `${scheme}//${node.address}`;
        if (response.ok) {
          cairn.down.delete(base);
          const outage = outages.get(base);
          if (outage && !outage.back) outage.back = new Date();
        }
      } catch (_) {
        health.set(node.id, "unreachable");
      }
    }),
  );
}

function noteReconciliation(report) {
  if (!report || !report.state) return;
  const last = observedHistory[observedHistory.length - 1];
  const key = `${report.state}|${report.desired_id}|${report.step || ""}|${report.message}`;
  if (last && last.key === key) return;
  observedHistory.push({ key, at: new Date(), report });
  if (observedHistory.length > 50) observedHistory.shift();
}

function showCluster() {
  if (lastCluster) renderCluster(lastCluster);
  pollCluster();
}

function renderCluster(view) {
  $("#cluster-leader").textContent = view.leader == null ? "none" : `node ${view.leader}`;
  $("#cluster-config").textContent = `${view.nodes.length} node${view.nodes.length === 1 ? "" : "s"}, configuration ${view.configuration_id}`;
  const report = view.reconciliation || {};
  $("#reconcile-state").textContent = report.state || "no report yet";
  $("#reconcile-state").className = "value state-" + (report.state || "none");
  $("#reconcile-message").textContent = report.state
    ? `desired ${report.desired_id}${report.pending_id ? ` (desired ${report.pending_id} waiting)` : ""}${report.step ? ` · step: ${report.step}` : ""} · ${report.message || ""}${report.leader_host ? ` · leader agent on ${report.leader_host}` : ""}`
    : "";
  const body = $("#nodes tbody");
  body.replaceChildren(
    ...view.nodes.map((node) =>
      el(
        "tr",
        { "data-node": node.id, class: node.role === "leader" ? "leader" : "" },
        el("td", {}, node.id),
        el("td", {}, node.address || "–"),
        el("td", {}, node.zone || "–"),
        el("td", { class: "role" }, node.role || "–"),
        el("td", { class: "health " + (health.get(node.id) === "ok" ? "ok" : "bad") }, health.get(node.id) || "…"),
        el("td", {}, node.version || "–"),
        el("td", { class: "num" }, node.applied_index ?? "–"),
        el("td", { class: "num" }, node.decided_index ?? "–"),
        el("td", { class: node.reachable ? "ok" : "bad" }, node.reachable ? "yes" : "no"),
      ),
    ),
  );
  renderHistory();
}

async function renderHistory() {
  const list = $("#reconcile-history");
  let entries = observedHistory.map((entry) => ({ at: entry.at, report: entry.report }));
  if (session.cloud && session.cloudToken) {
    try {
      const status = await cloudCall("GET", "/v1/status");
      entries = status.history.map((t) => ({ at: new Date(t.at_ms), report: t.report }));
    } catch (_) {
      // The cloud's history is a bonus; what this page saw is shown instead.
    }
  }
  list.replaceChildren(
    ...entries
      .slice(-20)
      .reverse()
      .map((entry) =>
        el("li", {}, el("time", {}, entry.at.toLocaleTimeString()), " ", el("b", { class: "state-" + entry.report.state }, entry.report.state), ` desired ${entry.report.desired_id}: ${entry.report.message || entry.report.step || ""}`),
      ),
  );
}

// ---- Tables ----------------------------------------------------------------

async function refreshTables() {
  try {
    const answer = await cairn.call("GET", "/v1/tables?count=true");
    $("#tables-error").textContent = "";
    const body = $("#tables tbody");
    body.replaceChildren(
      ...answer.tables.map((name) => {
        const drop = el("button", { type: "button", class: "danger small-button" }, "Drop");
        drop.addEventListener("click", () => confirmDrop(drop, name));
        const browse = el("a", { href: `#/data/${encodeURIComponent(name)}` }, name);
        return el("tr", { "data-table": name }, el("td", {}, browse), el("td", { class: "num count" }, answer.counts ? answer.counts[name] : "–"), el("td", {}, drop));
      }),
    );
    fillTableSelects(answer.tables);
  } catch (error) {
    $("#tables-error").textContent = errorText(error);
  }
}

function confirmDrop(button, name) {
  if (button.dataset.armed) {
    cairn
      .call("DELETE", `/v1/tables/${encodeURIComponent(name)}`)
      .then(refreshTables)
      .catch((error) => ($("#tables-error").textContent = errorText(error)));
    return;
  }
  button.dataset.armed = "1";
  button.textContent = `Drop ${name} and its documents?`;
  setTimeout(() => {
    delete button.dataset.armed;
    button.textContent = "Drop";
  }, 4000);
}

$("#create-table-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("#new-table-name").value.trim();
  try {
    await cairn.call("PUT", `/v1/tables/${encodeURIComponent(name)}`);
    $("#new-table-name").value = "";
    $("#tables-error").textContent = "";
    await refreshTables();
  } catch (error) {
    $("#tables-error").textContent = errorText(error);
  }
});

function fillTableSelects(tables) {
  for (const select of [$("#data-table"), $("#changes-table")]) {
    const chosen = select.value;
    select.replaceChildren(...tables.map((name) => el("option", { value: name }, name)));
    if (tables.includes(chosen)) select.value = chosen;
  }
}

// ---- Data explorer -------------------------------------------------------

const data = { table: null, pages: [null], page: 0, next: null, selected: null };

async function showData() {
  const wanted = decodeURIComponent((location.hash.match(/^#\/data\/(.+)$/) || [])[1] || "");
  try {
    const answer = await cairn.call("GET", "/v1/tables");
    fillTableSelects(answer.tables);
    if (wanted && answer.tables.includes(wanted)) $("#data-table").value = wanted;
  } catch (error) {
    $("#doc-error").textContent = errorText(error);
  }
  if ($("#data-table").value !== data.table) {
    data.table = $("#data-table").value || null;
    data.pages = [null];
    data.page = 0;
  }
  await loadDocs();
}

$("#data-table").addEventListener("change", () => {
  location.hash = `#/data/${encodeURIComponent($("#data-table").value)}`;
});

async function loadDocs() {
  const body = $("#docs tbody");
  if (!data.table) {
    body.replaceChildren(el("tr", {}, el("td", { colSpan: 2 }, "No tables yet: create one on the Tables page.")));
    return;
  }
  const after = data.pages[data.page];
  const query = new URLSearchParams({ limit: "20" });
  if (after) query.set("after", after);
  try {
    const answer = await cairn.call("GET", `/v1/tables/${encodeURIComponent(data.table)}/docs?${query}`);
    data.next = answer.next;
    body.replaceChildren(
      ...answer.docs.map((doc) => {
        const row = el("tr", { "data-id": doc.id }, el("td", { class: "id" }, doc.id), el("td", { class: "json" }, JSON.stringify(doc)));
        row.addEventListener("click", () => selectDoc(doc));
        return row;
      }),
    );
    if (!answer.docs.length) body.replaceChildren(el("tr", {}, el("td", { colSpan: 2 }, "This table is empty.")));
    $("#data-position").textContent = `page ${data.page + 1}`;
    $("#data-prev").disabled = data.page === 0;
    $("#data-next").disabled = !data.next;
  } catch (error) {
    $("#doc-error").textContent = errorText(error);
  }
}

$("#data-next").addEventListener("click", () => {
  if (!data.next) return;
  data.pages[data.page + 1] = data.next;
  data.page++;
  loadDocs();
});
$("#data-prev").addEventListener("click", () => {
  if (data.page === 0) return;
  data.page--;
  loadDocs();
});

function selectDoc(doc) {
  data.selected = doc ? doc.id : null;
  $("#doc-title").textContent = doc ? `Document ${doc.id}` : "New document";
  $("#doc-editor").value = doc ? JSON.stringify(doc, null, 2) : '{\n  "name": "example"\n}';
  $("#insert-doc").hidden = !!doc;
  $("#save-doc").hidden = !doc;
  $("#delete-doc").hidden = !doc;
  $("#doc-error").textContent = "";
  $("#doc-info").textContent = "";
}

function editorJson() {
  try {
    return JSON.parse($("#doc-editor").value);
  } catch (error) {
    throw new ApiError(0, "bad_json", `the document is not JSON: ${error.message}`);
  }
}

async function docAction(action) {
  $("#doc-error").textContent = "";
  try {
    await action();
    await loadDocs();
  } catch (error) {
    $("#doc-error").textContent = errorText(error);
  }
}

$("#insert-doc").addEventListener("click", () =>
  docAction(async () => {
    const answer = await cairn.call("POST", `/v1/tables/${encodeURIComponent(data.table)}/docs`, editorJson());
    const ids = answer.ids || (answer.id ? [answer.id] : []);
    $("#doc-info").textContent = `inserted ${ids.join(", ")} at index ${answer.index}`;
  }),
);
$("#save-doc").addEventListener("click", () =>
  docAction(async () => {
    const answer = await cairn.call("PUT", `/v1/tables/${encodeURIComponent(data.table)}/docs/${encodeURIComponent(data.selected)}`, editorJson());
    $("#doc-info").textContent = `saved at index ${answer.index}`;
  }),
);
$("#delete-doc").addEventListener("click", () =>
  docAction(async () => {
    const answer = await cairn.call("DELETE", `/v1/tables/${encodeURIComponent(data.table)}/docs/${encodeURIComponent(data.selected)}`);
    selectDoc(null);
    $("#doc-info").textContent = `deleted at index ${answer.index}`;
  }),
);
$("#new-doc").addEventListener("click", () => selectDoc(null));

// ---- Live changes --------------------------------------------------------

let changesFeed = null;

async function showChanges() {
  try {
    const answer = await cairn.call("GET", "/v1/tables");
    fillTableSelects(answer.tables);
  } catch (error) {
    $("#changes-status").textContent = errorText(error);
  }
}

$("#changes-start").addEventListener("click", () => {
  if (changesFeed) changesFeed.close();
  const table = $("#changes-table").value;
  if (!table) return;
  $("#changes-list").replaceChildren();
  changesFeed = cairn.feed(`/v1/tables/${encodeURIComponent(table)}/changes`, {
    params: { read: "local" },
    onStatus: (text) => ($("#changes-status").textContent = text),
    onExpired: () => ($("#changes-status").textContent = "the history moved past this feed: starting from now"),
    onError: (error) => ($("#changes-status").textContent = errorText(error)),
    onEvent: (event) => {
      const list = $("#changes-list");
      const values = event.type === "drop" ? "table dropped" : JSON.stringify(event.new_val ?? event.old_val);
      list.prepend(
        el("li", { "data-id": event.id ?? "", class: "type-" + event.type }, el("span", { class: "cursor" }, event.cursor), el("b", {}, event.type), " ", el("span", { class: "id" }, event.id ?? ""), " ", el("code", {}, values)),
      );
      while (list.children.length > 200) list.lastChild.remove();
    },
  });
});
$("#changes-stop").addEventListener("click", () => {
  if (changesFeed) changesFeed.close();
  changesFeed = null;
  $("#changes-status").textContent = "stopped";
});

// ---- Performance -----------------------------------------------------------

const samples = [];
const previous = new Map();
const WINDOW = 150;

// Sums a node's /metrics into counters of data reads and writes and the
// latency histogram of data requests.
function parseMetrics(text) {
  const totals = { reads: 0, writes: 0, buckets: new Map() };
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line) continue;
    // Route labels hold braces ("/v1/tables/{table}"): the labels run to the
    // last "}" of the line.
    const match = line.match(/^(\w+)\{(.*)\}\s+(\S+)/);
    if (!match) continue;
    const [, name, labelText, valueText] = match;
    const labels = Object.fromEntries([...labelText.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    const data = labels.route && (labels.route.startsWith("/v1/tables/{table}/docs") || labels.route.startsWith("/v1/kv/"));
    if (!data) continue;
    const value = Number(valueText);
    if (name === "cairn_http_requests_total") {
      if (labels.method === "GET") totals.reads += value;
      else if (["POST", "PUT", "PATCH", "DELETE"].includes(labels.method)) totals.writes += value;
    } else if (name === "cairn_http_request_duration_seconds_bucket") {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      totals.buckets.set(le, (totals.buckets.get(le) || 0) + value);
    }
  }
  return totals;
}

async function pollMetrics() {
  if (!session.token || !lastCluster) return;
  const scheme = new URL(cairn.node).protocol;
  const now = Date.now();
  let reads = 0;
  let writes = 0;
  const buckets = new Map();
  let seconds = 0;
  await Promise.all(
    lastCluster.nodes.map(async (node) => {
      if (!node.address) return;
      try {
        const response = await fetch(`${scheme}//${node.address}/metrics`, { signal: AbortSignal.timeout(1500) });
        const totals = parseMetrics(await response.text());
        const before = previous.get(node.address);
        previous.set(node.address, { at: now, totals });
        if (!before || totals.reads < before.totals.reads || totals.writes < before.totals.writes) return;
        seconds = Math.max(seconds, (now - before.at) / 1000);
        reads += totals.reads - before.totals.reads;
        writes += totals.writes - before.totals.writes;
        for (const [le, count] of totals.buckets) buckets.set(le, (buckets.get(le) || 0) + count - (before.totals.buckets.get(le) || 0));
      } catch (_) {
        // A node that does not answer adds nothing to this sample.
      }
    }),
  );
  if (!seconds) return;
  const bounds = [...buckets.keys()].sort((a, b) => a - b);
  const total = buckets.get(Infinity) || 0;
  let p99 = null;
  if (total > 0) {
    for (const le of bounds) {
      if (buckets.get(le) >= total * 0.99) {
        p99 = le;
        break;
      }
    }
  }
  samples.push({ at: now, reads: reads / seconds, writes: writes / seconds, p99 });
  while (samples.length > WINDOW) samples.shift();
  const last = samples[samples.length - 1];
  $("#perf-writes").textContent = last.writes.toFixed(1);
  $("#perf-reads").textContent = last.reads.toFixed(1);
  $("#perf-p99").textContent = last.p99 == null ? "–" : last.p99 === Infinity ? "> 13 s" : `≤ ${formatSeconds(last.p99)}`;
  if (page === "performance") drawChart();
}

function formatSeconds(s) {
  return s < 0.001 ? `${(s * 1e6).toFixed(0)} µs` : s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms` : `${s.toFixed(2)} s`;
}

function drawChart() {
  const canvas = $("#perf-chart");
  const ctx = canvas.getContext("2d");
  const width = canvas.width;
  const height = canvas.height;
  const pad = { left: 56, right: 64, top: 16, bottom: 28 };
  ctx.clearRect(0, 0, width, height);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#667";
  ctx.strokeStyle = "#dde";
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const rateMax = Math.max(1, ...samples.map((s) => Math.max(s.reads, s.writes))) * 1.1;
  const latencies = samples.map((s) => s.p99).filter((v) => v != null && v !== Infinity);
  const latMax = Math.max(0.001, ...latencies) * 1.1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.top + plotH - (plotH * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.left, y);
    ctx.lineTo(width - pad.right, y);
    ctx.stroke();
    ctx.fillText(((rateMax * i) / 4).toFixed(0), 8, y + 4);
    ctx.fillText(formatSeconds((latMax * i) / 4), width - pad.right + 6, y + 4);
  }
  ctx.fillText("requests/s", 8, height - 8);
  ctx.fillText("p99", width - pad.right + 6, height - 8);
  ctx.fillText("last 5 minutes", pad.left + plotW / 2 - 40, height - 8);
  const x = (i) => pad.left + (plotW * (i + WINDOW - samples.length)) / (WINDOW - 1);
  const line = (color, value, max) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    samples.forEach((s, i) => {
      const v = value(s);
      if (v == null || v === Infinity) return;
      const y = pad.top + plotH - (plotH * v) / max;
      if (started) ctx.lineTo(x(i), y);
      else ctx.moveTo(x(i), y);
      started = true;
    });
    ctx.stroke();
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#dde";
  };
  const series = [
    ["writes/s", "#2b6cb0", (s) => s.writes, rateMax],
    ["reads/s", "#2f855a", (s) => s.reads, rateMax],
    ["p99 latency", "#c05621", (s) => s.p99, latMax],
  ];
  let legendX = pad.left + 8;
  for (const [name, color, value, max] of series) {
    line(color, value, max);
    ctx.fillStyle = color;
    ctx.fillRect(legendX, pad.top + 4, 14, 3);
    ctx.fillText(name, legendX + 18, pad.top + 10);
    legendX += ctx.measureText(name).width + 40;
  }
  ctx.fillStyle = "#667";
}

// ---- Desired state ---------------------------------------------------------

async function cloudCall(method, path, body) {
  if (!session.cloud) throw new ApiError(0, "no_cloud", "no cloud given at login: log in with the URL `cairn up` prints");
  let response;
  try {
    response = await fetch(session.cloud.replace(/\/$/, "") + path, {
      method,
      headers: session.cloudToken ? { Authorization: "Bearer " + session.cloudToken } : {},
      body,
      signal: AbortSignal.timeout(10000),
    });
  } catch (error) {
    throw new ApiError(0, "unreachable", `the cloud at ${session.cloud} did not answer: ${error.message}`);
  }
  const json = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (json && json.error) || {};
    throw new ApiError(response.status, error.code || "http_" + response.status, error.message || response.statusText, error.field);
  }
  return json;
}

let desiredCurrent = null;
// Whether the person has typed in the text since it was last loaded: a
// reload then leaves it alone (the Reload button does not).
let desiredEdited = false;
$("#desired-text").addEventListener("input", () => (desiredEdited = true));

async function showDesired() {
  $("#desired-cloud").textContent = session.cloud ? `Submitted to the cloud at ${session.cloud} (PUT /v1/desired), as \`cairn apply\` does.` : "No cloud was given at login: the accepted state is shown, but changes cannot be submitted.";
  await loadDesired();
  if (lastCluster) renderDesiredStatus(lastCluster.reconciliation);
}

async function loadDesired(force) {
  if (force === true) desiredEdited = false;
  try {
    const record = await cairn.call("GET", "/v1/system/control");
    const accepted = record && record.control && record.control.accepted;
    $("#desired-accepted-id").textContent = accepted ? `id ${accepted.id}, ${accepted.replicas} replicas` : "none yet";
    if (accepted) $("#replicas").value = String(accepted.replicas);
  } catch (error) {
    $("#desired-accepted-id").textContent = error.status === 404 ? "none yet" : errorText(error);
  }
  if (!session.cloud) return;
  try {
    desiredCurrent = await cloudCall("GET", "/v1/desired");
    if (!desiredEdited) $("#desired-text").value = desiredCurrent.text;
    $("#desired-error").textContent = "";
  } catch (error) {
    $("#desired-error").textContent = errorText(error);
  }
}

let following = null;

function renderDesiredStatus(report) {
  if (!report) return;
  $("#desired-state").textContent = report.state;
  $("#desired-state").className = "value state-" + report.state;
  $("#desired-message").textContent = `desired ${report.desired_id}${report.pending_id ? ` (desired ${report.pending_id} waiting)` : ""}: ${report.message || ""}`;
  if (following && report.desired_id >= following && report.state === "AT_DESIRED_STATE") {
    $("#desired-info").textContent = `desired state ${following} reached: AT_DESIRED_STATE`;
    following = null;
    loadDesired();
  } else if (following) {
    $("#desired-info").textContent = `following desired state ${following}: ${report.state}${report.step ? ", " + report.step : ""}`;
  }
}

// JSON with comments and trailing commas, as desired_state.jsonc is, to JSON.
function stripJsonc(text) {
  let out = "";
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (c === "\\") out += text[++i] ?? "";
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
      out += c;
    } else if (c === "/" && text[i + 1] === "/") {
      while (i < text.length && text[i] !== "\n") i++;
      out += "\n";
    } else if (c === "/" && text[i + 1] === "*") {
      i = text.indexOf("*/", i + 2);
      if (i < 0) break;
      i++;
    } else out += c;
  }
  return out.replace(/,(\s*[}\]])/g, "$1");
}

async function submitDesired(text) {
  $("#desired-error").textContent = "";
  $("#desired-info").textContent = "";
  try {
    const record = await cloudCall("PUT", "/v1/desired", text);
    following = record.id;
    $("#desired-info").textContent = `desired state ${record.id} submitted; following it…`;
    $("#desired-text").value = record.text;
    desiredEdited = false;
  } catch (error) {
    // The message names the field (error.field holds it for programs).
    $("#desired-error").textContent = error.message;
  }
}

$("#replicas-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const current = desiredCurrent || (await cloudCall("GET", "/v1/desired"));
    const state = JSON.parse(stripJsonc(current.text));
    state.id = current.id + 1;
    state.replicas = Number($("#replicas").value);
    await submitDesired(JSON.stringify(state, null, 2));
  } catch (error) {
    $("#desired-error").textContent = errorText(error);
  }
});
$("#submit-desired").addEventListener("click", () => submitDesired($("#desired-text").value));
$("#reload-desired").addEventListener("click", () => loadDesired(true));

// ---- Start -----------------------------------------------------------------

route();
if (session.error) {
  const where = session.token ? "#desired-error" : "#login-error";
  $(where).textContent = `the login link did not work: ${session.error.message}`;
}
if (session.token) {
  pollCluster().then(pollHealth);
  setInterval(pollCluster, 1000);
  setInterval(pollHealth, 2000);
  setInterval(pollMetrics, 2000);
}

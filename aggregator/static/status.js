// Tally status page: samples the aggregator's JSON API every INTERVAL_MS and renders it.
// No framework and no build step; served as is by the aggregator (aggregator/src/status.rs).
"use strict";

const INTERVAL_MS = 2000;
const WINDOW_MS = 5 * 60 * 1000;
const TOP_KEYS = 10;

// {t: ms, committed: total committed records} per successful /offsets read, and the
// records/s between consecutive samples as {t, rate}.
let last = null;
const rates = [];

// Sums are i64 and may exceed 2^53: keep unsafe integers exact as BigInt, using the source
// text JSON.parse hands the reviver (where the browser has it).
function parseExact(text) {
  return JSON.parse(text, (key, value, ctx) => {
    if (typeof value === "number" && !Number.isSafeInteger(value) && ctx
        && typeof ctx.source === "string" && /^-?\d+$/.test(ctx.source)) {
      return BigInt(ctx.source);
    }
    return value;
  });
}

// The read token (aggregator --read-token): asked for once when a read answers 401, kept in
// this tab's sessionStorage (gone when the tab closes; never in a cookie or the URL) and sent
// as `Authorization: Bearer` with every read.
const TOKEN_KEY = "tally-read-token";

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askForToken(wrong) {
  const form = document.getElementById("token-form");
  document.getElementById("token-wrong").hidden = !wrong;
  if (form.hidden) {
    form.hidden = false;
    document.getElementById("token").focus();
  }
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = "";
  e.target.hidden = true;
});

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store", headers: authHeaders() });
  if (r.status === 401) {
    askForToken(sessionStorage.getItem(TOKEN_KEY) !== null);
    throw new Error("reads need the read token");
  }
  const text = await r.text();
  return { status: r.status, body: r.ok ? parseExact(text) : null, why: r.ok ? "" : reason(text) };
}

// The message of the API's JSON error body (for example owner_not_shared: which partition, and
// the fix), so that the page says why a read was refused.
function reason(text) {
  try {
    const e = JSON.parse(text).error;
    return e ? `: ${e.code}: ${e.message}` : "";
  } catch {
    return "";
  }
}

function show(v) {
  return v === undefined || v === null ? "\u2013" : String(v);
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderPartitions(offsets) {
  const body = document.querySelector("#partitions tbody");
  body.replaceChildren();
  let committed = 0;
  for (const p of offsets.partitions || []) {
    const row = body.insertRow();
    row.dataset.partition = String(p.partition);
    cell(row, show(p.partition));
    cell(row, show(p.next_offset));
    cell(row, show(p.log_end));
    cell(row, show(p.lag), Number(p.lag) > 0 ? "lagging" : "");
    committed += Number(p.next_offset);
  }
  document.getElementById("committed-total").textContent = String(committed);
  document.getElementById("total-lag").textContent = show(offsets.total_lag);
  return committed;
}

function recordRate(now, committed) {
  if (last !== null && now > last.t) {
    // A smaller total means the database was replaced (rebuild): no rate for that step.
    const rate = Math.max(0, committed - last.committed) / ((now - last.t) / 1000);
    rates.push({ t: now, rate });
  }
  last = { t: now, committed };
  while (rates.length && rates[0].t < now - WINDOW_MS) rates.shift();
  const current = rates.length ? rates[rates.length - 1].rate : null;
  document.getElementById("rate").textContent =
    current === null ? "\u2013" : (Math.round(current * 10) / 10).toFixed(1);
  drawChart(now);
}

function drawChart(now) {
  const [x0, x1, y0, y1] = [0, 600, 118, 4];
  const max = Math.max(1, ...rates.map((r) => r.rate));
  const points = rates.map((r) => {
    const x = x1 - ((now - r.t) / WINDOW_MS) * (x1 - x0);
    const y = y0 - (r.rate / max) * (y0 - y1);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  document.getElementById("rate-line").setAttribute("points", points.join(" "));
  document.getElementById("chart-max").textContent = String(Math.ceil(max));
}

function renderRejected(res) {
  // 404: this aggregator has no /rejected endpoint.
  const el = document.getElementById("rejected");
  el.textContent = res.status === 200 && res.body ? show(res.body.count) : "n/a";
}

function renderTop(top) {
  const body = document.querySelector("#top tbody");
  body.replaceChildren();
  (top.keys || []).forEach((k, i) => {
    const row = body.insertRow();
    cell(row, String(i + 1));
    cell(row, k.key, "key");
    cell(row, show(k.sum));
  });
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const [offsets, rejected, top] = await Promise.all([
      getJson("offsets"), getJson("rejected"), getJson(`top?limit=${TOP_KEYS}`),
    ]);
    if (offsets.status !== 200) throw new Error(`GET /offsets answered ${offsets.status}${offsets.why}`);
    if (top.status !== 200) throw new Error(`GET /top answered ${top.status}${top.why}`);
    recordRate(performance.now(), renderPartitions(offsets.body));
    renderRejected(rejected);
    renderTop(top.body);
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    error.hidden = true;
  } catch (e) {
    error.textContent = `cannot read the aggregator: ${e.message}`;
    error.hidden = false;
  } finally {
    setTimeout(refresh, INTERVAL_MS);
  }
}

refresh();

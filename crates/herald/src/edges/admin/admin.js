// Herald admin console: polls /admin/api/overview every second, draws two small SVG charts, and
// drives the channel search, publish form, user connections and device list. No external code.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const HISTORY = 60;
const series = { publications: [], deliveries: [] };
let last = null;

const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "–" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, build) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const tr = document.createElement("tr");
    build(tr, item);
    body.appendChild(tr);
  }
}

async function api(path, body) {
  const init = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = CSRF;
    init.body = JSON.stringify(body);
  }
  const response = await fetch("/admin/api/" + path, init);
  if (response.status === 401) {
    location.href = "/admin";
    throw new Error("session ended");
  }
  const value = await response.json();
  if (value.error) throw new Error(value.error.message);
  return value;
}

function uptime(s) {
  if (s < 120) return s + " s";
  if (s < 7200) return Math.floor(s / 60) + " min";
  if (s < 172800) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
}

function draw(id, values) {
  const svg = $(id);
  const max = Math.max(1, ...values);
  const step = 300 / (HISTORY - 1);
  const offset = HISTORY - values.length;
  const points = values
    .map((v, i) => `${((offset + i) * step).toFixed(1)},${(78 - (v / max) * 70).toFixed(1)}`)
    .join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.replaceChildren(line);
  $(id + "-max").textContent = "(scale: " + rate(max) + ")";
}

function rate(value) {
  return value >= 100 ? Math.round(value).toString() : value.toFixed(1);
}

async function refresh() {
  let o;
  try {
    o = await api("overview");
  } catch (e) {
    $("status").textContent = "⚠ " + e.message;
    return;
  }
  $("status").textContent = "updated " + new Date().toLocaleTimeString();
  const t = o.totals;
  $("stat-nodes").textContent = t.nodes;
  $("stat-clients").textContent = t.clients;
  $("stat-users").textContent = t.users;
  $("stat-channels").textContent = t.channels;
  $("stat-subscriptions").textContent = t.subscriptions;
  const c = o.counters;
  if (last && c.time_ms > last.time_ms) {
    const seconds = (c.time_ms - last.time_ms) / 1000;
    for (const key of ["publications", "deliveries"]) {
      const perSecond = Math.max(0, c[key] - last[key]) / seconds;
      series[key].push(perSecond);
      if (series[key].length > HISTORY) series[key].shift();
      $("stat-" + key).textContent = rate(perSecond);
      draw("chart-" + key, series[key]);
    }
  }
  last = c;
  fill("nodes", o.nodes, (tr, n) => {
    cell(tr, n.name + (n.uid === o.node.uid ? " (this)" : ""));
    cell(tr, n.address || "–");
    cell(tr, n.version);
    cell(tr, n.num_clients);
    cell(tr, n.num_users);
    cell(tr, n.num_channels);
    cell(tr, n.num_subs);
    cell(tr, uptime(n.uptime));
  });
}

async function searchChannels(event) {
  if (event) event.preventDefault();
  try {
    const r = await api("channels?q=" + encodeURIComponent($("channel-query").value));
    $("channel-total").textContent =
      `${r.total} channel(s) with subscribers on this node` + (r.total > r.limit ? `, first ${r.limit} shown` : "");
    fill("channels", r.channels, (tr, ch) => {
      const name = cell(tr, ch.channel);
      cell(tr, ch.subscribers);
      if (ch.presence) {
        const td = cell(tr, `${ch.presence.num_clients} clients, ${ch.presence.num_users} users`);
        const link = document.createElement("button");
        link.type = "button";
        link.textContent = "who";
        link.addEventListener("click", () => showPresence(ch.channel));
        td.append(" ", link);
      } else {
        cell(tr, "off");
      }
      name.className = "channel-name";
    });
  } catch (e) {
    $("channel-total").textContent = "⚠ " + e.message;
  }
}

async function showPresence(channel) {
  try {
    const r = await api("presence?channel=" + encodeURIComponent(channel));
    const lines = Object.entries(r.presence).map(([client, info]) => `${info.user}  ${client}`);
    $("presence").textContent = `${channel}:\n` + (lines.join("\n") || "nobody");
  } catch (e) {
    $("presence").textContent = "⚠ " + e.message;
  }
}

async function publish(event) {
  event.preventDefault();
  const out = $("publish-result");
  let data;
  try {
    data = JSON.parse($("publish-data").value);
  } catch (e) {
    out.textContent = "⚠ data is not JSON: " + e.message;
    return;
  }
  try {
    const r = await api("publish", { channel: $("publish-channel").value, data });
    const position = r.offset ? ` (offset ${r.offset})` : "";
    out.textContent = "published" + position + " at " + new Date().toLocaleTimeString();
  } catch (e) {
    out.textContent = "⚠ " + e.message;
  }
}

async function disconnect(user, client) {
  const body = client ? { user, client } : { user };
  try {
    await api("disconnect", body);
    $("user-result").textContent = client ? `disconnected ${client}` : `disconnected user ${user}`;
  } catch (e) {
    $("user-result").textContent = "⚠ " + e.message;
  }
  setTimeout(showUser, 500);
}

async function showUser(event) {
  if (event) event.preventDefault();
  const user = $("user-id").value;
  if (!user) return;
  try {
    const r = await api("connections?user=" + encodeURIComponent(user));
    const rows = Object.entries(r.connections);
    fill("connections", rows, (tr, [client, info]) => {
      cell(tr, client);
      cell(tr, `${info.transport} (${info.protocol})`);
      cell(tr, Object.keys((info.state && info.state.channels) || {}).join(", "), "channels");
      const td = cell(tr, "");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "danger";
      button.textContent = "Disconnect";
      button.addEventListener("click", () => disconnect(user, client));
      td.appendChild(button);
    });
    $("disconnect-user").hidden = false;
    $("user-result").textContent = `${r.total} connection(s) of ${user} on this node`;
  } catch (e) {
    $("user-result").textContent = "⚠ " + e.message;
  }
}

async function loadDevices() {
  try {
    const r = await api("devices");
    $("devices-note").textContent = `${r.devices.length} device(s), fleet channel ${r.fleet_channel || "–"}`;
    fill("devices", r.devices, (tr, d) => {
      const p = d.position || {};
      cell(tr, d.device);
      cell(tr, d.protocol);
      cell(tr, d.connected ? "yes" : "no");
      cell(tr, d.last_seen ? new Date(d.last_seen).toLocaleString() : null);
      cell(tr, p.lat);
      cell(tr, p.lon);
      cell(tr, p.speed);
    });
  } catch (e) {
    $("devices-note").textContent = "⚠ " + e.message;
  }
}

$("channel-search").addEventListener("submit", searchChannels);
$("publish-form").addEventListener("submit", publish);
$("user-form").addEventListener("submit", showUser);
$("disconnect-user").addEventListener("click", () => disconnect($("user-id").value, null));
refresh();
searchChannels();
loadDevices();
setInterval(refresh, 1000);
setInterval(loadDevices, 10000);

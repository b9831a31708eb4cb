// Herve's dashboard. Everything shown goes through textContent: a service named
// `<img onerror=...>` is text. Changes send the session's CSRF token in a header.
"use strict";

const csrf = document.querySelector('meta[name="csrf"]').content;
const $ = (id) => document.getElementById(id);
let rates = {};        // service name -> requests/s
let history = {};      // service name -> recent requests/s
let latencies = {};    // service name -> recent mean latency (ms)
let lastLatency = {};  // service name -> [sum of seconds, count] at lastTime
let lastCounts = null; // service name -> requests total, at lastTime
let lastTime = 0;
let logSource = null;

function showError(text) { $("error").textContent = text || ""; }

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/x-www-form-urlencoded";
    options.body = body;
  }
  const reply = await fetch(path, options);
  if (reply.status === 401) { location.reload(); throw new Error("signed out"); }
  const type = reply.headers.get("content-type") || "";
  const data = type.includes("json") ? await reply.json() : await reply.text();
  if (!reply.ok) { throw new Error((data && data.message) || reply.statusText); }
  return data;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) { td.className = className; }
  row.appendChild(td);
  return td;
}

function routes(service) {
  const hosts = service.hosts || [];
  if (hosts.length) { return hosts.map((h) => h + (service.path && service.path !== "/" ? service.path : "")).join(", "); }
  return service.path || "/" + service.name;
}

function restarts(service) {
  const copies = (service.runtime && service.runtime.replicas) || [];
  return copies.reduce((sum, copy) => sum + (copy.restarts || 0), 0);
}

async function act(service, action) {
  if (action === "unregister" && !confirm("Unregister " + service.name + "?")) { return; }
  try {
    if (action === "unregister" && (service.status === "running" || service.status === "starting")) {
      await api("POST", "/services/" + service.uuid + "/stop");
    }
    await api("POST", "/services/" + service.uuid + "/" + action);
    showError("");
  } catch (error) { showError(action + " " + service.name + ": " + error.message); }
  refresh();
}

function button(parent, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.dataset.action = label;
  b.addEventListener("click", onClick);
  parent.appendChild(b);
}

function renderList(services) {
  const body = $("services").querySelector("tbody");
  body.replaceChildren();
  for (const service of services) {
    const row = document.createElement("tr");
    row.dataset.name = service.name;
    const name = cell(row, "");
    const link = document.createElement("a");
    link.href = "#/service/" + service.uuid;
    link.textContent = service.name;
    name.appendChild(link);
    cell(row, service.type);
    cell(row, service.status, service.status);
    cell(row, routes(service));
    cell(row, (rates[service.name] || 0).toFixed(1), "rate");
    cell(row, String(restarts(service)));
    const actions = cell(row, "", "actions");
    const running = service.status === "running" || service.status === "starting";
    if (running) {
      button(actions, "stop", () => act(service, "stop"));
      button(actions, "restart", () => act(service, "restart"));
      button(actions, "reload", () => act(service, "reload"));
    } else {
      button(actions, "start", () => act(service, "start"));
    }
    button(actions, "unregister", () => act(service, "unregister"));
    body.appendChild(row);
  }
}

async function measureRates() {
  const text = await api("GET", "/metrics");
  const counts = {};
  const latency = {};
  for (const line of text.split("\n")) {
    const match = /^herve_requests_total\{service="((?:[^"\\]|\\.)*)",[^}]*\} (\S+)$/.exec(line);
    if (match) { counts[match[1]] = (counts[match[1]] || 0) + Number(match[2]); }
    const timing = /^herve_request_duration_seconds_(sum|count)\{service="((?:[^"\\]|\\.)*)"\} (\S+)$/.exec(line);
    if (timing) {
      const entry = latency[timing[2]] = latency[timing[2]] || [0, 0];
      entry[timing[1] === "sum" ? 0 : 1] = Number(timing[3]);
    }
  }
  for (const name of Object.keys(latency)) {
    const before = lastLatency[name];
    if (before) {
      const served = latency[name][1] - before[1];
      const mean = served > 0 ? ((latency[name][0] - before[0]) / served) * 1000 : 0;
      (latencies[name] = latencies[name] || []).push(mean);
      if (latencies[name].length > 90) { latencies[name].shift(); }
    }
  }
  lastLatency = latency;
  const now = Date.now();
  if (lastCounts) {
    const seconds = Math.max((now - lastTime) / 1000, 0.001);
    for (const name of Object.keys(counts)) {
      rates[name] = Math.max(0, (counts[name] - (lastCounts[name] || 0)) / seconds);
      (history[name] = history[name] || []).push(rates[name]);
      if (history[name].length > 90) { history[name].shift(); }
    }
  }
  lastCounts = counts;
  lastTime = now;
}

function renderCertificates(certificates) {
  $("certs").hidden = certificates.length === 0;
  const body = $("certificates").querySelector("tbody");
  body.replaceChildren();
  for (const certificate of certificates) {
    const row = document.createElement("tr");
    row.dataset.host = certificate.host || "(default)";
    cell(row, certificate.host || "(default)");
    cell(row, certificate.source);
    cell(row, certificate.status + (certificate.reason ? ": " + certificate.reason : ""), certificate.status === "valid" ? "running" : "failed");
    cell(row, certificate.not_after || "-");
    body.appendChild(row);
  }
}

async function refresh() {
  try {
    await measureRates();
    const list = await api("GET", "/services");
    renderList(list.data);
    renderCertificates((await api("GET", "/certificates")).data);
    const route = location.hash.match(/^#\/service\/([0-9a-f-]{36})$/);
    if (route) { await renderDetail(route[1], false); }
  } catch (error) { showError(error.message); }
}

function drawChart(name) {
  plot("chart-line", history[name] || []);
  const recent = latencies[name] || [];
  plot("latency-line", recent);
  $("latency-now").textContent = recent.length ? "(now " + recent[recent.length - 1].toFixed(2) + " ms)" : "";
}

function plot(line, points) {
  const top = Math.max(1, ...points);
  $(line).setAttribute("points", points.map((value, i) => {
    const x = (i / 89) * 300;
    const y = 60 - (value / top) * 56 - 2;
    return x.toFixed(1) + "," + y.toFixed(1);
  }).join(" "));
}

let editing = null; // the uuid whose edit form is filled

// The edit form, filled with the service's fields as they are defined.
async function fillEdit(service) {
  if (editing === service.uuid) { return; }
  editing = service.uuid;
  const state = await api("GET", "/services/apply");
  const defined = state.data.services.find((s) => s.name === service.name);
  const lines = [];
  for (const [key, value] of Object.entries((defined && defined.fields) || {})) {
    for (const one of Array.isArray(value) ? value : [value]) { lines.push(key + "=" + one); }
  }
  $("edit-form").elements.fields.value = lines.join("\n");
  $("edit-form").dataset.uuid = service.uuid;
}

async function renderDetail(uuid, openLogs) {
  const reply = await api("GET", "/services/" + uuid);
  const service = reply.data;
  await fillEdit(service);
  $("list").hidden = true;
  $("detail").hidden = false;
  $("detail-name").textContent = service.name;
  const facts = $("detail-facts");
  facts.replaceChildren();
  for (const key of ["uuid", "type", "status", "reason", "description"]) {
    if (service[key] === undefined) { continue; }
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = String(service[key]);
    dd.dataset.key = key;
    facts.append(dt, dd);
  }
  $("detail-config").textContent = JSON.stringify({ config: service.config, runtime: service.runtime }, null, 2);
  drawChart(service.name);
  if (openLogs) { followLogs(uuid); }
}

function followLogs(uuid) {
  if (logSource) { logSource.close(); }
  const logs = $("logs");
  logs.textContent = "";
  logSource = new EventSource("/services/" + uuid + "/logs?follow=true&tail=50");
  logSource.onmessage = (event) => {
    logs.textContent += event.data + "\n";
    logs.scrollTop = logs.scrollHeight;
  };
  logSource.onerror = () => { logSource.close(); logs.textContent += "(no logs)\n"; };
}

function route() {
  const match = location.hash.match(/^#\/service\/([0-9a-f-]{36})$/);
  if (match) {
    renderDetail(match[1], true).catch((error) => showError(error.message));
  } else {
    editing = null;
    if (logSource) { logSource.close(); logSource = null; }
    $("detail").hidden = true;
    $("list").hidden = false;
  }
}

let types = [];

// The register form's inputs for the chosen type, from the fields it describes.
function renderTypeFields() {
  const type = types.find((t) => t.name === $("types").value);
  const box = $("type-fields");
  box.replaceChildren();
  $("type-help").textContent = type ? type.description : "";
  for (const field of (type && type.fields) || []) {
    const label = document.createElement("label");
    label.textContent = field.name + (field.required ? " (required)" : "") + ": " + field.help + " ";
    const input = document.createElement(field.repeated ? "textarea" : "input");
    input.name = field.name;
    if (field.repeated) { input.rows = 2; input.dataset.repeated = "1"; }
    if (field.required) { input.required = true; }
    if (field.default !== undefined) { input.placeholder = field.default; }
    label.appendChild(input);
    box.appendChild(label);
  }
}

async function loadTypes() {
  const status = await api("GET", "/services/status");
  $("server").textContent = "Herve " + status.data.version;
  types = (await api("GET", "/services/types")).data;
  const select = $("types");
  for (const type of types) {
    const option = document.createElement("option");
    option.value = type.name;
    option.textContent = type.name;
    select.appendChild(option);
  }
  select.addEventListener("change", renderTypeFields);
  renderTypeFields();
}

$("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = new URLSearchParams();
  for (const input of event.target.querySelectorAll("input[name], select[name], textarea[name]")) {
    if (input.name === "extra") {
      for (const line of input.value.split("\n")) {
        const at = line.indexOf("=");
        if (at > 0) { body.append(line.slice(0, at).trim(), line.slice(at + 1)); }
      }
    } else if (input.dataset.repeated) {
      for (const line of input.value.split("\n")) {
        if (line.trim()) { body.append(input.name, line.trim()); }
      }
    } else if (input.value !== "") {
      body.append(input.name, input.value);
    }
  }
  try {
    await api("POST", "/services/register", body.toString());
    event.target.reset();
    renderTypeFields();
    showError("");
  } catch (error) { showError("register: " + error.message); }
  refresh();
});

$("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = new URLSearchParams();
  for (const line of event.target.elements.fields.value.split("\n")) {
    const at = line.indexOf("=");
    if (at > 0) { body.append(line.slice(0, at).trim(), line.slice(at + 1)); }
  }
  try {
    await api("PATCH", "/services/" + event.target.dataset.uuid, body.toString());
    showError("");
    editing = null;
    await renderDetail(event.target.dataset.uuid, false);
  } catch (error) { showError("edit: " + error.message); }
});

$("signout").addEventListener("click", async () => {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
  location.href = "/ui/";
});

window.addEventListener("hashchange", route);
loadTypes().catch((error) => showError(error.message));
route();
refresh();
setInterval(refresh, 2000);

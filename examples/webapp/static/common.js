// Shared helpers of the three pages: JSON API calls, uploads, job polling, one-line errors. No framework.
"use strict";

async function api(path, options) {
  const resp = await fetch(path, options);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const msg = (data && data.error) ? data.error : `HTTP ${resp.status} on ${path}`;
    throw new Error(msg);
  }
  return data;
}

function postJSON(path, body) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}

// The file is the raw request body; the server checks the size while it streams and probes the content.
function uploadFile(file, kind) {
  const q = new URLSearchParams({kind: kind, filename: file.name || "recording"});
  return api(`/api/uploads?${q}`, {method: "POST", body: file});
}

function showError(el, err) {
  const text = err ? String(err.message || err).split("\n")[0] : "";
  el.textContent = text;
  el.title = text;
}

function sleep(ms) { return new Promise(r => setTimeout(r, ms)); }

// Poll a job until it has finished; onUpdate(job) after each poll. Returns the final record.
async function pollJob(id, onUpdate, intervalMs) {
  for (;;) {
    const job = await api(`/api/jobs/${id}`);
    onUpdate(job);
    if (!["queued", "running"].includes(job.state)) return job;
    await sleep(intervalMs || 500);
  }
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  const m = Math.floor(s / 60), r = s % 60;
  return m ? `${m} min ${r} s` : `${r} s`;
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value; o.textContent = text === undefined ? value : text;
  return o;
}

async function fillModels(select) {
  const data = await api("/api/models");
  select.innerHTML = "";
  for (const m of data.models) {
    if (m.iterations.length) select.appendChild(option(m.name, `${m.name} (iterations ${m.iterations.join(", ")})`));
  }
  if (!select.options.length) select.appendChild(option("", "no trained model yet"));
  return data.models;
}

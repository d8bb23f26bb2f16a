// What every view of the page shares: the API (each call with the token; errors as ApiError
// with the API's code), showing and hiding, and how a job's fields read. Loaded before the
// views (list.js, job.js, form.js, chart.js) and app.js, which routes between them.
// Command output only ever reaches the page as text nodes, never as markup.
"use strict";

const TOKEN_KEY = "taskrunner.token";  // sessionStorage: this tab only

const $ = (id) => document.getElementById(id);

// ---- the API: every call carries the token; errors become ApiError with the API's code

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  describe() {
    return this.status ? `${this.status} ${this.code}: ${this.message}` : this.message;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(extra) {
  const h = Object.assign({}, extra);
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function api(method, path, body, extra, signal) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(Object.assign(body === undefined ? {} : {"Content-Type": "application/json"}, extra)),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-cache",  // revalidate: GET /jobs answers 304 while nothing changed
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable", `cannot reach the instance (${err.message})`);
  }
  if (response.ok) return response;
  throw await errorOf(response);
}

async function errorOf(response) {
  let code = "error";
  let message = response.statusText || "the request failed";
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") {
      code = body.error;
      message = String(body.message || message);
    }
  } catch (err) {
    // not the JSON error shape (e.g. a proxy's page): keep the status text
  }
  return new ApiError(response.status, code, message);
}

// ---- small views of a job's fields

function show(el, on) {
  el.hidden = !on;
}

function showError(el, err) {
  el.textContent = err instanceof ApiError ? err.describe() : String(err);
  show(el, true);
}

function clearError(el) {
  el.textContent = "";
  show(el, false);
}

// The command as a shell would take it back (for reading only: no shell ever runs it).
// A listing's args may be cut (args_truncated): marked with an ellipsis; the job's own view
// (GET /jobs/<id>) has them whole.
function program(job) {
  const text = job.args.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`))
    .join(" ");
  return job.args_truncated ? `${text} …` : text;
}

function caller(job) {
  const c = job.caller;
  if (c === undefined || c === null) return "";
  if (typeof c === "string") return c;
  return c.name || c.id || JSON.stringify(c);
}

// Made once: toLocaleString() builds a formatter on every call, a cost times 1,000 rows.
const TIME = new Intl.DateTimeFormat(undefined, {timeStyle: "medium"});
const DATE_TIME = new Intl.DateTimeFormat(undefined, {dateStyle: "short", timeStyle: "medium"});

function started(job) {
  const d = new Date(job.created);
  if (isNaN(d)) return "";
  const now = new Date();
  const today = d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth()
    && d.getDate() === now.getDate();
  return (today ? TIME : DATE_TIME).format(d);
}

function seconds(s) {
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 120) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 120) return `${m} min ${Math.round(s - m * 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function duration(job) {
  if (job.duration !== null && job.duration !== undefined) return seconds(job.duration);
  if (job.state === "running") {
    // Elapsed on this browser's clock since the instance's start time: a live estimate.
    return `${seconds(Math.max(0, (Date.now() - Date.parse(job.created)) / 1000))}…`;
  }
  return "";
}

const SIGNALS = {1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE", 15: "SIGTERM"};

function exit(job) {
  if (job.status === null || job.status === undefined) return job.error ? job.error.error : "";
  const how = job.status < 0 ? `${SIGNALS[-job.status] || "signal " + -job.status} (${job.status})` : String(job.status);
  return job.timed_out ? `${how}, timed out` : how;
}

function stateClass(job) {
  return `state ${job.state}${job.state === "exited" && job.status !== 0 ? " nonzero" : ""}`;
}

function done(job) {
  return job.state !== "queued" && job.state !== "running";
}


// Start and end in the reader's local time; the title gives UTC, shown on hover.
function localTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : DATE_TIME.format(d);
}

function setTime(el, iso) {
  el.textContent = iso ? localTime(iso) : "";
  el.title = iso ? `${new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC")}` : "";
}

// Usage (null until the instance measures it): CPU seconds (user + system) and peak memory.
function cpuSeconds(job) {
  const u = job.usage;
  return u ? u.cpu_user + u.cpu_system : null;
}

function peakMemory(job) {
  return job.usage ? job.usage.max_rss : null;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

function cpu(job) {
  const s = cpuSeconds(job);
  return s === null ? "—" : seconds(s);
}

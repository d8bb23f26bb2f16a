// The taskrunner page: the jobs as a live table, a job's output live, a form to start one.
// Plain DOM, no build step. Command output only ever reaches the page as text nodes
// (textContent / appendData), never as markup: the ANSI parser (ansi.js, loaded first) picks
// out colours and turns them into class names; every other byte is shown as the text it is.
"use strict";

const TOKEN_KEY = "taskrunner.token";  // sessionStorage: this tab only
const POLL_MS = 1500;  // GET /jobs while the list is shown (the API has no list stream)
// With a shared job index (--state-dir shared by a host's instances, --state-url by a
// cluster's) any instance lists every job. Without one, behind nginx each GET /jobs is
// answered by any one instance with its own jobs: the table keeps each instance's latest
// list, and forgets an instance not heard from for this long (one that stopped, or whose
// jobs all expired).
const INSTANCE_MS = 20000;
// The newest PAGE jobs are asked for on each poll, PAGE more with each "Show more", up to
// LIST_LIMIT (the largest page GET /jobs gives): a poll weighs a page of summaries, not
// every job the index holds.
const PAGE = 50;
const LIST_LIMIT = 1000;

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

// ---- views: #/ is the list, #/jobs/<id> one job

let view = null;  // {stop()} of the view shown

function route() {
  if (view) view.stop();
  view = null;
  clearError($("error"));
  const match = /^#\/jobs\/(.+)$/.exec(location.hash);
  show($("list"), !match);
  show($("job"), Boolean(match));
  view = match ? jobView(decodeURIComponent(match[1])) : listView();
}

function needToken(why) {
  // The instance wants a token, or refused the one given: ask for it, saying why.
  if (view) view.stop();
  view = null;
  sessionStorage.removeItem(TOKEN_KEY);
  show($("list"), false);
  show($("job"), false);
  show($("forget"), false);
  show($("login"), true);
  if (why) showError($("login-error"), why);
  else clearError($("login-error"));
  $("token").focus();
}

// A 401: ask for the token (the view is left); true if that is what happened.
function failed(err) {
  if (!(err instanceof ApiError && err.status === 401)) return false;
  needToken(token() === null ? null
    : new ApiError(401, err.code, `the token was refused: ${err.message}`));
  return true;
}

// ---- the list

function listView() {
  let timer = null;
  let stopped = false;
  let first = true;
  const rows = new Map();  // job id -> <tr>
  const tbody = $("job-rows");
  tbody.textContent = "";  // the rows of the list shown before, which this view does not know

  function cell(tr, i, text, cls) {
    const td = tr.cells[i];
    if (td.textContent !== text) td.textContent = text;
    if (cls !== undefined && td.className !== cls) td.className = cls;
  }

  function row(job) {
    let tr = rows.get(job.id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.id = job.id;
      for (const label of ["State", "Command", "Caller", "Started", "Duration", "Exit"]) {
        const td = tr.insertCell();
        td.dataset.label = label;
      }
      tr.cells[1].className = "cmd";
      tr.cells[2].className = "caller";
      const state = document.createElement("span");
      tr.cells[0].append(state);
      const link = document.createElement("a");
      link.href = `#/jobs/${encodeURIComponent(job.id)}`;
      tr.cells[1].append(link);
      rows.set(job.id, tr);
    }
    const state = tr.cells[0].firstChild;
    if (state.textContent !== job.state) state.textContent = job.state;
    if (state.className !== stateClass(job)) state.className = stateClass(job);
    const link = tr.cells[1].firstChild;
    const cmd = program(job);
    if (link.textContent !== cmd) link.textContent = cmd;
    cell(tr, 2, caller(job));
    cell(tr, 3, started(job));
    cell(tr, 4, duration(job));
    cell(tr, 5, exit(job));
    return tr;
  }

  function render(jobs) {
    const seen = new Set();
    let hasCaller = false;
    jobs.forEach((job, i) => {
      seen.add(job.id);
      hasCaller = hasCaller || caller(job) !== "";
      const tr = row(job);
      // Newest first; a row already in place is left alone, so keyboard focus stays on it.
      if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
    });
    for (const [id, tr] of rows) {
      if (!seen.has(id)) {
        tr.remove();
        rows.delete(id);
      }
    }
    document.body.classList.toggle("has-callers", hasCaller);
    $("jobs-count").textContent = jobs.length ? `(${jobs.length})` : "";
    show($("jobs-empty"), jobs.length === 0);
    if (first) {
      first = false;
      performance.mark("taskrunner:jobs-rendered", {detail: {rows: jobs.length}});
    }
  }

  let lastText = null;
  let limit = PAGE;  // rows asked for: PAGE more with each "Show more"
  let live = false;  // a job is queued or running: its duration ticks
  const instances = new Map();  // instance -> {jobs, at}: its latest list

  function merge(answer) {
    const now = Date.now();
    const groups = new Map();
    for (const job of answer) {
      if (!groups.has(job.instance)) groups.set(job.instance, []);
      groups.get(job.instance).push(job);
    }
    if (answer.length === 0 && instances.size <= 1) instances.clear();  // one instance: all gone
    for (const [name, jobs] of groups) instances.set(name, {jobs, at: now});
    for (const [name, kept] of instances) {
      if (now - kept.at > INSTANCE_MS) instances.delete(name);
    }
    if (instances.size <= 1) return answer.length ? answer : [];
    const all = [].concat(...[...instances.values()].map((kept) => kept.jobs));
    // Newest first, as each instance lists them (the ISO times sort as text).
    return all.sort((a, b) => (a.created < b.created ? 1 : a.created > b.created ? -1
      : a.id < b.id ? 1 : -1));
  }

  async function poll() {
    timer = null;
    if (stopped) return;
    if (document.hidden) {  // a tab in the background asks for nothing; back, it polls at once
      document.addEventListener("visibilitychange", poll, {once: true});
      return;
    }
    try {
      const text = await (await api("GET", `/jobs?limit=${limit}`)).text();
      if (stopped) return;
      show($("forget"), token() !== null);
      show($("login"), false);
      clearError($("error"));
      if (text !== lastText || live || instances.size > 1) {  // else nothing to redo
        lastText = text;
        const answer = JSON.parse(text);
        show($("jobs-more"), answer.next !== null && limit < LIST_LIMIT);
        const jobs = merge(answer.jobs);
        live = jobs.some((job) => !done(job));
        render(jobs);
      }
    } catch (err) {
      if (stopped || failed(err)) return;
      showError($("error"), err);
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  function refresh() {
    if (timer !== null) clearTimeout(timer);
    poll();
  }

  $("jobs-more").onclick = () => {
    limit = Math.min(limit + PAGE, LIST_LIMIT);
    refresh();
  };
  poll();
  return {
    refresh,
    stop() {
      stopped = true;
      $("jobs-more").onclick = null;
      if (timer !== null) clearTimeout(timer);
    },
  };
}

// ---- the form

function parseArgs(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith("[")) {
    let args;
    try {
      args = JSON.parse(trimmed);
    } catch (err) {
      throw new Error(`the arguments are not a valid JSON array: ${err.message}`);
    }
    if (!Array.isArray(args) || !args.every((a) => typeof a === "string")) {
      throw new Error("the arguments must be a JSON array of strings");
    }
    return args;
  }
  // One argument per line, kept as typed (spaces included); blank lines are skipped.
  return text.split(/\r?\n/).filter((line) => line !== "");
}

function parseEnv(text) {
  const env = {};
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === "") continue;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new Error(`environment line ${JSON.stringify(line)} is not NAME=value`);
    env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return env;
}

async function startJob(event) {
  event.preventDefault();
  const error = $("start-error");
  const status = $("start-status");
  clearError(error);
  status.textContent = "";
  let body;
  try {
    body = {args: parseArgs($("args").value)};
    const timeout = $("timeout").value.trim();
    if (timeout !== "") body.timeout = Number(timeout);
    const env = parseEnv($("env").value);
    if (Object.keys(env).length) body.env = env;
  } catch (err) {
    showError(error, err.message);
    return;
  }
  const button = event.submitter || $("start-form").querySelector("button");
  button.disabled = true;
  try {
    const job = await (await api("POST", "/jobs", body)).json();
    status.textContent = "";
    const link = document.createElement("a");
    link.href = `#/jobs/${encodeURIComponent(job.id)}`;
    link.textContent = `${job.id} (${job.state})`;
    status.append("Started ", link);
    if (view && view.refresh) view.refresh();
  } catch (err) {
    if (!failed(err)) showError(error, err);
  } finally {
    button.disabled = false;
  }
}

// ---- one job: its facts, its output live, Cancel

function jobView(id) {
  const controller = new AbortController();
  let stopped = false;
  let current = null;
  let ticker = null;
  const out = $("output");
  const ansi = {stdout: new Ansi(), stderr: new Ansi()};
  let last = null;  // the last <span> written, and how it looked
  let follow = true;  // keep the newest output in view until the reader scrolls up

  out.textContent = "";
  $("output-note").textContent = "";
  $("job-id").textContent = id;
  for (const f of ["job-args", "job-state", "job-caller", "job-started", "job-duration", "job-exit"]) {
    $(f).textContent = "";
  }
  $("job-state").className = "state";
  clearError($("job-error"));
  $("cancel").disabled = true;
  show($("follow"), false);
  $("job-title").focus();

  function facts(job) {
    current = job;
    $("job-args").textContent = program(job);
    $("job-state").textContent = job.state;
    $("job-state").className = stateClass(job);
    $("job-caller").textContent = caller(job);
    document.body.classList.toggle("has-callers", caller(job) !== "");
    $("job-started").textContent = started(job);
    $("job-duration").textContent = duration(job);
    $("job-exit").textContent = exit(job);
    if (job.error) $("output-note").textContent = `${job.error.error}: ${job.error.message}`;
    const cancel = $("cancel");
    const wasFocused = document.activeElement === cancel;
    cancel.disabled = done(job);
    if (wasFocused && cancel.disabled) $("job-title").focus();
  }

  function atBottom() {
    return out.scrollHeight - out.scrollTop - out.clientHeight < 4;
  }

  function onScroll() {
    follow = atBottom();
    show($("follow"), !follow);
  }
  out.addEventListener("scroll", onScroll);

  function append(stream, data) {
    for (const [text, cls, rgb] of ansi[stream].feed(data)) {
      const look = `${stream}|${cls}|${rgb}`;
      if (last && last.look === look && last.span.parentNode === out) {
        last.span.firstChild.appendData(text);
        continue;
      }
      const span = document.createElement("span");
      span.className = `chunk ${stream}${cls ? " " + cls : ""}`;
      if (rgb) span.style.color = rgb;
      span.append(document.createTextNode(text));
      out.append(span);
      last = {span, look};
    }
    if (follow) out.scrollTop = out.scrollHeight;
  }

  async function stream() {
    const response = await api("GET", `/jobs/${encodeURIComponent(id)}/output`, undefined,
                               {Accept: "text/event-stream"}, controller.signal);
    // Server-Sent Events read with fetch: EventSource cannot send the Authorization header.
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let ended = false;
    for (;;) {
      const {value, done: eof} = await reader.read();
      if (eof) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(l.startsWith("data: ") ? 6 : 5)).join("\n");
        if (!data) continue;
        const item = JSON.parse(data);
        if (typeof item.stream === "string") {
          append(item.stream, item.data);
        } else {
          ended = true;
          facts(item);
        }
      }
    }
    if (!ended && !stopped) throw new ApiError(0, "stream_ended", "the output stream ended before the job did; reload to reconnect");
  }

  async function start() {
    try {
      facts(await (await api("GET", `/jobs/${encodeURIComponent(id)}`, undefined, {},
                             controller.signal)).json());
      show($("forget"), token() !== null);
      ticker = setInterval(() => {
        if (current && current.state === "running") $("job-duration").textContent = duration(current);
        // The stream says nothing of a start: a queued job is asked after until it runs.
        if (current && current.state === "queued") {
          api("GET", `/jobs/${encodeURIComponent(id)}`, undefined, {}, controller.signal)
            .then((r) => r.json())
            .then((job) => { if (!stopped && current.state === "queued") facts(job); })
            .catch(() => {});  // the stream, still open, reports what matters
        }
      }, 1000);
      await stream();
      if (!stopped && out.childNodes.length === 0) $("output-note").textContent = "No output.";
    } catch (err) {
      if (stopped || err.name === "AbortError") return;
      if (!failed(err)) showError($("job-error"), err);
    }
  }

  start();
  return {
    current: () => current,
    stop() {
      stopped = true;
      controller.abort();
      if (ticker !== null) clearInterval(ticker);
      out.removeEventListener("scroll", onScroll);
    },
    async cancel() {
      const button = $("cancel");
      button.disabled = true;
      clearError($("job-error"));
      try {
        facts(await (await api("DELETE", `/jobs/${encodeURIComponent(id)}`)).json());
      } catch (err) {
        if (!failed(err)) {
          showError($("job-error"), err);
          button.disabled = current ? done(current) : false;
        }
      }
    },
    follow() {
      follow = true;
      show($("follow"), false);
      out.scrollTop = out.scrollHeight;
    },
  };
}

// ---- wiring

// The instance's name and version in the header. /healthz says them only to a caller with
// a valid token (or to anyone on an instance without one): asked again once one is given.
function showInstance() {
  fetch("/healthz", {cache: "no-cache", headers: headers()}).then((r) => r.json()).then((h) => {
    $("instance").textContent = h.instance === undefined ? "" : `instance ${h.instance} · ${h.version}`;
  }).catch(() => {});
}

function init() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    showInstance();
    $("token").value = "";
    clearError($("login-error"));
    show($("login"), false);
    route();
  });
  $("forget").addEventListener("click", () => {
    needToken(null);
  });
  $("start-form").addEventListener("submit", startJob);
  $("cancel").addEventListener("click", () => view && view.cancel && view.cancel());
  $("follow").addEventListener("click", () => view && view.follow && view.follow());
  window.addEventListener("hashchange", route);
  showInstance();
  route();
}

init();

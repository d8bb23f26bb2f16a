// The list: a page of jobs, newest first, polled while shown; filtered by state and a search
// (the server filters: GET /jobs?state=&q=), paged with the listing's cursor (before=).
// What is shown lives in the URL (#/?state=failed&q=deploy&before=...): a view can be
// bookmarked, and the back button returns to the one before. CPU and peak memory columns
// sort the loaded page (a click on their heading: most first, least first, as listed).
"use strict";

const POLL_MS = 1500;  // GET /jobs while the list is shown (the API has no list stream)
// With a shared job index (--state-dir shared by a host's instances, --state-url by a
// cluster's) any instance lists every job. Without one, behind nginx each GET /jobs is
// answered by any one instance with its own jobs: the table keeps each instance's latest
// list, and forgets an instance not heard from for this long (one that stopped, or whose
// jobs all expired).
const INSTANCE_MS = 20000;
const PAGE = 50;  // rows a page holds: a poll weighs a page of summaries, not the index
const SEARCH_WAIT_MS = 400;  // typing pauses this long before the search is asked for
const COLUMNS = ["State", "Command", "Caller", "Started", "Duration", "Exit", "CPU", "Peak memory"];
const SORTS = {cpu: cpuSeconds, memory: peakMemory};

// The list's part of the URL: #/?state=&q=&before= (each optional).
function listParams() {
  const query = location.hash.replace(/^#\/?/, "");
  const params = new URLSearchParams(query.startsWith("?") ? query.slice(1) : "");
  return {state: params.get("state") || "", q: params.get("q") || "", before: params.get("before") || ""};
}

function listHash(p) {
  const params = new URLSearchParams();
  for (const key of ["state", "q", "before"]) if (p[key]) params.set(key, p[key]);
  const text = params.toString();
  return text ? `#/?${text}` : "#/";
}

// Show the list with these filters: a new history entry (back returns to this one).
function goToList(p) {
  const hash = listHash(p);
  if (hash !== (location.hash || "#/")) location.hash = hash;
}

function listView() {
  const params = listParams();
  let timer = null;
  let stopped = false;
  let first = true;
  let sort = null;  // {key, dir}: dir 1 most first, -1 least first
  let shown = [];  // the jobs of the last answer, as listed
  let next = null;
  let typing = null;
  const rows = new Map();  // job id -> <tr>
  const tbody = $("job-rows");
  tbody.textContent = "";  // the rows of the list shown before, which this view does not know

  $("filter-state").value = params.state;
  if (document.activeElement !== $("filter-q")) $("filter-q").value = params.q;
  const filtered = params.state || params.q;
  $("jobs-empty").textContent = filtered ? "No job matches." : params.before ? "No older jobs." : "No jobs yet.";

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
      for (const label of COLUMNS) {
        const td = tr.insertCell();
        td.dataset.label = label;
      }
      tr.cells[1].className = "cmd";
      tr.cells[2].className = "caller";
      tr.cells[6].className = tr.cells[7].className = "num";
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
    tr.cells[3].title = job.created || "";
    cell(tr, 4, duration(job));
    cell(tr, 5, exit(job));
    cell(tr, 6, cpu(job));
    cell(tr, 7, bytes(peakMemory(job)));
    return tr;
  }

  function ordered(jobs) {
    if (!sort) return jobs;
    const value = SORTS[sort.key];
    // Jobs without a value (usage not measured) last, whichever way; ties keep the listing's order.
    return jobs.map((job, i) => [job, value(job), i]).sort((a, b) => {
      if (a[1] === null || b[1] === null) return (a[1] === null) - (b[1] === null) || a[2] - b[2];
      return (b[1] - a[1]) * sort.dir || a[2] - b[2];
    }).map(([job]) => job);
  }

  function render(jobs) {
    const seen = new Set();
    let hasCaller = false;
    ordered(jobs).forEach((job, i) => {
      seen.add(job.id);
      hasCaller = hasCaller || caller(job) !== "";
      const tr = row(job);
      // A row already in place is left alone, so keyboard focus stays on it.
      if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
    });
    for (const [id, tr] of rows) {
      if (!seen.has(id)) {
        tr.remove();
        rows.delete(id);
      }
    }
    document.body.classList.toggle("has-callers", hasCaller);
    $("jobs-count").textContent = jobs.length ? `(${jobs.length}${next ? "+" : ""})` : "";
    show($("jobs-empty"), jobs.length === 0);
    if (first) {
      first = false;
      performance.mark("taskrunner:jobs-rendered", {detail: {rows: jobs.length}});
    }
  }

  let lastText = null;
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

  function query() {
    const q = new URLSearchParams({limit: String(PAGE)});
    if (params.state) q.set("state", params.state);
    if (params.q) q.set("q", params.q);
    if (params.before) q.set("before", params.before);
    return `/jobs?${q}`;
  }

  async function poll() {
    timer = null;
    if (stopped) return;
    if (document.hidden) {  // a tab in the background asks for nothing; back, it polls at once
      document.addEventListener("visibilitychange", poll, {once: true});
      return;
    }
    try {
      const text = await (await api("GET", query())).text();
      if (stopped) return;
      show($("forget"), token() !== null);
      show($("login"), false);
      clearError($("error"));
      if (text !== lastText || live || instances.size > 1) {  // else nothing to redo
        lastText = text;
        const answer = JSON.parse(text);
        next = answer.next;
        show($("jobs-older"), next !== null);
        show($("jobs-newest"), Boolean(params.before));
        shown = merge(answer.jobs);
        live = shown.some((job) => !done(job));
        render(shown);
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

  function headings() {
    for (const th of document.querySelectorAll("#jobs th[data-sort]")) {
      const on = sort && sort.key === th.dataset.sort;
      th.setAttribute("aria-sort", on ? (sort.dir > 0 ? "descending" : "ascending") : "none");
    }
  }

  function onSort(event) {
    const th = event.target.closest("th[data-sort]");
    if (!th) return;
    const key = th.dataset.sort;
    // Most first, then least first, then as listed.
    sort = !sort || sort.key !== key ? {key, dir: 1} : sort.dir > 0 ? {key, dir: -1} : null;
    headings();
    render(shown);
  }

  function filters() {
    return {state: $("filter-state").value, q: $("filter-q").value.trim()};
  }

  function onSubmit(event) {
    event.preventDefault();
    clearTimeout(typing);
    goToList(filters());  // a new search starts at the newest page
  }

  function onState() {
    goToList(filters());
  }

  function onType() {
    clearTimeout(typing);
    typing = setTimeout(() => goToList(filters()), SEARCH_WAIT_MS);
  }

  const older = () => goToList({...params, before: next});
  const newest = () => goToList({...params, before: ""});
  const thead = document.querySelector("#jobs thead");
  thead.addEventListener("click", onSort);
  $("filter").addEventListener("submit", onSubmit);
  $("filter-state").addEventListener("change", onState);
  $("filter-q").addEventListener("input", onType);
  $("jobs-older").addEventListener("click", older);
  $("jobs-newest").addEventListener("click", newest);
  show($("jobs-older"), false);
  show($("jobs-newest"), Boolean(params.before));
  headings();
  const chart = glanceView();
  startForm.show();
  poll();
  return {
    refresh,
    stop() {
      stopped = true;
      clearTimeout(typing);
      chart.stop();
      thead.removeEventListener("click", onSort);
      $("filter").removeEventListener("submit", onSubmit);
      $("filter-state").removeEventListener("change", onState);
      $("filter-q").removeEventListener("input", onType);
      $("jobs-older").removeEventListener("click", older);
      $("jobs-newest").removeEventListener("click", newest);
      if (timer !== null) clearTimeout(timer);
    },
  };
}

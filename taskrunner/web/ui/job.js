// One job: its whole story (caller, timeout, cwd, the environment's names, start and end in
// local time with UTC on hover, duration, exit, CPU and memory), its output live, the
// newest output kept in view while following; Cancel, Re-run, download and copy the output;
// each line's time on demand (the stream's "t" on chunks sent live; output written before
// the page connected has none, and says so).
"use strict";

const STAMP = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3, hour12: false,
});

function jobView(id) {
  const controller = new AbortController();
  let stopped = false;
  let current = null;
  let ticker = null;
  const out = $("output");
  const ansi = {stdout: new Ansi(), stderr: new Ansi()};
  let last = null;  // the last <span> written, and how it looked
  let follow = true;  // keep the newest output in view until the reader scrolls up
  let lineStart = true;  // the next text written begins a line
  let untimed = false;  // some output came without a time (written before the stream began)

  out.textContent = "";
  $("output-note").textContent = "";
  $("job-status").textContent = "";
  $("job-id").textContent = id;
  for (const f of ["job-args", "job-state", "job-caller", "job-started", "job-finished",
                   "job-duration", "job-exit", "job-timeout", "job-cwd", "job-env", "job-cpu",
                   "job-memory"]) {
    $(f).textContent = "";
    $(f).title = "";
  }
  $("job-state").className = "state";
  clearError($("job-error"));
  for (const b of ["cancel", "rerun", "download", "copy"]) $(b).disabled = true;
  show($("follow"), false);
  out.classList.toggle("times", $("times").checked);
  $("job-title").focus();

  function facts(job) {
    current = job;
    $("job-args").textContent = program(job);
    $("job-state").textContent = job.state;
    $("job-state").className = stateClass(job);
    $("job-caller").textContent = caller(job);
    document.body.classList.toggle("has-callers", caller(job) !== "");
    setTime($("job-started"), job.created);
    setTime($("job-finished"), job.finished);
    $("job-duration").textContent = duration(job);
    $("job-exit").textContent = exit(job);
    $("job-timeout").textContent = job.timeout === null || job.timeout === undefined ? "—" : seconds(job.timeout);
    $("job-cwd").textContent = job.cwd || "—";
    $("job-env").textContent = job.env_names && job.env_names.length ? job.env_names.join(", ") : "—";
    $("job-env").title = job.env_names && job.env_names.length ? "names only: the values are not kept" : "";
    $("job-cpu").textContent = cpu(job);
    $("job-memory").textContent = bytes(peakMemory(job));
    if (job.error) $("output-note").textContent = `${job.error.error}: ${job.error.message}`;
    const cancel = $("cancel");
    const wasFocused = document.activeElement === cancel;
    cancel.disabled = done(job);
    $("rerun").disabled = false;
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

  // A line's time: an empty marker, its text drawn by CSS (.times .ts::before), so copying
  // and downloading the output take the command's text alone.
  function stamp(t) {
    const ts = document.createElement("span");
    ts.className = "ts";
    ts.dataset.time = STAMP.format(new Date(t * 1000));
    ts.setAttribute("aria-hidden", "true");
    out.append(ts);
  }

  function write(text, stream, cls, rgb) {
    const look = `${stream}|${cls}|${rgb}`;
    if (last && last.look === look && out.lastChild === last.span) {
      last.span.firstChild.appendData(text);
      return;
    }
    const span = document.createElement("span");
    span.className = `chunk ${stream}${cls ? " " + cls : ""}`;
    if (rgb) span.style.color = rgb;
    span.append(document.createTextNode(text));
    out.append(span);
    last = {span, look};
  }

  function append(stream, data, t) {
    if (t === undefined) untimed = true;
    for (const [text, cls, rgb] of ansi[stream].feed(data)) {
      let rest = text;
      while (rest) {
        const nl = rest.indexOf("\n");
        const piece = nl < 0 ? rest : rest.slice(0, nl + 1);
        rest = nl < 0 ? "" : rest.slice(nl + 1);
        if (lineStart && t !== undefined) stamp(t);
        write(piece, stream, cls, rgb);
        lineStart = piece.endsWith("\n");
      }
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
          append(item.stream, item.data, typeof item.t === "number" ? item.t : undefined);
          $("download").disabled = $("copy").disabled = false;
        } else {
          ended = true;
          facts(item);
        }
      }
    }
    if (!ended && !stopped) throw new ApiError(0, "stream_ended", "the output stream ended before the job did; reload to reconnect");
  }

  function noteTimes() {
    const on = $("times").checked;
    out.classList.toggle("times", on);
    if (on && untimed) {
      $("job-status").textContent = "Times are known for output sent live; what was written before this page connected has none.";
    } else if (!on) {
      $("job-status").textContent = "";
    }
  }
  $("times").addEventListener("change", noteTimes);

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

  function text() {
    return out.textContent;  // the markers hold no text
  }

  start();
  return {
    current: () => current,
    stop() {
      stopped = true;
      controller.abort();
      if (ticker !== null) clearInterval(ticker);
      out.removeEventListener("scroll", onScroll);
      $("times").removeEventListener("change", noteTimes);
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
    rerun() {
      if (!current) return;
      startForm.rerun(current);
      goToList({});
    },
    download() {
      const url = URL.createObjectURL(new Blob([text()], {type: "text/plain;charset=utf-8"}));
      const a = document.createElement("a");
      a.href = url;
      a.download = `${id}.txt`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
      $("job-status").textContent = `Saved as ${id}.txt`;
    },
    async copy() {
      try {
        await navigator.clipboard.writeText(text());
        $("job-status").textContent = "Output copied.";
      } catch (err) {
        $("job-status").textContent = `Not copied: ${err.message}`;
      }
    },
  };
}

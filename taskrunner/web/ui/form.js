// The start form: parsing what was typed, POST /jobs, then the job's own view (its output
// following). Re-run fills it with what the instance kept of a job (args, timeout, cwd,
// the environment's names) and asks again for what it does not keep (the environment's
// values, stdin). Other forms (e.g. one per action) live in files of their own, as this one.
"use strict";

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

// Args one per line, unless one of them holds a line break or is empty: then a JSON array.
function argsText(args) {
  return args.some((a) => a === "" || /[\r\n]/.test(a) || a.startsWith("["))
    ? JSON.stringify(args) : args.join("\n");
}

const startForm = {
  // What a re-run asked for, shown once the list (where the form is) is drawn.
  pending: null,

  async submit(event) {
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
      const cwd = $("cwd").value.trim();
      if (cwd !== "") body.cwd = cwd;
      const env = parseEnv($("env").value);
      if (Object.keys(env).length) body.env = env;
      if ($("stdin").value !== "") body.stdin = $("stdin").value;
    } catch (err) {
      showError(error, err.message);
      return;
    }
    const button = event.submitter || $("start-form").querySelector("button");
    button.disabled = true;
    try {
      const job = await (await api("POST", "/jobs", body)).json();
      $("start-form").reset();
      status.textContent = `Started ${job.id}`;
      // To the job: its facts and its output, following.
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (!failed(err)) showError(error, err);
    } finally {
      button.disabled = false;
    }
  },

  // Ask for a re-run of job: the form is filled when the list shows it (show()).
  rerun(job) {
    this.pending = job;
  },

  show() {
    const job = this.pending;
    this.pending = null;
    if (!job) return;
    clearError($("start-error"));
    $("args").value = argsText(job.args);
    $("timeout").value = job.timeout === null || job.timeout === undefined ? "" : String(job.timeout);
    $("cwd").value = job.cwd || "";
    const names = job.env_names || [];
    $("env").value = names.map((n) => `${n}=`).join("\n");
    $("stdin").value = "";
    const again = names.length ? `the values of ${names.join(", ")} and any standard input`
      : "any standard input";
    $("start-status").textContent = `Re-run of ${job.id}: type ${again} again (the instance keeps neither).`;
    const env = $("env");
    if (names.length) {
      env.focus();
      env.setSelectionRange(names[0].length + 1, names[0].length + 1);  // after the first NAME=
    } else {
      $("args").focus();
    }
    $("start-form").scrollIntoView({block: "nearest"});
  },
};

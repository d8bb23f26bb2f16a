// The taskrunner page's routes and wiring: #/ is the list (with its filters: list.js),
// #/jobs/<id> one job (job.js); the start form is form.js, the actions' forms actions.js,
// the chart chart.js, and what
// they share core.js. Plain DOM, no build step: each file is a classic script, loaded in
// order (index.html), sharing the page's global scope. A new view is a file with a
// function that draws it and returns {stop()}, and a line in route().
"use strict";

// ---- views: #/ is the list, #/jobs/<id> one job

let view = null;  // {stop()} of the view shown

function route() {
  if (view) view.stop();
  view = null;
  clearError($("error"));
  const match = /^#\/jobs\/([^?]+)$/.exec(location.hash);
  show($("list"), !match);
  show($("job"), Boolean(match));
  view = match ? jobView(decodeURIComponent(match[1])) : listView();
  if (!match) actionForms.show();
}

function needToken(why) {
  // The instance wants a token, or refused the one given: ask for it, saying why.
  if (view) view.stop();
  view = null;
  sessionStorage.removeItem(TOKEN_KEY);
  show($("list"), false);
  show($("job"), false);
  show($("forget"), false);
  // A late 401 of a request sent before (no reason to give) leaves the reason shown.
  const asking = !$("login").hidden;
  if (why) showError($("login-error"), why);
  else if (!asking) clearError($("login-error"));
  show($("login"), true);
  $("token").focus();
}

// A 401: ask for the token (the view is left); true if that is what happened.
function failed(err) {
  if (!(err instanceof ApiError && err.status === 401)) return false;
  needToken(token() === null ? null
    : new ApiError(401, err.code, `the token was refused: ${err.message}`));
  return true;
}

// ---- wiring

// The instance's name and version in the header. /healthz says them only to a caller with
// a valid token (or to anyone on an instance without one): asked again once one is given.
function showInstance() {
  fetch("/healthz", {cache: "no-cache", headers: headers()}).then((r) => r.json()).then((h) => {
    $("instance").textContent = h.instance === undefined ? "" : `instance ${h.instance} · ${h.version}`;
  }).catch(() => {});
}

// The toggle says which theme is on (pressed: dark).
function showTheme() {
  $("theme").setAttribute("aria-pressed", String(currentTheme() === "dark"));
}

function init() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    actionForms.loaded = false;  // another token: maybe another caller's actions
    showInstance();
    $("token").value = "";
    clearError($("login-error"));
    show($("login"), false);
    route();
  });
  $("forget").addEventListener("click", () => {
    needToken(null);
  });
  $("start-form").addEventListener("submit", (event) => startForm.submit(event));
  // The job view's buttons call the view shown (each view says what it does).
  for (const name of ["cancel", "follow", "rerun", "download", "copy"]) {
    $(name).addEventListener("click", () => view && view[name] && view[name]());
  }
  $("theme").addEventListener("click", () => {
    toggleTheme();
    showTheme();
  });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", showTheme);
  showTheme();
  window.addEventListener("hashchange", route);
  showInstance();
  route();
}

init();

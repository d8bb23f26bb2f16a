// Light or dark: the system's choice (prefers-color-scheme, in ui.css) unless the reader
// chose with the toggle, remembered in localStorage. Loaded without defer, before the body
// is drawn, so a remembered choice shows from the first paint.
"use strict";

const THEME_KEY = "taskrunner.theme";  // localStorage: "light" or "dark"; absent: the system's

function storedTheme() {
  try {
    const t = localStorage.getItem(THEME_KEY);
    return t === "light" || t === "dark" ? t : null;
  } catch (err) {
    return null;  // storage refused (a locked-down browser): follow the system
  }
}

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

// The theme shown now: the one chosen, else the system's.
function currentTheme() {
  return storedTheme() || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
}

// The toggle: the other theme than the one shown, remembered.
function toggleTheme() {
  const next = currentTheme() === "dark" ? "light" : "dark";
  try {
    localStorage.setItem(THEME_KEY, next);
  } catch (err) {
    // not remembered, still shown
  }
  applyTheme(next);
  return next;
}

applyTheme(storedTheme());

// The instance at a glance: commands running and queued, and completions per second, over
// the last minutes, drawn as SVG by this file (nothing fetched but /healthz). /healthz gives
// any caller running, queued and finished (commands ended since start); two answers of one
// instance make its rate. Behind nginx each answer may come from another instance: each
// one's latest numbers are kept, and a point is their sum over those heard from lately.
"use strict";

const GLANCE_MS = 2000;  // one /healthz every 2 s while the list is shown
const GLANCE_SPAN_MS = 5 * 60 * 1000;  // the charts show the last 5 minutes
const GLANCE_STALE_MS = 20000;  // an instance not heard from for this long is left out
const SVG = "http://www.w3.org/2000/svg";

// Kept while the page lives, so a new search (a new list view) keeps the charts' history.
const glanceInstances = new Map();  // name -> {running, queued, finished, rate, at}
const glancePoints = [];  // {at, running, queued, rate}

function glanceView() {
  let timer = null;
  let stopped = false;
  const instances = glanceInstances;
  const points = glancePoints;

  function draw(svg, series, max) {
    svg.textContent = "";
    const w = 300;
    const h = 80;
    const top = Math.max(max, 1);
    const now = Date.now();
    const x = (at) => (w * (1 - (now - at) / GLANCE_SPAN_MS)).toFixed(1);
    const y = (v) => (h - 2 - (h - 12) * v / top).toFixed(1);
    const axis = document.createElementNS(SVG, "line");
    for (const [k, v] of Object.entries({x1: 0, x2: w, y1: h - 1, y2: h - 1, class: "axis"})) {
      axis.setAttribute(k, v);
    }
    svg.append(axis);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", 2);
    label.setAttribute("y", 10);
    label.setAttribute("class", "label");
    label.textContent = `max ${Number.isInteger(top) ? top : top.toFixed(2)}`;
    svg.append(label);
    for (const [cls, value] of series) {
      if (points.length < 1) continue;
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", `line ${cls}`);
      const coords = points.map((p) => `${x(p.at)},${y(value(p))}`);
      if (coords.length === 1) coords.unshift(`${x(points[0].at - GLANCE_MS)},${y(value(points[0]))}`);
      line.setAttribute("points", coords.join(" "));
      svg.append(line);
    }
  }

  function render() {
    const last = points[points.length - 1];
    $("glance-now").textContent = last
      ? `${last.running} running · ${last.queued} queued · ${last.rate.toFixed(2)} completions/s`
      : "";
    const load = Math.max(...points.map((p) => Math.max(p.running, p.queued)), 1);
    draw($("chart-load"), [["running", (p) => p.running], ["queued", (p) => p.queued]], load);
    draw($("chart-done"), [["done", (p) => p.rate]], Math.max(...points.map((p) => p.rate), 1));
    const cap = last ? `: now ${last.running} running, ${last.queued} queued, ${last.rate.toFixed(2)} completions per second` : "";
    $("chart-load").setAttribute("aria-label", `Commands running and queued, last 5 minutes${cap}`);
    $("chart-done").setAttribute("aria-label", `Completions per second, last 5 minutes${cap}`);
  }

  function sample(h) {
    const now = Date.now();
    const before = instances.get(h.instance);
    let rate = 0;
    if (before && h.finished >= before.finished && now > before.at) {
      rate = (h.finished - before.finished) * 1000 / (now - before.at);
    }
    instances.set(h.instance, {running: h.running, queued: h.queued, finished: h.finished, rate, at: now});
    const point = {at: now, running: 0, queued: 0, rate: 0};
    for (const [name, s] of instances) {
      if (now - s.at > GLANCE_STALE_MS) {
        instances.delete(name);
        continue;
      }
      point.running += s.running;
      point.queued += s.queued;
      point.rate += s.rate;
    }
    points.push(point);
    while (points.length && now - points[0].at > GLANCE_SPAN_MS) points.shift();
  }

  async function poll() {
    timer = null;
    if (stopped) return;
    if (!document.hidden) {
      try {
        const h = await (await fetch("/healthz", {cache: "no-cache", headers: headers()})).json();
        if (stopped) return;
        // Only a caller's token gets the counts (an instance with a token answers a stranger
        // its status alone): without them, no chart.
        if (typeof h.running === "number" && typeof h.finished === "number") {
          sample(h);
          show($("glance"), true);
          render();
        }
      } catch (err) {
        // the list reports an unreachable instance; the chart only pauses
      }
    }
    if (!stopped) timer = setTimeout(poll, GLANCE_MS);
  }

  if (points.length) {
    show($("glance"), true);
    render();
  }
  poll();
  return {
    stop() {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
    },
  };
}

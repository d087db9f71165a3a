"""The page of ``report.html``: markup, style and the script that draws the figures and
switches smoothing and log scale. ``html_report`` fills the ``@@NAME@@`` slots."""

__all__ = ["PAGE_TEMPLATE"]

PAGE_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>@@TITLE@@ — training report</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 1.5em 2em; color: #222; }
header { position: sticky; top: 0; background: #fff; z-index: 10; border-bottom: 1px solid #ddd; padding: .5em 0; }
h1 { font-size: 1.3em; margin: .2em 0; }
h2 { font-size: 1.1em; margin: 1.2em 0 .2em; }
.controls label { margin-right: 1.5em; }
nav { font-size: .9em; margin-top: .3em; }
.figure { width: 100%; min-height: 200px; }
table.summary { border-collapse: collapse; font-size: .82em; }
table.summary td, table.summary th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
table.summary td:nth-child(2), table.summary th:nth-child(2) { text-align: left; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; }
.source, .meta { color: #666; font-size: .9em; }
.note { color: #444; font-size: .85em; margin: .1em 0 .1em 4em; max-width: 60em; }
</style>
<script>@@PLOTLY@@</script>
</head>
<body>
<header>
<h1>@@TITLE@@</h1>
<div class="controls">
<label>smoothing
<select id="smoothing">
<option value="auto">as the PNGs (@@SMOOTHING@@)</option>
<option value="none">none (bin means)</option>
<option value="ema:0.6">debiased EMA 0.6</option>
<option value="ema:0.9">debiased EMA 0.9</option>
<option value="ema:0.99">debiased EMA 0.99</option>
</select></label>
<label><input type="checkbox" id="log-scale"@@LOGCHECKED@@> log scale for losses</label>
<span class="meta">hover: values · drag: zoom · double-click: reset · legend: show/hide a series</span>
</div>
<nav>@@NAV@@ · <a href="#summary">summary</a> · <a href="#config">config</a></nav>
</header>
<ul class="meta">@@SOURCES@@<li>report written @@GENERATED@@</li></ul>
@@SECTIONS@@
<section id="summary"><h2>summary</h2>@@SUMMARY@@</section>
<section id="config"><h2>config</h2>@@CONFIG@@</section>
<script id="report-data" type="application/json">@@DATA@@</script>
<script>
"use strict";
(function () {
  const startedMs = performance.now();
  const payload = JSON.parse(document.getElementById("report-data").textContent);
  const arrays = payload.arrays.map(function (text) {
    const bytes = atob(text);
    const buffer = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) buffer[i] = bytes.charCodeAt(i);
    return new Float32Array(buffer.buffer);
  });
  function resolve(trace) {
    for (const key of ["x", "y"]) {
      if (trace[key] && trace[key].ref !== undefined) trace[key] = arrays[trace[key].ref];
    }
    return trace;
  }
  // TensorBoard's smoothing: EMA over the finite points, debiased so the start is not pulled to 0.
  function ema(values, weight) {
    const out = new Float32Array(values.length);
    let last = 0, count = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (!Number.isFinite(v)) { out[i] = NaN; continue; }
      last = last * weight + (1 - weight) * v;
      count += 1;
      out[i] = last / (1 - Math.pow(weight, count));
    }
    return out;
  }
  function smoothed(meta, mode) {
    if (mode === "auto") return arrays[meta.auto];
    if (mode === "none") return arrays[meta.raw];
    return ema(arrays[meta.raw], parseFloat(mode.split(":")[1]));
  }
  const config = {responsive: true, displaylogo: false, scrollZoom: false};
  window.reportTimings = {scriptMs: startedMs, decodedMs: performance.now(), figureMs: []};
  // One figure per task, the ones on screen first: the page answers the mouse between figures
  // instead of freezing until the last of a big run's figures is drawn.
  const order = payload.figures.map(function (entry, index) { return index; });
  const onScreen = function (index) {
    const box = document.getElementById(payload.figures[index].id).getBoundingClientRect();
    return box.top < window.innerHeight && box.bottom > 0 ? 0 : 1;
  };
  order.sort(function (a, b) { return onScreen(a) - onScreen(b) || a - b; });
  function drawFigure(index) {
    return new Promise(function (resolveDrawn) { setTimeout(resolveDrawn, 0); }).then(function () {
      const entry = payload.figures[index];
      return Plotly.newPlot(entry.id, entry.figure.data.map(resolve), entry.figure.layout, config);
    }).then(function () { window.reportTimings.figureMs.push(performance.now()); });
  }
  const drawn = order.reduce(function (previous, index) {
    return previous.then(function () { return drawFigure(index); });
  }, Promise.resolve());
  function eachFigure(action) {
    payload.figures.forEach(function (entry) { action(document.getElementById(entry.id)); });
  }
  document.getElementById("smoothing").addEventListener("change", function (event) {
    const mode = event.target.value;
    eachFigure(function (div) {
      const indices = [], ys = [];
      div.data.forEach(function (trace, index) {
        if (trace.meta && trace.meta.raw !== undefined) { indices.push(index); ys.push(smoothed(trace.meta, mode)); }
      });
      if (indices.length) Plotly.restyle(div, {y: ys}, indices);
    });
  });
  document.getElementById("log-scale").addEventListener("change", function (event) {
    const type = event.target.checked ? "log" : "linear";
    eachFigure(function (div) {
      const update = {};
      div.layout.meta.lossAxes.forEach(function (axis) { update[axis + ".type"] = type; update[axis + ".autorange"] = true; });
      if (Object.keys(update).length) Plotly.relayout(div, update);
    });
  });
  drawn.then(function () {
    window.reportReadyMs = performance.now();
    document.body.dataset.ready = "1";
  });
})();
</script>
</body>
</html>
"""

// Monitoring charts (uPlot): figures sampled from /ui/data/figures, drift from /ui/data/drift.
(function () {
  "use strict";
  const params = new URLSearchParams(window.location.search);
  const fleet = params.get("fleet") || "";
  const query = fleet ? "?fleet=" + encodeURIComponent(fleet) : "";
  const samples = new Map(); // series label -> [[t, p99, errorRate], ...]
  const plots = {};
  const palette = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#57606a"];

  // a lone sample gets a few minutes of axis around it (uPlot would otherwise span years)
  function widen(plot, xs) {
    if (xs.length === 1) plot.setScale("x", { min: xs[0] - 300, max: xs[0] + 60 });
  }

  function width(el) { return Math.max(320, el.clientWidth || 900); }

  function draw(id, labels, xs, columns) {
    const el = document.getElementById(id);
    if (!el) return;
    if (!labels.length) {
      el.textContent = el.dataset.empty;
      el.dataset.state = "empty";
      if (plots[id]) { plots[id].destroy(); delete plots[id]; }
      return;
    }
    el.dataset.state = "drawn";
    el.dataset.series = labels.length;
    const data = [xs].concat(columns);
    if (plots[id] && plots[id].series.length === labels.length + 1) {
      plots[id].setData(data);
      widen(plots[id], xs);
      return;
    }
    if (plots[id]) plots[id].destroy();
    el.textContent = "";
    const series = [{}].concat(labels.map(function (label, i) {
      return { label: label, stroke: palette[i % palette.length], width: 2, spanGaps: true };
    }));
    plots[id] = new uPlot({ width: width(el), height: 260, series: series, scales: { x: { time: true } } }, data, el);
    widen(plots[id], xs);
  }

  // align several [[t, v], ...] series on one sorted x axis (null where a series has no point)
  function align(named) {
    const times = new Set();
    named.forEach(function (s) { s.points.forEach(function (p) { times.add(p[0]); }); });
    const xs = Array.from(times).sort(function (a, b) { return a - b; });
    const index = new Map(xs.map(function (t, i) { return [t, i]; }));
    const columns = named.map(function (s) {
      const col = new Array(xs.length).fill(null);
      s.points.forEach(function (p) { col[index.get(p[0])] = p[1]; });
      return col;
    });
    return { labels: named.map(function (s) { return s.label; }), xs: xs, columns: columns };
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } }).then(function (r) {
      if (r.status === 401) { window.location.href = "/ui/login"; throw new Error("not logged in"); }
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }

  function figures() {
    getJSON("/ui/data/figures" + query).then(function (body) {
      body.series.forEach(function (s) {
        const label = s.fleet + " " + s.model + ":" + s.version;
        if (!samples.has(label)) samples.set(label, []);
        const list = samples.get(label);
        list.push([body.time, s.p99_ms, s.error_rate]);
        if (list.length > 2000) list.shift();
      });
      const latency = [], errors = [];
      samples.forEach(function (list, label) {
        latency.push({ label: label, points: list.filter(function (p) { return p[1] !== null; }).map(function (p) { return [p[0], p[1]]; }) });
        errors.push({ label: label, points: list.filter(function (p) { return p[2] !== null; }).map(function (p) { return [p[0], p[2]]; }) });
      });
      const a = align(latency.filter(function (s) { return s.points.length; }));
      draw("chart-latency", a.labels, a.xs, a.columns);
      const b = align(errors.filter(function (s) { return s.points.length; }));
      draw("chart-errors", b.labels, b.xs, b.columns);
    }).catch(function (e) { console.warn("figures:", e); });
  }

  function driftScores() {
    getJSON("/ui/data/drift" + query).then(function (body) {
      const named = body.series.map(function (s) {
        return { label: s.fleet + " " + s.model + ":" + s.version + " " + s.kind, points: s.points };
      });
      const a = align(named);
      draw("chart-drift", a.labels, a.xs, a.columns);
    }).catch(function (e) { console.warn("drift:", e); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    figures();
    driftScores();
    window.setInterval(figures, 10000);
    window.setInterval(driftScores, 60000);
  });
})();

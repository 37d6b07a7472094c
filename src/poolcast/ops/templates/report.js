(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = {ingest: "#0891b2", metrics: "#2563eb", forecast: "#7c3aed", failed: "#dc2626",
                model: "#7c3aed", naive: "#9ca3af", actual: "#2563eb"};
  var errorsBox = document.getElementById("errors");
  window.addEventListener("error", function (e) { errorsBox.textContent += e.message + " "; });

  function el(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function html(tag, text, parent, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = text; }
    if (cls) { e.className = cls; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function label(parent, x, y, s, attrs) {
    var t = el("text", Object.assign({x: x, y: y}, attrs || {}), parent);
    t.textContent = s;
    return t;
  }
  function title(node, s) { var t = el("title", {}, node); t.textContent = s; }
  function day(s) { return Date.parse(s + "T00:00:00Z") / 86400000; }
  function dayLabel(d) { return new Date(d * 86400000).toISOString().slice(5, 10); }
  function fmt(v, digits) {
    if (v === null || v === undefined) { return "-"; }
    var a = Math.abs(v);
    if (a >= 1e9) { return (v / 1e9).toFixed(1) + "B"; }
    if (a >= 1e6) { return (v / 1e6).toFixed(1) + "M"; }
    if (a >= 1e3) { return (v / 1e3).toFixed(1) + "k"; }
    return v.toFixed(digits === undefined ? 2 : digits);
  }
  function scale(d0, d1, r0, r1) {
    var k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
    return function (v) { return r0 + (v - d0) * k; };
  }
  function ticks(lo, hi, n) {
    if (hi === lo) { return [lo]; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) { out.push(v); }
    return out;
  }
  function frame(box, w, h, m) {
    var svg = el("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img"}, box);
    svg.dataset.marks = "0";
    return {svg: svg, x0: m[3], x1: w - m[1], y0: h - m[2], y1: m[0]};
  }
  function mark(f, n) { f.svg.dataset.marks = String(Number(f.svg.dataset.marks) + (n || 1)); }
  function digits(t) {
    var step = t.length > 1 ? t[1] - t[0] : 1;
    return step >= 1 ? 0 : Math.min(4, Math.ceil(-Math.log10(step)));
  }
  function yAxis(f, lo, hi, unit) {
    var y = scale(lo, hi, f.y0, f.y1), t = ticks(lo, hi, 4), dg = digits(t);
    t.forEach(function (v) {
      el("line", {x1: f.x0, x2: f.x1, y1: y(v), y2: y(v), stroke: "#eee"}, f.svg);
      label(f.svg, f.x0 - 4, y(v) + 4, fmt(v, dg) + (unit || ""), {"text-anchor": "end"});
    });
    return y;
  }
  function empty(box, text) { html("p", text, box, "empty"); }

  function poolChart(box, p) {
    var f = frame(box, 420, 190, [10, 10, 22, 44]);
    var pts = p.actual.map(function (a) { return [day(a[0]), a[1]]; });
    var fc = p.forecast.map(function (a) { return [day(a[0]), a[1]]; });
    var ahead = p.ahead.filter(function (a) { return a.value !== null; });
    var xs = pts.concat(fc).map(function (q) { return q[0]; })
      .concat(ahead.map(function (a) { return day(a.date); }));
    var ys = pts.concat(fc).map(function (q) { return q[1]; })
      .concat(ahead.map(function (a) { return a.value; }))
      .concat(ahead.map(function (a) { return a.lower; }))
      .concat(ahead.map(function (a) { return a.upper; }))
      .filter(function (v) { return v !== null && v !== undefined; });
    if (!xs.length) { empty(box, "no data"); return; }
    var lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
    var pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
    var x = scale(Math.min.apply(null, xs), Math.max.apply(null, xs), f.x0, f.x1);
    var y = yAxis(f, lo - pad, hi + pad, "%");
    ticks(Math.min.apply(null, xs), Math.max.apply(null, xs), 4).forEach(function (d) {
      label(f.svg, x(d), f.y0 + 15, dayLabel(Math.round(d)), {"text-anchor": "middle"});
    });
    var d = "", pen = false;
    pts.forEach(function (q) {
      if (q[1] === null) { pen = false; return; }
      d += (pen ? "L" : "M") + x(q[0]).toFixed(1) + "," + y(q[1]).toFixed(1);
      pen = true;
    });
    if (d) {
      el("path", {d: d, fill: "none", stroke: COLORS.actual, "stroke-width": 1.6,
                  "class": "series-actual"}, f.svg);
      mark(f, pts.length);
    }
    fc.forEach(function (q) {
      if (q[1] === null) { return; }
      var c = el("circle", {cx: x(q[0]), cy: y(q[1]), r: 3, fill: COLORS.forecast,
                            "class": "series-forecast"}, f.svg);
      title(c, dayLabel(q[0]) + " forecast " + fmt(q[1]) + "%");
      mark(f);
    });
    ahead.forEach(function (a) {
      var cx = x(day(a.date));
      if (a.lower !== null && a.upper !== null) {
        el("line", {x1: cx, x2: cx, y1: y(a.lower), y2: y(a.upper), stroke: COLORS.forecast,
                    "stroke-width": 2, opacity: 0.5, "class": "series-interval"}, f.svg);
      }
      var r = el("rect", {x: cx - 3, y: y(a.value) - 3, width: 6, height: 6,
                          fill: COLORS.forecast, "class": "series-ahead"}, f.svg);
      title(r, a.horizon + "d ahead (" + a.date + "): " + fmt(a.value) + "% [" +
            fmt(a.lower) + ", " + fmt(a.upper) + "]");
      mark(f);
    });
  }

  function histogram(box, values) {
    var f = frame(box, 520, 220, [10, 10, 34, 44]);
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    var bins = Math.max(5, Math.min(30, Math.ceil(Math.sqrt(values.length)) * 2));
    var width = (hi - lo) / bins, counts = new Array(bins).fill(0);
    values.forEach(function (v) { counts[Math.min(bins - 1, Math.floor((v - lo) / width))] += 1; });
    var x = scale(lo, hi, f.x0, f.x1);
    var y = yAxis(f, 0, Math.max.apply(null, counts), "");
    counts.forEach(function (c, i) {
      if (!c) { return; }
      var r = el("rect", {x: x(lo + i * width) + 1, y: y(c), height: f.y0 - y(c),
                          width: Math.max(1, x(lo + width) - x(lo) - 2), fill: COLORS.model,
                          "class": "bar"}, f.svg);
      title(r, c + " pools with error in [" + fmt(lo + i * width) + ", " +
            fmt(lo + (i + 1) * width) + ") points");
      mark(f);
    });
    var xt = ticks(lo, hi, 5), dg = digits(xt);
    xt.forEach(function (v) {
      label(f.svg, x(v), f.y0 + 15, fmt(v, dg), {"text-anchor": "middle"});
    });
    if (lo < 0 && hi > 0) {
      el("line", {x1: x(0), x2: x(0), y1: f.y1, y2: f.y0, stroke: "#111", "stroke-dasharray": "3"},
         f.svg);
    }
    label(f.svg, (f.x0 + f.x1) / 2, f.y0 + 30, "forecast - actual (APY points)",
          {"text-anchor": "middle"});
  }

  function bars(box, items, opts) {
    // items: [{label, values: [{v, color, name}]}], horizontal bars grouped per item
    var per = items[0].values.length, rowH = 14 * per + 8, left = opts.left || 190;
    var f = frame(box, opts.width || 620, items.length * rowH + 30, [6, 60, 24, left]);
    var max = Math.max.apply(null, items.map(function (it) {
      return Math.max.apply(null, it.values.map(function (v) { return v.v || 0; }));
    })) || 1;
    var x = scale(0, max, f.x0, f.x1);
    items.forEach(function (it, i) {
      var top = f.y1 + i * rowH;
      label(f.svg, f.x0 - 6, top + rowH / 2 + 3, it.label, {"text-anchor": "end"});
      it.values.forEach(function (v, j) {
        if (v.v === null || v.v === undefined) { return; }
        var r = el("rect", {x: f.x0, y: top + j * 14, height: 12, width: Math.max(1, x(v.v) - f.x0),
                            fill: v.color, "class": "bar"}, f.svg);
        title(r, it.label + " " + (v.name || "") + ": " + (opts.format || fmt)(v.v));
        label(f.svg, x(v.v) + 4, top + j * 14 + 10, (opts.format || fmt)(v.v));
        mark(f);
      });
    });
    if (opts.legend) {
      opts.legend.forEach(function (l, i) {
        el("rect", {x: f.x0 + i * 110, y: f.y0 + 8, width: 10, height: 10, fill: l[1]}, f.svg);
        label(f.svg, f.x0 + i * 110 + 14, f.y0 + 17, l[0]);
      });
    }
  }

  function runsChart(box, runs) {
    var done = runs.filter(function (r) { return r.seconds !== null; });
    if (!done.length) { empty(box, "no finished runs recorded"); return; }
    var f = frame(box, 900, 220, [10, 10, 40, 48]);
    var max = Math.max.apply(null, done.map(function (r) { return r.seconds; }));
    var y = yAxis(f, 0, max * 1.1, "s");
    var w = Math.min(40, (f.x1 - f.x0) / done.length);
    done.forEach(function (r, i) {
      var color = r.status === "failed" ? COLORS.failed : (COLORS[r.stage] || "#64748b");
      var b = el("rect", {x: f.x0 + i * w + 1, y: y(r.seconds), width: Math.max(1, w - 2),
                          height: f.y0 - y(r.seconds), fill: color, "class": "bar"}, f.svg);
      title(b, r.started_at + " " + r.stage + " " + r.status + ": " + fmt(r.seconds) + " s");
      mark(f);
    });
    [["ingest", COLORS.ingest], ["metrics", COLORS.metrics], ["forecast", COLORS.forecast],
     ["failed", COLORS.failed]]
      .forEach(function (l, i) {
        el("rect", {x: f.x0 + i * 100, y: f.y0 + 22, width: 10, height: 10, fill: l[1]}, f.svg);
        label(f.svg, f.x0 + i * 100 + 14, f.y0 + 31, l[0]);
      });
    label(f.svg, f.x0, f.y0 + 14, done[0].started_at.slice(0, 16).replace("T", " "));
    if (done.length > 1) {
      var last = done[done.length - 1].started_at.slice(0, 16).replace("T", " ");
      label(f.svg, f.x0 + done.length * w, f.y0 + 14, last, {"text-anchor": "end"});
    }
  }

  function table(box, rows, columns) {
    var t = html("table", null, box), head = html("tr", null, t);
    columns.forEach(function (c) { html("th", c[0], head); });
    rows.forEach(function (r) {
      var tr = html("tr", null, t);
      columns.forEach(function (c) {
        var v = c[1](r), td = html("td", v === null || v === undefined ? "" : String(v), tr);
        if (c[0] === "status") { td.className = r.status; }
      });
    });
  }

  var data = JSON.parse(document.getElementById("report-data").textContent);
  document.getElementById("meta").textContent = data.store + " | as of " + data.as_of +
    " (forecast day " + data.forecast_day + ") | generated " + data.generated +
    " | poolcast " + data.version;
  var cards = document.getElementById("cards"), s = data.summary;
  [["pools", s.pools + " / " + s.active_pools + " active"], ["rows", fmt(s.rows, 0)],
   ["days", s.first_day + " .. " + s.last_day],
   ["reporting on " + data.as_of, s.reporting_yesterday],
   ["yesterday MAE", fmt(data.errors.mae) + " (naive " + fmt(data.errors.naive_mae) + ")"]]
    .forEach(function (c) {
      var d = html("div", null, cards, "card");
      html("b", String(c[1]), d);
      html("span", c[0], d);
    });

  var poolsBox = document.getElementById("pools");
  if (!data.pools.length) { empty(poolsBox, "no pools with metrics"); }
  data.pools.forEach(function (p) {
    var d = html("div", null, poolsBox, "pool chart");
    d.dataset.chart = "pool";
    html("h3", p.label || p.pool_id, d);
    html("p", "TVL $" + fmt(p.tvl) + " | APY " + fmt(p.apy) + "% on " + p.last_day +
         " | " + p.pool_id, d);
    poolChart(d, p);
  });

  var errBox = document.getElementById("errors-chart");
  var e = data.errors;
  html("p", e.values.length + " pools scored on " + e.day + "; MAE " + fmt(e.mae) +
       " APY points, naive (APY as the day before) " + fmt(e.naive_mae), errBox, "note");
  if (e.values.length) { histogram(errBox, e.values); } else {
    empty(errBox, "no forecast for " + e.day + " has been scored yet: a day's forecast is made " +
          "by the run of the day before");
  }
  if (e.worst.length) {
    table(document.getElementById("worst"), e.worst, [
      ["largest errors", function (r) { return r.pool_id.slice(0, 18); }],
      ["actual", function (r) { return fmt(r.actual); }],
      ["forecast", function (r) { return fmt(r.forecast); }]]);
  }

  var btBox = document.getElementById("backtest-chart");
  if (data.backtest && data.backtest.length) {
    html("p", "Mean absolute APY error (points) of the current model and of the naive forecast",
         btBox, "note");
    bars(btBox, data.backtest.map(function (b) {
      return {label: (b.horizon === "mean7" ? "mean next 7 days" : b.horizon + " day" +
                      (b.horizon === "1" ? "" : "s")) + " (n=" + b.n + ")",
              values: [{v: b.mae, color: COLORS.model, name: "model"},
                       {v: b.naive_mae, color: COLORS.naive, name: "naive"}]};
    }), {legend: [["model", COLORS.model], ["naive", COLORS.naive]]});
  } else { empty(btBox, "not available: the current model carries no backtest; run " +
                 "`poolcast backtest --json > bt.json` and `poolcast report --backtest bt.json`"); }

  var impBox = document.getElementById("importance-chart");
  var m = data.model || {};
  if (m.importance && m.importance.length) {
    html("p", "Share of total gain, " + (m.importance_of || "") + " of " + (m.path || ""), impBox,
         "note");
    bars(impBox, m.importance.map(function (f) {
      return {label: f[0], values: [{v: f[1] * 100, color: COLORS.model}]};
    }), {format: function (v) { return v.toFixed(1) + "%"; }});
  } else { empty(impBox, m.note || "no model"); }

  runsChart(document.getElementById("runs-chart"), data.runs);
  table(document.getElementById("runs-table"), data.runs.slice().reverse().slice(0, 12), [
    ["started (UTC)", function (r) { return r.started_at.replace("T", " "); }],
    ["run", function (r) { return r.run_id; }], ["stage", function (r) { return r.stage; }],
    ["status", function (r) { return r.status; }],
    ["seconds", function (r) { return r.seconds === null ? "" : r.seconds.toFixed(2); }],
    ["rows written", function (r) { return r.rows_written; }],
    ["error", function (r) { return r.error; }]]);

  document.getElementById("footer").textContent = "Self-contained: data, styles and charts are " +
    "in this file; nothing is loaded from the network.";
  document.body.dataset.rendered = errorsBox.textContent ? "error" : "ok";
})();

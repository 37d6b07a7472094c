// poolcast report: chart helpers. Every chart is inline SVG; `data-marks` on each <svg> counts
// the data marks it drew (the browser tests read it). Text is always set with textContent.
var R = (function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = {ingest: "#0891b2", metrics: "#2563eb", forecast: "#7c3aed", failed: "#dc2626",
                model: "#7c3aed", naive: "#9ca3af", actual: "#2563eb", stale: "#dc2626",
                fresh: "#15803d", clip: "#ea580c"};
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                "Dec"];

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
  function iso(d) { return new Date(Math.round(d) * 86400000).toISOString().slice(0, 10); }
  // Numbers for people: thousands separators, fixed decimals.
  function num(v, digits) {
    if (v === null || v === undefined) { return "-"; }
    var dg = digits === undefined ? 2 : digits;
    return v.toLocaleString("en-US", {minimumFractionDigits: dg, maximumFractionDigits: dg});
  }
  function money(v) {
    if (v === null || v === undefined) { return "-"; }
    var a = Math.abs(v);
    if (a >= 1e9) { return "$" + num(v / 1e9, 2) + "B"; }
    if (a >= 1e6) { return "$" + num(v / 1e6, 1) + "M"; }
    if (a >= 1e3) { return "$" + num(v / 1e3, 1) + "k"; }
    return "$" + num(v, 0);
  }
  function pct(v, digits) { return v === null || v === undefined ? "-" : num(v, digits) + "%"; }
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
  function digits(t) {
    var step = t.length > 1 ? t[1] - t[0] : 1;
    return step >= 1 ? 0 : Math.min(4, Math.ceil(-Math.log10(step)));
  }
  // Month starts between two days, at most `n` of them, labelled "Sep 2025".
  function monthTicks(d0, d1, n) {
    var out = [], t = new Date(d0 * 86400000);
    var m = new Date(Date.UTC(t.getUTCFullYear(), t.getUTCMonth() + 1, 1));
    while (m.getTime() / 86400000 <= d1) {
      out.push(m.getTime() / 86400000);
      m = new Date(Date.UTC(m.getUTCFullYear(), m.getUTCMonth() + 1, 1));
    }
    var every = Math.max(1, Math.ceil(out.length / n));
    return out.filter(function (_, i) { return i % every === 0; }).map(function (d) {
      var x = new Date(d * 86400000);
      return [d, MONTHS[x.getUTCMonth()] + " " + x.getUTCFullYear()];
    });
  }
  function quantile(sorted, q) {
    if (!sorted.length) { return null; }
    var i = (sorted.length - 1) * q, lo = Math.floor(i), hi = Math.ceil(i);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (i - lo);
  }
  function frame(box, w, h, m) {
    var svg = el("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img"}, box);
    svg.dataset.marks = "0";
    return {svg: svg, x0: m[3], x1: w - m[1], y0: h - m[2], y1: m[0]};
  }
  function mark(f, n) { f.svg.dataset.marks = String(Number(f.svg.dataset.marks) + (n || 1)); }
  function yAxis(f, lo, hi, unit) {
    var y = scale(lo, hi, f.y0, f.y1), t = ticks(lo, hi, 4), dg = digits(t);
    t.forEach(function (v) {
      el("line", {x1: f.x0, x2: f.x1, y1: y(v), y2: y(v), stroke: "#eee"}, f.svg);
      label(f.svg, f.x0 - 4, y(v) + 4, num(v, dg) + (unit || ""), {"text-anchor": "end"});
    });
    return y;
  }
  function empty(box, text) { return html("p", text, box, "empty"); }

  // One pool's APY on the shared axis [axis.start, axis.end]. The y range is robust (the 2nd to
  // 98th percentile of the pool's values, widened by their spread): a value outside it is drawn
  // at the edge as an orange triangle whose tooltip gives the real value, and the panel says how
  // many were clipped.
  function poolChart(box, p, axis) {
    var f = frame(box, 420, 190, [12, 16, 22, 46]);
    var pts = p.actual.map(function (a) { return [day(a[0]), a[1]]; });
    var fc = p.forecast.map(function (a) { return [day(a[0]), a[1]]; });
    var ahead = p.ahead.filter(function (a) { return a.value !== null; });
    var vals = pts.concat(fc).map(function (q) { return q[1]; })
      .concat(ahead.map(function (a) { return a.value; }))
      .filter(function (v) { return v !== null && v !== undefined; })
      .sort(function (a, b) { return a - b; });
    if (!vals.length) { empty(box, "no data in the window"); return 0; }
    var q0 = quantile(vals, 0.02), q1 = quantile(vals, 0.98);
    var span = Math.max(q1 - q0, Math.abs(q1) * 0.1, 0.5);
    var lo = q0 - span, hi = q1 + span;  // a spike is a value far outside the usual range
    if (q0 >= 0 && lo < 0) { lo = Math.max(lo, -span * 0.1); }
    var inside = vals.filter(function (v) { return v >= lo && v <= hi; });
    lo = Math.max(lo, inside[0] - span * 0.1);  // no empty band when nothing is clipped there
    hi = Math.min(hi, inside[inside.length - 1] + span * 0.1);
    var x = scale(day(axis.start), day(axis.end) + 2, f.x0, f.x1);
    var y = yAxis(f, lo, hi, "%");
    var clipped = 0;
    function cy(v) { return y(Math.max(lo, Math.min(hi, v))); }
    function clip(xv, v, what) {
      if (v >= lo && v <= hi) { return false; }
      var up = v > hi, yy = up ? f.y1 : f.y0, cx = x(xv);
      var t = el("path", {d: "M" + (cx - 4) + "," + (yy + (up ? 6 : -6)) + "L" + (cx + 4) + "," +
                          (yy + (up ? 6 : -6)) + "L" + cx + "," + yy + "Z", fill: COLORS.clip,
                          "class": "clipped"}, f.svg);
      title(t, what + " " + pct(v) + " on " + iso(xv) + " (outside the axis, clipped)");
      clipped += 1;
      return true;
    }
    monthTicks(day(axis.start), day(axis.end), 4).forEach(function (t) {
      el("line", {x1: x(t[0]), x2: x(t[0]), y1: f.y1, y2: f.y0, stroke: "#f1f1f1"}, f.svg);
      label(f.svg, x(t[0]), f.y0 + 15, t[1], {"text-anchor": "middle"});
    });
    var asOf = x(day(axis.as_of));
    el("line", {x1: asOf, x2: asOf, y1: f.y1, y2: f.y0, stroke: "#9ca3af",
                "stroke-dasharray": "3"}, f.svg);
    var d = "", pen = false;
    pts.forEach(function (q) {
      if (q[1] === null) { pen = false; return; }
      clip(q[0], q[1], "actual APY");
      d += (pen ? "L" : "M") + x(q[0]).toFixed(1) + "," + cy(q[1]).toFixed(1);
      pen = true;
    });
    if (d) {
      el("path", {d: d, fill: "none", stroke: COLORS.actual, "stroke-width": 1.6,
                  "class": "series-actual"}, f.svg);
      mark(f, pts.length);
    }
    fc.forEach(function (q) {
      if (q[1] === null || clip(q[0], q[1], "next-day forecast")) { return; }
      var c = el("circle", {cx: x(q[0]), cy: y(q[1]), r: 2.5, fill: COLORS.forecast,
                            "class": "series-forecast"}, f.svg);
      title(c, iso(q[0]) + " next-day forecast " + pct(q[1]));
      mark(f);
    });
    ahead.forEach(function (a) {
      var ax = x(day(a.date));
      if (a.lower !== null && a.upper !== null) {
        el("line", {x1: ax, x2: ax, y1: cy(a.lower), y2: cy(a.upper), stroke: COLORS.forecast,
                    "stroke-width": 2, opacity: 0.5, "class": "series-interval"}, f.svg);
        clip(day(a.date), a.upper, a.horizon + "-day interval's upper end");
        clip(day(a.date), a.lower, a.horizon + "-day interval's lower end");
      }
      if (clip(day(a.date), a.value, a.horizon + "-day forecast")) { return; }
      var r = el("rect", {x: ax - 3, y: y(a.value) - 3, width: 6, height: 6,
                          fill: COLORS.forecast, "class": "series-ahead"}, f.svg);
      title(r, a.horizon + " day(s) ahead (" + a.date + "): " + pct(a.value) + " [" +
            pct(a.lower) + ", " + pct(a.upper) + "]");
      mark(f);
    });
    f.svg.dataset.clipped = String(clipped);
    return clipped;
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
      title(r, c + " pools with error in [" + num(lo + i * width) + ", " +
            num(lo + (i + 1) * width) + ") points");
      mark(f);
    });
    var xt = ticks(lo, hi, 5), dg = digits(xt);
    xt.forEach(function (v) { label(f.svg, x(v), f.y0 + 15, num(v, dg), {"text-anchor": "middle"}); });
    if (lo < 0 && hi > 0) {
      el("line", {x1: x(0), x2: x(0), y1: f.y1, y2: f.y0, stroke: "#111", "stroke-dasharray": "3"},
         f.svg);
    }
    label(f.svg, (f.x0 + f.x1) / 2, f.y0 + 30, "forecast - actual (APY points)",
          {"text-anchor": "middle"});
  }

  // items: [{label, values: [{v, color, name}]}]: horizontal bars grouped per item
  function bars(box, items, opts) {
    var per = items[0].values.length, rowH = 14 * per + 8, left = opts.left || 190;
    var f = frame(box, opts.width || 620, items.length * rowH + (opts.legend ? 30 : 10),
                  [6, 60, opts.legend ? 24 : 4, left]);
    var max = Math.max.apply(null, items.map(function (it) {
      return Math.max.apply(null, it.values.map(function (v) { return v.v || 0; }));
    })) || 1;
    var x = scale(0, max, f.x0, f.x1);
    var format = opts.format || num;
    items.forEach(function (it, i) {
      var top = f.y1 + i * rowH;
      label(f.svg, f.x0 - 6, top + rowH / 2 + 1, it.label, {"text-anchor": "end"});
      it.values.forEach(function (v, j) {
        if (v.v === null || v.v === undefined) { return; }
        var r = el("rect", {x: f.x0, y: top + j * 14, height: 12, width: Math.max(1, x(v.v) - f.x0),
                            fill: v.color, "class": "bar"}, f.svg);
        title(r, it.label + " " + (v.name || "") + ": " + format(v.v));
        label(f.svg, x(v.v) + 4, top + j * 14 + 10, format(v.v));
        mark(f);
      });
    });
    (opts.legend || []).forEach(function (l, i) {
      el("rect", {x: f.x0 + i * 110, y: f.y0 + 8, width: 10, height: 10, fill: l[1]}, f.svg);
      label(f.svg, f.x0 + i * 110 + 14, f.y0 + 17, l[0]);
    });
  }

  // Active pools by the day of their latest data: green within the stale limit, red before it
  // (at least 3 px high, so that a day with one pool shows next to a day with thousands).
  function freshnessChart(box, fr, asOf) {
    var f = frame(box, 900, 170, [10, 16, 38, 48]);
    var known = fr.by_day.filter(function (b) { return b[0] !== "never"; });
    if (!known.length) { empty(box, "no active pool has data"); return; }
    var d0 = Math.min(day(known[0][0]), day(asOf) - 30), d1 = day(asOf) + 1;
    var x = scale(d0, d1, f.x0, f.x1);
    var max = Math.max.apply(null, known.map(function (b) { return b[1] + b[2]; }));
    var y = yAxis(f, 0, max, "");
    var w = Math.max(3, (f.x1 - f.x0) / (d1 - d0) - 1);
    known.forEach(function (b) {
      [[b[1], COLORS.fresh, "fresh"], [b[2], COLORS.stale, "stale"]].forEach(function (s) {
        if (!s[0]) { return; }
        var h = Math.max(3, f.y0 - y(s[0]));  // a day with one pool stays visible
        var r = el("rect", {x: x(day(b[0])) - w / 2, y: f.y0 - h, width: w, height: h,
                            fill: s[1], "class": "bar " + s[2]}, f.svg);
        title(r, s[0] + " " + s[2] + " pool(s) whose latest data is from " + b[0]);
        mark(f);
      });
    });
    var cut = x(day(fr.since) - 0.5);
    el("line", {x1: cut, x2: cut, y1: f.y1, y2: f.y0, stroke: "#111", "stroke-dasharray": "3"},
       f.svg);
    label(f.svg, cut - 4, f.y1 + 10, "stale before " + fr.since, {"text-anchor": "end"});
    monthTicks(d0, d1, 8).forEach(function (t) {
      label(f.svg, x(t[0]), f.y0 + 15, t[1], {"text-anchor": "middle"});
    });
    label(f.svg, (f.x0 + f.x1) / 2, f.y0 + 32, "day of each active pool's latest data",
          {"text-anchor": "middle"});
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
      title(b, r.started_at + " " + r.stage + " " + r.status + ": " + num(r.seconds) + " s");
      mark(f);
    });
    [["ingest", COLORS.ingest], ["metrics", COLORS.metrics], ["forecast", COLORS.forecast],
     ["failed", COLORS.failed]].forEach(function (l, i) {
      el("rect", {x: f.x0 + i * 100, y: f.y0 + 22, width: 10, height: 10, fill: l[1]}, f.svg);
      label(f.svg, f.x0 + i * 100 + 14, f.y0 + 31, l[0]);
    });
    label(f.svg, f.x0, f.y0 + 14, "from " + done[0].started_at.slice(0, 16).replace("T", " "));
    if (done.length > 1) {
      var last = done[done.length - 1].started_at.slice(0, 16).replace("T", " ");
      label(f.svg, f.x1, f.y0 + 14, "to " + last, {"text-anchor": "end"});
    }
  }

  // A plain table; columns: [header, cell(row) -> text, class(row) -> class name (optional)].
  function table(box, rows, columns) {
    var t = html("table", null, box), head = html("tr", null, t);
    columns.forEach(function (c) { html("th", c[0], head); });
    rows.forEach(function (r) {
      var tr = html("tr", null, t);
      columns.forEach(function (c) {
        var v = c[1](r);
        html("td", v === null || v === undefined ? "" : String(v), tr, c[2] ? c[2](r) : "");
      });
    });
    return t;
  }

  return {COLORS: COLORS, el: el, html: html, day: day, num: num, money: money, pct: pct,
          empty: empty, poolChart: poolChart, histogram: histogram, bars: bars,
          freshnessChart: freshnessChart, runsChart: runsChart, table: table};
})();

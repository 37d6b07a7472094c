// poolcast report: fills every section from the data (R: the chart helpers in report.js).
(function () {
  "use strict";
  var errorsBox = document.getElementById("errors");
  function fault(text) { errorsBox.textContent += text + " "; }
  window.addEventListener("error", function (e) { fault(e.message); });
  var html = R.html, num = R.num, pct = R.pct, money = R.money, empty = R.empty;
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var HZ = {"1": "1 day", "7": "7 days", "mean7": "mean 7 days", "30": "30 days"};

  function section(id) { return document.getElementById(id); }
  function note(box, text) { return html("p", text, box, "note"); }
  function cards(box, items) {
    items.forEach(function (c) {
      var d = html("div", null, box, "card" + (c[2] ? " " + c[2] : ""));
      html("b", String(c[1]), d);
      html("span", c[0], d);
    });
  }

  document.getElementById("meta").textContent = data.store + " | generated " + data.generated +
    " | poolcast " + data.version;

  // -- an empty store: say what to run, hide the rest -----------------------------------------
  if (data.empty) {
    document.querySelectorAll("section[data-section]").forEach(function (s) {
      if (s.id !== "empty" && s.id !== "runs") { s.hidden = true; }
    });
    var box = section("empty-body");
    var why = data.empty.reason.charAt(0).toUpperCase() + data.empty.reason.slice(1);
    html("p", why.replace(/\.$/, "") + ". Run, in this order (data/sample is the shipped " +
         "sample; give your own API files instead):", box);
    var ol = html("ol", null, box, "steps");
    data.empty.steps.forEach(function (s) {
      var li = html("li", null, ol);
      html("code", s[0] + " --store " + data.store, li);
      html("span", "  " + s[1], li);
    });
    note(box, "Or `make demo` in a clone of poolcast: the shipped sample data, end to end.");
    R.runsChart(section("runs-chart"), data.runs);
    document.body.dataset.rendered = errorsBox.textContent ? "error" : "ok";
    return;
  }
  section("empty").hidden = true;

  // -- header: the as-of day, explained ----------------------------------------------------------
  var s = data.summary, fr = data.freshness, e = data.errors, v = data.validate;
  section("asof").textContent = "As of " + data.as_of + ": " + data.as_of_why + ". Forecasts " +
    "are made for the days after each pool's latest data (" + data.forecast_day + " for a pool " +
    "that reported on " + data.as_of + "). " + num(fr.stale, 0) + " of " + num(fr.active, 0) +
    " active pools have no data since " + fr.since + " (" + fr.stale_days + " days up to the " +
    "as-of day): they are flagged stale, and their forecasts are for older days.";
  cards(section("cards"), [
    ["active pools with data since " + fr.since, num(fr.fresh, 0) + " / " + num(fr.active, 0),
     fr.stale ? "warn" : ""],
    ["stale active pools", num(fr.stale, 0), fr.stale ? "bad" : ""],
    ["pools with a forecast", num(data.table.total, 0)],
    ["metrics rows, " + s.first_day + " to " + s.last_day, num(s.rows, 0)],
    ["validate (" + (v.error ? "did not run" : v.as_of) + ")",
     v.error ? "error" : (v.ok ? "OK" : "FAIL") + (v.counts && v.counts.warn ? ", " +
       v.counts.warn + " warn" : ""), v.error || !v.ok ? "bad" : (v.counts.warn ? "warn" : "")],
    ["next-day MAE on " + e.day, e.values.length ? num(e.mae) + " (naive " + num(e.naive_mae) +
     ")" : "not scored yet"]]);

  // -- the forecast table: sortable, biggest predicted moves first ------------------------------
  var t = data.table, tbox = section("forecast-table");
  note(tbox, "Each active pool's latest forecasts (APY %) with their 80% interval (low–high, " +
       "in small type), next to " +
       "its last APY. Sorted by the biggest predicted move (largest |forecast - last APY| over " +
       "the horizons); click a column to sort by it. " + (t.shown < t.total ? "The " + t.shown +
       " largest moves of " + num(t.total, 0) + " pools are shown." : num(t.total, 0) +
       " pools.") + " Stale: no data in the " + fr.stale_days + " days up to " + data.as_of + ".");
  var columns = [
    {key: "pool", head: "pool", text: function (r) { return r.symbol || r.pool_id.slice(0, 8); },
     sort: function (r) { return (r.symbol || "").toLowerCase(); }, tip: function (r) {
       return r.pool_id; }},
    {key: "chain", head: "chain", text: function (r) { return r.chain; },
     sort: function (r) { return (r.chain || "").toLowerCase(); }},
    {key: "project", head: "project", text: function (r) { return r.project; },
     sort: function (r) { return (r.project || "").toLowerCase(); }},
    {key: "tvl", head: "TVL", num: true, text: function (r) { return money(r.tvl); },
     sort: function (r) { return r.tvl; }},
    {key: "apy", head: "last APY", num: true, text: function (r) { return pct(r.apy); },
     sort: function (r) { return r.apy; }},
    {key: "apy_date", head: "on", text: function (r) { return r.apy_date; },
     sub: function (r) { return r.stale ? "stale, " + num(r.age_days, 0) + " d" : ""; },
     sort: function (r) { return r.apy_date; }, cls: function (r) { return r.stale ? "stale" : ""; }}
  ];
  t.horizons.forEach(function (h) {
    columns.push({key: "h" + h, head: HZ[h] || h, num: true, text: function (r) {
      var f = r.h[h];
      return f && f.value !== null ? pct(f.value) : "-";
    }, sub: function (r) {
      var f = r.h[h];
      return f && f.lower !== null && f.upper !== null ? num(f.lower) + "–" + num(f.upper) : "";
    }, sort: function (r) { return r.h[h] ? r.h[h].value : null; }, tip: function (r) {
      return r.h[h] ? "for " + r.h[h].date : ""; }});
  });
  columns.push({key: "move", head: "biggest move", num: true, text: function (r) {
    return r.move === null ? "-" : (r.move > 0 ? "+" : "") + num(r.move) + " (" +
      (HZ[r.move_horizon] || r.move_horizon) + ")";
  }, sort: function (r) { return r.move === null ? null : Math.abs(r.move); },
    cls: function (r) { return r.move > 0 ? "up" : r.move < 0 ? "down" : ""; }});
  var sortKey = "move", sortDesc = true;
  var hash = /sort=(-?)([a-z0-9_]+)/.exec(location.hash || "");
  if (hash) { sortKey = hash[2]; sortDesc = hash[1] === "-"; }
  var ftable = html("table", null, tbox, "sortable"), thead = html("tr", null, ftable);
  var tbody = html("tbody", null, ftable);
  ftable.id = "forecasts";
  columns.forEach(function (c) {
    var th = html("th", c.head, thead, c.num ? "num" : "");
    th.dataset.key = c.key;
    th.tabIndex = 0;
    th.addEventListener("click", function () {
      sortDesc = sortKey === c.key ? !sortDesc : !!c.num;
      sortKey = c.key;
      fill();
    });
    th.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); th.click(); }
    });
  });
  function fill() {
    var col = columns.filter(function (c) { return c.key === sortKey; })[0] || columns[0];
    var rows = t.rows.slice().sort(function (a, b) {
      var x = col.sort(a), y = col.sort(b);
      if (x === null || x === undefined) { return 1; }
      if (y === null || y === undefined) { return -1; }
      return (x < y ? -1 : x > y ? 1 : 0) * (sortDesc ? -1 : 1);
    });
    thead.querySelectorAll("th").forEach(function (th) {
      th.setAttribute("aria-sort", th.dataset.key === col.key ?
        (sortDesc ? "descending" : "ascending") : "none");
    });
    tbody.textContent = "";
    rows.forEach(function (r) {
      var tr = html("tr", null, tbody, r.stale ? "stale-row" : "");
      tr.dataset.pool = r.pool_id;
      columns.forEach(function (c) {
        var td = html("td", c.text(r), tr, (c.num ? "num " : "") + (c.cls ? c.cls(r) : ""));
        var sub = c.sub ? c.sub(r) : "";
        if (sub) { html("small", sub, td); }
        if (c.tip) { td.title = c.tip(r); }
      });
    });
    ftable.dataset.sortedBy = (sortDesc ? "-" : "") + col.key;
  }
  if (t.rows.length) { fill(); } else {
    ftable.hidden = true;
    empty(tbox, "no forecasts yet: run `poolcast forecast` (or `poolcast run`)");
  }

  // -- data freshness -----------------------------------------------------------------------------
  var fbox = section("freshness-body");
  note(fbox, num(fr.fresh, 0) + " of " + num(fr.active, 0) + " active pools have data since " +
       fr.since + "; " + num(fr.stale, 0) + " are stale (latest data before it)." +
       (data.latest_data_day ? " The latest snapshot of any active pool is from " +
        data.latest_data_day + "." : ""));
  var fchart = html("div", null, fbox, "chart");
  fchart.dataset.chart = "freshness";
  R.freshnessChart(fchart, fr, data.as_of);
  if (fr.stale_pools.length) {
    note(fbox, "Stale pools, oldest data first" + (fr.stale > fr.stale_pools.length ?
         " (the first " + fr.stale_pools.length + " of " + num(fr.stale, 0) + ")" : "") + ":");
    R.table(html("div", null, fbox, "scroll"), fr.stale_pools, [
      ["pool", function (r) { return r.label || r.pool_id; }],
      ["pool id", function (r) { return r.pool_id; }],
      ["latest data", function (r) { return r.last_day || "never"; }, function () {
        return "stale"; }],
      ["days before " + data.as_of, function (r) { return r.age_days === null ? "" :
        num(r.age_days, 0); }]]);
  }

  // -- validate and quarantined input -------------------------------------------------------------
  var vbox = section("validate-body");
  if (v.error) {
    empty(vbox, "validate could not run: " + v.error);
  } else {
    var counts = Object.keys(v.counts).map(function (k) {
      return v.counts[k] + " " + k; }).join(", ");
    if (v.source === "stored") {
      note(vbox, "The latest `poolcast validate` of " + v.as_of + ", stored in the store: run " +
           v.checked_at + " (seed " + v.seed + "), every check's status the same since " +
           v.unchanged_since + ": " + counts + "." + (v.changed_after ? " A " +
           v.changed_after.stage + " run finished after it (" + v.changed_after.finished_at +
           "): rerun `poolcast validate` to check what it wrote." : ""));
    } else {
      note(vbox, "No stored `poolcast validate` of " + v.as_of + ": `poolcast validate --as-of " +
           v.as_of + " --seed " + v.seed + "`, run while this report was written (not stored): " +
           counts + ".");
    }
    R.table(vbox, v.checks, [
      ["status", function (r) { return r.status.toUpperCase(); }, function (r) {
        return "status-" + r.status; }],
      ["check", function (r) { return r.name; }],
      ["message", function (r) { return r.message; }]]);
  }
  var q = data.quarantine;
  note(vbox, q.count ? num(q.count, 0) + " input record(s) quarantined by `poolcast ingest " +
       "--skip-bad`" + (q.count > q.rows.length ? " (first " + q.rows.length + ")" : "") + ":" :
       "No input record quarantined (ingest_quarantine is empty).");
  if (q.rows.length) {
    R.table(vbox, q.rows, [["file", function (r) { return r.file; }],
      ["pool", function (r) { return r.pool_id; }], ["record", function (r) {
        return r.record_index; }], ["field", function (r) { return r.field; }],
      ["reason", function (r) { return r.reason; }]]);
  }

  // -- pool panels on one shared, dated axis ------------------------------------------------------
  var pn = data.panels, pbox = section("pools");
  note(section("pools-note"), "The largest active pools by TVL with at least " + pn.min_days +
       " days of data between " + pn.start + " and " + data.as_of + " (dashed line), all on " +
       "the same axis to " + pn.end + ". Line: actual APY; dots: the next-day forecast stored " +
       "for each day; squares and whiskers: the latest 1, 7 and 30-day forecasts with their 80% " +
       "interval. Orange triangles: values beyond the axis (spikes), clipped; hover for the " +
       "value." + (pn.without_data ? " " + num(pn.without_data, 0) + " active pools have " +
       "fewer days of data in this window and are not shown." : ""));
  if (!pn.pools.length) { empty(pbox, "no active pool has " + pn.min_days + " days of data " +
                                "in this window; see Data freshness"); }
  pn.pools.forEach(function (p) {
    var d = html("div", null, pbox, "pool chart");
    d.dataset.chart = "pool";
    html("h3", p.label || p.pool_id, d);
    var line = html("p", "TVL " + money(p.tvl) + " | APY " + pct(p.apy) + " on " + p.last_day +
                    " | " + p.pool_id, d);
    var clipped = R.poolChart(d, p, {start: pn.start, end: pn.end, as_of: data.as_of});
    if (clipped) { line.textContent += " | " + clipped + " value(s) clipped"; }
  });

  // -- yesterday's errors -------------------------------------------------------------------------
  var errBox = section("errors-chart");
  errBox.dataset.chart = "errors";
  if (e.values.length) {
    note(errBox, e.values.length + " pools scored on " + e.day + ": MAE " + num(e.mae) +
         " APY points; naive (APY as the day before) " + num(e.naive_mae) + ".");
    R.histogram(errBox, e.values);
    R.table(section("worst"), e.worst, [
      ["largest errors", function (r) { return r.label || r.pool_id.slice(0, 18); }],
      ["actual", function (r) { return pct(r.actual); }],
      ["forecast", function (r) { return pct(r.forecast); }]]);
  } else {
    empty(errBox, "No forecast for " + e.day + " has been scored yet: a day's forecast is made " +
          "by the run of the day before, so the next daily run (`poolcast run --incremental`) " +
          "scores today's.");
  }

  // -- backtest: its source, its days and its coverage ----------------------------------------
  var bt = data.backtest, btBox = section("backtest-chart");
  btBox.dataset.chart = "backtest";
  if (bt && bt.rows && bt.rows.length) {
    section("backtest-title").textContent = "Backtest: " + bt.title;
    note(btBox, bt.detail);
    R.bars(btBox, bt.rows.map(function (b) {
      return {label: (HZ[b.horizon] || b.horizon) + " (n=" + num(b.n, 0) + ")",
              values: [{v: b.mae, color: R.COLORS.model, name: "model MAE"},
                       {v: b.naive_mae, color: R.COLORS.naive, name: "naive MAE"}]};
    }), {legend: [["model MAE", R.COLORS.model], ["naive MAE", R.COLORS.naive]]});
    var cols = [["horizon", function (r) { return HZ[r.horizon] || r.horizon; }],
      ["model MAE", function (r) { return num(r.mae, 3); }],
      ["naive MAE", function (r) { return num(r.naive_mae, 3); }],
      ["n", function (r) { return num(r.n, 0); }],
      ["80% interval coverage", function (r) {
        return r.coverage === null || r.coverage === undefined ? (bt.source === "holdout" ?
          "fitted here (80%)" : "-") : num(r.coverage * 100, 1) + "%"; }]];
    if (bt.source === "holdout") {
      cols.push(["holdout (latest pool)", function (r) { return r.from ? r.from + " to " + r.to +
        " (" + r.holdout_days + " days)" : ""; }]);
    } else {
      cols.push(["pools", function (r) { return r.pools === undefined ? "" : num(r.pools, 0); }]);
    }
    R.table(btBox, bt.rows, cols).className = "backtest";
    if (bt.cutoffs && bt.cutoffs.length) { note(btBox, "Cutoffs: " + bt.cutoffs.join(", ")); }
  } else {
    empty(btBox, "Not available: the current model carries no backtest; run `poolcast " +
          "backtest --json > bt.json` and `poolcast report --backtest bt.json`.");
  }

  // -- feature importance of every horizon ------------------------------------------------------
  var impBox = section("importance-charts"), m = data.model || {};
  if (m.importance && m.importance.length) {
    note(section("importance-note"), "Share of total gain of each horizon's main booster " +
         "(its first member; the top 10 features), model " + (m.version || "") + " at " +
         (m.path || "") + ".");
    m.importance.forEach(function (imp) {
      var d = html("div", null, impBox, "chart");
      d.dataset.chart = "importance";
      d.dataset.horizon = imp.horizon;
      html("h3", imp.name + " ahead (" + imp.file + (imp.members > 1 ? ", 1 of " + imp.members +
           " members" : "") + ")", d);
      R.bars(d, imp.features.slice(0, 10).map(function (f) {
        return {label: f[0], values: [{v: f[1] * 100, color: R.COLORS.model}]};
      }), {width: 430, left: 172, format: function (x) { return num(x, 1) + "%"; }});
    });
  } else { empty(impBox, m.note || "no model"); }

  // -- runs ---------------------------------------------------------------------------------------
  R.runsChart(section("runs-chart"), data.runs);
  R.table(section("runs-table"), data.runs.slice().reverse().slice(0, 12), [
    ["started (UTC)", function (r) { return r.started_at.replace("T", " "); }],
    ["run", function (r) { return r.run_id; }], ["stage", function (r) { return r.stage; }],
    ["status", function (r) { return r.status; }, function (r) { return r.status; }],
    ["seconds", function (r) { return r.seconds === null ? "" : num(r.seconds); }],
    ["rows written", function (r) { return r.rows_written === null ? "" :
      num(r.rows_written, 0); }],
    ["error", function (r) { return r.error; }]]);

  document.getElementById("footer").textContent = "Self-contained: data, styles and charts are " +
    "in this file; nothing is loaded from the network.";
  document.body.dataset.rendered = errorsBox.textContent ? "error" : "ok";
})();

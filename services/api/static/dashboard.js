// viewcounter dashboard: report routes drawn as SVG charts and a table. No framework, no
// build step, no inline code (the page's CSP forbids it). The report token is asked for once
// per tab, kept in sessionStorage and sent as a bearer token.
(function () {
  "use strict";

  var TOKEN_KEY = "viewcounter.reportToken";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 800, H = 240, LEFT = 56, RIGHT = 10, TOP = 12, BOTTOM = 28;
  var site = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop() || "");
  var base = "/v1/sites/" + encodeURIComponent(site);
  var numbers = new Intl.NumberFormat(navigator.language || "en");
  var timezone = null;
  var chosenPage = "";
  var liveTimer = null;

  function $(id) { return document.getElementById(id); }

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  function AuthError(message) { this.message = message; }

  function getJSON(path, params) {
    var query = new URLSearchParams();
    Object.keys(params || {}).forEach(function (k) {
      if (params[k] !== null && params[k] !== "") { query.set(k, params[k]); }
    });
    var url = base + path + (query.toString() ? "?" + query.toString() : "");
    return fetch(url, { headers: { Authorization: "Bearer " + token() }, cache: "no-store" })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (response.status === 401 || response.status === 403) {
            throw new AuthError((body.error && body.error.message) || "not allowed");
          }
          if (!response.ok) {
            var e = body.error || {};
            throw new Error((e.field ? e.field + ": " : "") + (e.message || response.status));
          }
          return body;
        });
      });
  }

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function niceMax(value) {
    if (value <= 0) { return 1; }
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 4, 8, 10];  // each divides into four whole grid steps above 4
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= value) { return steps[i] * power; }
    }
    return 10 * power;
  }

  // Bars for views per day, four grid lines, day labels spread to fit.
  function drawChart(svg, days, kind) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var max = niceMax(days.reduce(function (m, d) { return Math.max(m, d.views); }, 0));
    var plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM;
    for (var g = 0; g <= 4; g++) {
      var y = TOP + plotH - (plotH * g) / 4;
      svg.appendChild(el("line", { class: "grid", x1: LEFT, x2: W - RIGHT, y1: y, y2: y }));
      svg.appendChild(el("text", { class: "axis", x: LEFT - 6, y: y + 4, "text-anchor": "end" },
        numbers.format(Math.round((max * g) / 4))));
    }
    var step = plotW / Math.max(days.length, 1);
    var every = Math.max(1, Math.ceil(days.length / 10));
    days.forEach(function (d, i) {
      var h = (plotH * d.views) / max;
      var bar = el("rect", {
        class: "bar" + (kind === "page" ? " page" : ""),
        x: (LEFT + i * step + step * 0.1).toFixed(2),
        y: (TOP + plotH - h).toFixed(2),
        width: Math.max(step * 0.8, 1).toFixed(2),
        height: h.toFixed(2),
        "data-day": d.day,
        "data-views": d.views
      });
      bar.appendChild(el("title", {}, d.day + ": " + numbers.format(d.views)));
      svg.appendChild(bar);
      if (i % every === 0) {
        svg.appendChild(el("text", {
          class: "axis", x: LEFT + i * step + step / 2, y: H - 8, "text-anchor": "middle"
        }, d.day.slice(5)));
      }
    });
    svg.setAttribute("data-bars", String(days.length));
    svg.setAttribute("data-drawn", "true");
  }

  function fillTop(report) {
    var body = $("top").querySelector("tbody");
    while (body.firstChild) { body.removeChild(body.firstChild); }
    report.pages.forEach(function (p) {
      var row = document.createElement("tr");
      if (p.page === chosenPage) { row.className = "chosen"; }
      var share = report.site_views ? ((100 * p.views) / report.site_views).toFixed(1) + " %" : "";
      [[String(p.rank), "num"], [p.page, "page"], [numbers.format(p.views), "num"],
       [share, "num"]].forEach(function (cell) {
        var td = document.createElement("td");
        td.className = cell[1];
        td.textContent = cell[0];
        row.appendChild(td);
      });
      row.querySelector("td.page").addEventListener("click", function () {
        $("page").value = p.page;
        show();
      });
      body.appendChild(row);
    });
    $("top-range").textContent = report.from + " – " + report.to + " (" + report.timezone + ")";
  }

  function refreshLive() {
    return getJSON("/reports/totals").then(function (t) {
      timezone = t.timezone;
      var total = t.live_views;
      $("live-total").textContent = total === null ? "—" : numbers.format(total);
      $("live-total").setAttribute("data-value", total === null ? "" : String(total));
      $("live-detail").textContent = "flushed " + numbers.format(t.views) + " + carried over " +
        numbers.format(t.baseline);
      $("live").hidden = false;
    });
  }

  // The statistics block the site's pages show (GET stats: live, as counter.js fills it).
  function refreshStats() {
    return getJSON("/stats").then(function (stats) {
      Array.prototype.forEach.call($("stats").querySelectorAll("dd[data-stat]"), function (dd) {
        var value = stats[dd.getAttribute("data-stat")];
        dd.textContent = numbers.format(value);
        dd.setAttribute("data-value", String(value));
      });
      $("stats-day").textContent = stats.day + " (" + stats.timezone + ")";
      $("stats").setAttribute("data-state", "ready");
    });
  }

  function refreshNumbers() {
    refreshStats().catch(fail);
    return refreshLive();
  }

  function today(tz) {
    // en-CA formats dates as YYYY-MM-DD.
    return new Intl.DateTimeFormat("en-CA", { timeZone: tz || undefined }).format(new Date());
  }

  function minusDays(day, n) {
    var d = new Date(day + "T00:00:00Z");
    d.setUTCDate(d.getUTCDate() - n);
    return d.toISOString().slice(0, 10);
  }

  function fail(error) {
    if (error instanceof AuthError) {
      sessionStorage.removeItem(TOKEN_KEY);
      askToken(error.message);
      return;
    }
    $("error").textContent = error.message || String(error);
  }

  function show() {
    $("error").textContent = "";
    var range = { from: $("from").value, to: $("to").value };
    return Promise.all([
      getJSON("/reports/daily", range),
      getJSON("/reports/top", { from: range.from, to: range.to, limit: 20 })
    ]).then(function (answers) {
      var daily = answers[0], top = answers[1];
      drawChart($("chart-site"), daily.days, "site");
      $("site-sum").textContent = numbers.format(daily.views) + " views";
      chosenPage = $("page").value.trim() || (top.pages[0] ? top.pages[0].page : "");
      fillTop(top);
      if (!chosenPage) {
        $("page-name").textContent = "(no page viewed in this range)";
        drawChart($("chart-page"), [], "page");
        return null;
      }
      return getJSON("/reports/daily", { from: range.from, to: range.to, page: chosenPage })
        .then(function (pageDaily) {
          $("page-name").textContent = chosenPage;
          $("page-sum").textContent = numbers.format(pageDaily.views) + " views";
          drawChart($("chart-page"), pageDaily.days, "page");
        });
    }).then(function () {
      document.body.setAttribute("data-state", "ready");
    }).catch(fail);
  }

  function start() {
    $("login").hidden = true;
    $("main").hidden = false;
    refreshNumbers().then(function () {
      if (!$("to").value) { $("to").value = today(timezone); }
      if (!$("from").value) { $("from").value = minusDays($("to").value, 29); }
      if (liveTimer === null) {
        liveTimer = setInterval(function () { refreshNumbers().catch(fail); }, 5000);
      }
      return show();
    }).catch(fail);
  }

  function askToken(message) {
    if (liveTimer !== null) { clearInterval(liveTimer); liveTimer = null; }
    $("main").hidden = true;
    $("live").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("site").textContent = site;
    document.title = "viewcounter · " + site;
    $("login").addEventListener("submit", function (event) {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      start();
    });
    $("range").addEventListener("submit", function (event) {
      event.preventDefault();
      show();
    });
    $("forget").addEventListener("click", function () {
      sessionStorage.removeItem(TOKEN_KEY);
      askToken("");
    });
    if (token()) { start(); } else { askToken(""); }
  });
})();

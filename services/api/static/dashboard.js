// viewcounter dashboard for a site's editors: report routes drawn as SVG charts, each with a
// table alternative, and a table of top pages. No framework, no build step, no inline code
// (the page's CSP forbids it).
//
// Sign-in: the site and its key (a report or admin key of that site, or a token that opens
// every site). Both are kept in sessionStorage (this tab only) and the key is sent as a bearer
// token to that site's report routes only: the page never asks which other sites exist.
//
// Language: Vietnamese or English, from the browser's languages unless the reader chose one
// with the switch (kept in localStorage). Numbers and dates follow it (vi-VN: 37.409.357 and
// dd/mm/yyyy).
(function () {
  "use strict";

  var CREDENTIAL_KEY = "viewcounter.dashboard";
  var LANG_KEY = "viewcounter.lang";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 800, H = 240, LEFT = 56, RIGHT = 10, TOP = 12, BOTTOM = 28;
  var LOCALES = { vi: "vi-VN", en: "en-US" };

  var TEXTS = {
    vi: {
      title: "Thống kê lượt xem",
      language: "Ngôn ngữ",
      live_total: "Tổng lượt xem",
      live_detail: "đã lưu {views} + số liệu chuyển sang {baseline}",
      sign_in: "Đăng nhập",
      site: "Trang web",
      key: "Khóa truy cập (khóa báo cáo hoặc khóa quản trị của trang web)",
      key_note: "Khóa chỉ được giữ trong thẻ này (sessionStorage) và chỉ gửi tới các báo cáo " +
        "của trang web đã chọn.",
      from: "Từ ngày",
      date_format: "Ngày viết dạng dd/mm/yyyy (ví dụ 06/12/2026).",
      bad_day: "Ngày không hợp lệ: {value} (viết dạng dd/mm/yyyy).",
      to: "Đến ngày",
      page: "Trang",
      page_placeholder: "mã trang; để trống: trang xem nhiều nhất",
      show: "Xem",
      sign_out: "Đăng xuất",
      stats_block: "Khối thống kê",
      online: "Đang truy cập",
      today: "Hôm nay",
      yesterday: "Hôm qua",
      this_week: "Tuần này",
      this_month: "Tháng này",
      total: "Tổng cộng",
      views_per_day: "Lượt xem theo ngày",
      chart_site: "Biểu đồ cột: lượt xem mỗi ngày của trang web",
      chart_page: "Biểu đồ cột: lượt xem mỗi ngày của trang đã chọn",
      as_table: "Xem dạng bảng",
      caption_site: "Lượt xem mỗi ngày của {site}, {from} – {to}",
      caption_page: "Lượt xem mỗi ngày của trang {page}, {from} – {to}",
      day: "Ngày",
      views: "Lượt xem",
      share: "Tỷ lệ",
      top_pages: "Trang xem nhiều nhất",
      n_views: "{n} lượt xem",
      no_page: "(không có trang nào được xem trong khoảng này)",
      choose_page: "Xem biểu đồ của trang {page}",
      wrong_key: "Khóa này không mở được báo cáo của {site}: hãy đăng nhập bằng khóa báo cáo " +
        "hoặc khóa quản trị của trang web này.",
      unknown_site: "Không có trang web {site} cho khóa này.",
      bad_site: "Tên trang web không hợp lệ: {site}.",
      failed: "Không tải được dữ liệu: {error}"
    },
    en: {
      title: "Page views",
      language: "Language",
      live_total: "Live total",
      live_detail: "stored {views} + carried over {baseline}",
      sign_in: "Sign in",
      site: "Site",
      key: "Key (the site's report or admin key)",
      key_note: "Kept in this tab only (sessionStorage) and sent only to the chosen site's " +
        "reports.",
      from: "From",
      date_format: "Days as yyyy-mm-dd (for example 2026-12-06).",
      bad_day: "Not a valid day: {value} (write it as yyyy-mm-dd).",
      to: "To",
      page: "Page",
      page_placeholder: "a page id; empty: the top page",
      show: "Show",
      sign_out: "Sign out",
      stats_block: "Statistics block",
      online: "Online now",
      today: "Today",
      yesterday: "Yesterday",
      this_week: "This week",
      this_month: "This month",
      total: "Total",
      views_per_day: "Views per day",
      chart_site: "Bar chart: the site's views per day",
      chart_page: "Bar chart: the chosen page's views per day",
      as_table: "Show as a table",
      caption_site: "Views per day of {site}, {from} – {to}",
      caption_page: "Views per day of page {page}, {from} – {to}",
      day: "Day",
      views: "Views",
      share: "Share",
      top_pages: "Top pages",
      n_views: "{n} views",
      no_page: "(no page viewed in this range)",
      choose_page: "Show the chart of page {page}",
      wrong_key: "This key does not open the reports of {site}: sign in with a report or " +
        "admin key of this site.",
      unknown_site: "No site {site} for this key.",
      bad_site: "Not a valid site name: {site}.",
      failed: "Could not load the data: {error}"
    }
  };

  var lang = "en";
  var site = "";
  var timezone = null;
  var chosenPage = "";
  var liveTimer = null;
  var drawn = null;  // the last answers, redrawn when the language changes
  var range = null;  // {from, to}: the local days shown (YYYY-MM-DD)

  function $(id) { return document.getElementById(id); }

  function t(key, values) {
    var text = (TEXTS[lang] && TEXTS[lang][key]) || TEXTS.en[key] || key;
    return text.replace(/\{(\w+)\}/g, function (all, name) {
      return values && values[name] !== undefined ? String(values[name]) : all;
    });
  }

  // The reader's choice, else the first of the browser's languages we speak, else English.
  function initialLanguage() {
    var chosen = null;
    try { chosen = localStorage.getItem(LANG_KEY); } catch (e) { chosen = null; }
    if (chosen && TEXTS[chosen]) { return chosen; }
    var wanted = navigator.languages && navigator.languages.length ?
      navigator.languages : [navigator.language || "en"];
    for (var i = 0; i < wanted.length; i++) {
      var primary = String(wanted[i]).toLowerCase().split("-")[0];
      if (TEXTS[primary]) { return primary; }
    }
    return "en";
  }

  function number(value) { return new Intl.NumberFormat(LOCALES[lang]).format(value); }

  function percent(share) {
    return new Intl.NumberFormat(LOCALES[lang], {
      style: "percent", minimumFractionDigits: 1, maximumFractionDigits: 1
    }).format(share);
  }

  // A local day (YYYY-MM-DD) as the reader writes it: dd/mm/yyyy in Vietnamese.
  function date(day) {
    var options = lang === "vi" ?
      { day: "2-digit", month: "2-digit", year: "numeric", timeZone: "UTC" } :
      { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" };
    return new Intl.DateTimeFormat(LOCALES[lang], options).format(new Date(day + "T00:00:00Z"));
  }

  // A day on the charts' axis: dd/mm in Vietnamese (vi-VN's own month-day form has a dash).
  function shortDate(day) {
    if (lang === "vi") { return date(day).slice(0, 5); }
    return new Intl.DateTimeFormat(LOCALES[lang], { day: "numeric", month: "short", timeZone: "UTC" })
      .format(new Date(day + "T00:00:00Z"));
  }

  // A day as the range fields show it: dd/mm/yyyy in Vietnamese, yyyy-mm-dd in English (a
  // text field: the browser's own date picker follows its interface language, not ours).
  function fieldDay(day) { return lang === "vi" ? date(day) : day; }

  // A typed day as YYYY-MM-DD, or null: yyyy-mm-dd always, d/m/yyyy (or with dots or dashes)
  // in Vietnamese.
  function parseDay(text) {
    var value = text.trim(), m = /^(\d{4})-(\d{1,2})-(\d{1,2})$/.exec(value), y, mo, d;
    if (m) { y = +m[1]; mo = +m[2]; d = +m[3]; } else if (lang === "vi" &&
        (m = /^(\d{1,2})[\/.\-](\d{1,2})[\/.\-](\d{4})$/.exec(value))) {
      d = +m[1]; mo = +m[2]; y = +m[3];
    } else {
      return null;
    }
    var when = new Date(Date.UTC(y, mo - 1, d));
    if (when.getUTCFullYear() !== y || when.getUTCMonth() !== mo - 1 || when.getUTCDate() !== d) {
      return null;
    }
    return when.toISOString().slice(0, 10);
  }

  function writeRange() {
    if (!range) { return; }
    $("from").value = fieldDay(range.from);
    $("to").value = fieldDay(range.to);
  }

  // The range the fields say, or null (the first bad field marked and named).
  function readRange() {
    var read = {}, bad = null;
    ["from", "to"].forEach(function (id) {
      var day = parseDay($(id).value);
      $(id).setAttribute("aria-invalid", day ? "false" : "true");
      if (!day && !bad) { bad = $(id).value; }
      read[id] = day;
    });
    if (bad !== null) {
      $("error").textContent = t("bad_day", { value: bad });
      return null;
    }
    return read;
  }

  function applyLanguage() {
    document.documentElement.lang = lang;
    $("lang").value = lang;
    Array.prototype.forEach.call(document.querySelectorAll("[data-i18n]"), function (node) {
      node.textContent = t(node.getAttribute("data-i18n"));
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-i18n-label]"), function (node) {
      node.setAttribute("aria-label", t(node.getAttribute("data-i18n-label")));
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-i18n-placeholder]"),
      function (node) { node.setAttribute("placeholder", t(node.getAttribute("data-i18n-placeholder"))); });
    document.title = t("title") + (site ? " · " + site : "") + " · viewcounter";
    writeRange();
    if (drawn) { redraw(); }
  }

  // --- the credential: one site and its key, this tab only -----------------------------

  function credential() {
    try {
      var stored = JSON.parse(sessionStorage.getItem(CREDENTIAL_KEY) || "null");
      if (stored && typeof stored.site === "string" && typeof stored.secret === "string") {
        return stored;
      }
    } catch (e) { /* not ours: ignore */ }
    return null;
  }

  function secret() {
    var stored = credential();
    return stored && stored.site === site ? stored.secret : "";
  }

  function siteFromPath() {
    var match = /^\/dashboard\/([^/]+)\/?$/.exec(location.pathname);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function SignInError(key) { this.key = key; }

  function getJSON(path, params) {
    var query = new URLSearchParams();
    Object.keys(params || {}).forEach(function (k) {
      if (params[k] !== null && params[k] !== "") { query.set(k, params[k]); }
    });
    var url = "/v1/sites/" + encodeURIComponent(site) + path +
      (query.toString() ? "?" + query.toString() : "");
    return fetch(url, { headers: { Authorization: "Bearer " + secret() }, cache: "no-store" })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          var e = body.error || {};
          if (response.status === 401 || response.status === 403) {
            throw new SignInError("wrong_key");
          }
          if (response.status === 404 && e.code === "unknown_site") {
            throw new SignInError("unknown_site");
          }
          if (response.status === 422 && e.field === "site") {
            throw new SignInError("bad_site");
          }
          if (!response.ok) {
            throw new Error((e.field ? e.field + ": " : "") + (e.message || response.status));
          }
          return body;
        });
      });
  }

  // --- drawing ---------------------------------------------------------------------------

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }

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
    clear(svg);
    var max = niceMax(days.reduce(function (m, d) { return Math.max(m, d.views); }, 0));
    var plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM;
    for (var g = 0; g <= 4; g++) {
      var y = TOP + plotH - (plotH * g) / 4;
      svg.appendChild(el("line", { class: "grid", x1: LEFT, x2: W - RIGHT, y1: y, y2: y }));
      svg.appendChild(el("text", { class: "axis", x: LEFT - 6, y: y + 4, "text-anchor": "end" },
        number(Math.round((max * g) / 4))));
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
      bar.appendChild(el("title", {}, date(d.day) + ": " + number(d.views)));
      svg.appendChild(bar);
      if (i % every === 0) {
        svg.appendChild(el("text", {
          class: "axis", x: LEFT + i * step + step / 2, y: H - 8, "text-anchor": "middle"
        }, shortDate(d.day)));
      }
    });
    svg.setAttribute("data-bars", String(days.length));
    svg.setAttribute("data-drawn", "true");
  }

  // The chart's table alternative: one row per day, the day as the row's header.
  function fillDays(table, days, caption) {
    table.querySelector("caption").textContent = caption;
    var body = table.querySelector("tbody");
    clear(body);
    days.forEach(function (d) {
      var row = document.createElement("tr");
      var th = document.createElement("th");
      th.scope = "row";
      th.textContent = date(d.day);
      th.setAttribute("data-day", d.day);
      var td = document.createElement("td");
      td.className = "num";
      td.textContent = number(d.views);
      td.setAttribute("data-views", String(d.views));
      row.appendChild(th);
      row.appendChild(td);
      body.appendChild(row);
    });
  }

  function fillTop(report) {
    var body = $("top").querySelector("tbody");
    clear(body);
    report.pages.forEach(function (p) {
      var row = document.createElement("tr");
      if (p.page === chosenPage) { row.className = "chosen"; }
      var share = report.site_views ? percent(p.views / report.site_views) : "";
      [[number(p.rank), "num"], [p.page, "page"], [number(p.views), "num"],
       [share, "num"]].forEach(function (cell) {
        var td = document.createElement("td");
        td.className = cell[1];
        if (cell[1] === "page") {
          var choose = document.createElement("button");
          choose.type = "button";
          choose.className = "link";
          choose.textContent = cell[0];
          choose.setAttribute("aria-label", t("choose_page", { page: p.page }));
          choose.addEventListener("click", function () {
            $("page").value = p.page;
            show();
          });
          td.appendChild(choose);
        } else {
          td.textContent = cell[0];
        }
        row.appendChild(td);
      });
      body.appendChild(row);
    });
    $("top-range").textContent = date(report.from) + " – " + date(report.to) +
      " (" + report.timezone + ")";
  }

  function drawTotals(totals) {
    var total = totals.live_views;
    $("live-total").textContent = total === null ? "—" : number(total);
    $("live-total").setAttribute("data-value", total === null ? "" : String(total));
    $("live-detail").textContent = t("live_detail", {
      views: number(totals.views), baseline: number(totals.baseline)
    });
    $("live").hidden = false;
  }

  function drawStats(stats) {
    Array.prototype.forEach.call($("stats").querySelectorAll("dd[data-stat]"), function (dd) {
      var value = stats[dd.getAttribute("data-stat")];
      dd.textContent = number(value);
      dd.setAttribute("data-value", String(value));
    });
    $("stats-day").textContent = date(stats.day) + " (" + stats.timezone + ")";
    $("stats").setAttribute("data-state", "ready");
  }

  function drawRange(shown, daily, top, pageDaily) {
    var span = { from: date(shown.from), to: date(shown.to) };
    drawChart($("chart-site"), daily.days, "site");
    fillDays($("table-site"), daily.days, t("caption_site", {
      site: site, from: span.from, to: span.to
    }));
    $("site-sum").textContent = t("n_views", { n: number(daily.views) });
    fillTop(top);
    if (!pageDaily) {
      $("page-name").textContent = t("no_page");
      $("page-sum").textContent = "";
      drawChart($("chart-page"), [], "page");
      fillDays($("table-page"), [], t("caption_page", { page: "—", from: span.from, to: span.to }));
      return;
    }
    $("page-name").textContent = chosenPage;
    $("page-sum").textContent = t("n_views", { n: number(pageDaily.views) });
    drawChart($("chart-page"), pageDaily.days, "page");
    fillDays($("table-page"), pageDaily.days, t("caption_page", {
      page: chosenPage, from: span.from, to: span.to
    }));
  }

  function redraw() {
    if (drawn.totals) { drawTotals(drawn.totals); }
    if (drawn.stats) { drawStats(drawn.stats); }
    if (drawn.range) {
      drawRange(drawn.range.range, drawn.range.daily, drawn.range.top, drawn.range.pageDaily);
    }
  }

  // --- loading ---------------------------------------------------------------------------

  function refreshLive() {
    return getJSON("/reports/totals").then(function (totals) {
      timezone = totals.timezone;
      if (drawn) { drawn.totals = totals; }
      drawTotals(totals);
    });
  }

  // The statistics block the site's pages show (GET stats: live, as counter.js fills it).
  function refreshStats() {
    return getJSON("/stats").then(function (stats) {
      if (drawn) { drawn.stats = stats; }
      drawStats(stats);
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
    if (error instanceof SignInError) {
      askCredential(t(error.key, { site: site }));
      return;
    }
    $("error").textContent = t("failed", { error: error.message || String(error) });
  }

  function show() {
    $("error").textContent = "";
    var asked = readRange();
    if (!asked) { return Promise.resolve(); }
    range = asked;
    return Promise.all([
      getJSON("/reports/daily", asked),
      getJSON("/reports/top", { from: asked.from, to: asked.to, limit: 20 })
    ]).then(function (answers) {
      var daily = answers[0], top = answers[1];
      chosenPage = $("page").value.trim() || (top.pages[0] ? top.pages[0].page : "");
      if (!chosenPage) { return [daily, top, null]; }
      return getJSON("/reports/daily", { from: asked.from, to: asked.to, page: chosenPage })
        .then(function (pageDaily) { return [daily, top, pageDaily]; });
    }).then(function (answers) {
      if (!drawn) { return; }
      drawn.range = { range: asked, daily: answers[0], top: answers[1], pageDaily: answers[2] };
      drawRange(asked, answers[0], answers[1], answers[2]);
      document.body.setAttribute("data-state", "ready");
    }).catch(fail);
  }

  function start() {
    drawn = {};
    $("site").textContent = site;
    applyLanguage();
    $("login").hidden = true;
    $("main").hidden = false;
    refreshNumbers().then(function () {
      if (!range) {
        var last = today(timezone);
        range = { from: minusDays(last, 29), to: last };
      }
      writeRange();
      if (liveTimer === null) {
        liveTimer = setInterval(function () { refreshNumbers().catch(fail); }, 5000);
      }
      return show();
    }).catch(fail);
  }

  function askCredential(message) {
    if (liveTimer !== null) { clearInterval(liveTimer); liveTimer = null; }
    sessionStorage.removeItem(CREDENTIAL_KEY);
    drawn = null;
    document.body.removeAttribute("data-state");
    $("main").hidden = true;
    $("live").hidden = true;
    $("login").hidden = false;
    $("login-site").value = site;
    $("login-error").textContent = message || "";
    (site ? $("token") : $("login-site")).focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    lang = initialLanguage();
    site = siteFromPath();
    applyLanguage();
    $("site").textContent = site;
    $("lang").addEventListener("change", function () {
      lang = TEXTS[$("lang").value] ? $("lang").value : "en";
      try { localStorage.setItem(LANG_KEY, lang); } catch (e) { /* private mode: this page only */ }
      applyLanguage();
    });
    $("login").addEventListener("submit", function (event) {
      event.preventDefault();
      site = $("login-site").value.trim();
      sessionStorage.setItem(CREDENTIAL_KEY, JSON.stringify({
        site: site, secret: $("token").value.trim()
      }));
      $("token").value = "";
      if (siteFromPath() !== site) {
        history.replaceState(null, "", "/dashboard/" + encodeURIComponent(site));
      }
      start();
    });
    $("range").addEventListener("submit", function (event) {
      event.preventDefault();
      show();
    });
    $("forget").addEventListener("click", function () { askCredential(""); });
    if (site && secret()) { start(); } else { askCredential(""); }
  });
})();

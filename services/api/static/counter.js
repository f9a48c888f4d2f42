/* viewcounter counter.js: one hit per page view, then live numbers into the page.
 * No dependencies, no inline code, no eval: works under a strict Content-Security-Policy
 * (script-src and connect-src naming the counter's origin). Any failure leaves the page as
 * it was: numbers stay whatever the page put in the elements.
 *
 * <script async src="https://counter.example/v1/counter.js" data-site="quan11"></script>
 *   data-page="ID"      the page id (default: the canonical URL's path, normalised)
 *   data-locale="vi-VN" number format (default: <html lang>, then the browser's)
 *   data-live           keep the numbers fresh (Server-Sent Events)
 *   data-send-title     send document.title with the hit (for the most-read list's titles)
 *   data-title="T"      send T as the page's title instead
 * Elements: data-viewcounter="site" | "page", data-viewcounter-page="ID" (read, not counted),
 *   the statistics block data-viewcounter="online" | "today" | "yesterday" | "week" | "month" |
 *   "total" (from the same hit's answer), each optionally with data-locale and data-digits="8"
 *   (digit boxes, zero-padded to 8); data-viewcounter="top" with data-period="today|week|month"
 *   and data-limit="10": the most-read list, as text (never parsed as HTML).
 */
(function () {
  "use strict";
  try {
    main();
  } catch (e) {
    // never break the host page
  }

  function main() {
    var doc = document;
    var MAX_PAGES_PER_READ = 100;
    var RETRY_CLOSED_STREAM_MS = 60000;
    var TITLE_MAX_CHARS = 200;
    // data-viewcounter name -> field of the hit answer's `stats` (and of GET stats)
    var STATS = {
      online: "online",
      today: "today",
      yesterday: "yesterday",
      week: "this_week",
      month: "this_month",
      total: "total"
    };

    function noop() {}

    function own(script) {
      var src = script && script.getAttribute("src");
      return src && /\/counter\.js(?:[?#]|$)/.test(src) && script.hasAttribute("data-site");
    }

    var script = doc.currentScript;
    if (!own(script)) {
      script = null;
      var all = doc.getElementsByTagName("script");
      for (var i = 0; i < all.length && !script; i++) {
        if (own(all[i])) script = all[i];
      }
    }
    // A template that includes the script twice still counts the view once.
    if (!script || window.__viewcounter__) return;
    window.__viewcounter__ = true;

    var site = (script.getAttribute("data-site") || "").trim();
    if (!site) return;
    var api = new URL(".", script.src).href + "sites/" + encodeURIComponent(site) + "/";

    /** "/a/", "/a" and "/a/index.html" are one page; the query and fragment are not part of it. */
    function normalisePath(path) {
      try {
        path = decodeURIComponent(path);
      } catch (e) {
        // a malformed escape: keep the path as sent
      }
      path = path.replace(/\/{2,}/g, "/").replace(/\/index\.(?:html?|php|aspx?)$/i, "/");
      if (path.length > 1) path = path.replace(/\/+$/, "");
      if (path.charAt(0) !== "/") path = "/" + path;
      return path.normalize ? path.normalize("NFC") : path;
    }

    function defaultPage() {
      var link = doc.querySelector('link[rel~="canonical"][href]');
      var url = location;
      if (link) {
        try {
          url = new URL(link.getAttribute("href"), location.href);
        } catch (e) {
          url = location;
        }
      }
      return normalisePath(url.pathname);
    }

    var page = (script.getAttribute("data-page") || "").trim() || defaultPage();

    function flag(name) {
      return script.hasAttribute(name) && script.getAttribute(name) !== "false";
    }

    /** Controls, format characters (bidi marks, zero-width ones, soft hyphens) and lone
     * surrogates: the server refuses a title holding any (and with it the hit). Built at run
     * time so that a browser without \p{} escapes falls back instead of failing to parse. */
    function unprintable() {
      try {
        return new RegExp("[\\p{Cc}\\p{Cf}\\p{Cs}]", "gu");
      } catch (e) {
        return /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]/g;
      }
    }

    /** The title to send: data-title, else document.title with data-send-title, else none.
     * One line of printable text, at most 200 characters (the server takes up to 300). */
    function pageTitle() {
      var given = script.getAttribute("data-title");
      if (given === null && !flag("data-send-title")) return "";
      var title = (given === null ? doc.title : given)
        .replace(/\s+/g, " ")
        .replace(unprintable(), "")
        .trim();
      if (title.length > TITLE_MAX_CHARS) {
        title = title.slice(0, TITLE_MAX_CHARS).replace(/[\ud800-\udbff]$/, "").trim();
      }
      return title;
    }

    function formatter(locale, options) {
      try {
        return new Intl.NumberFormat(locale || undefined, options);
      } catch (e) {
        try {
          return new Intl.NumberFormat(undefined, options);
        } catch (e2) {
          return { format: String };
        }
      }
    }

    function localeOf(el) {
      return (
        el.getAttribute("data-locale") ||
        script.getAttribute("data-locale") ||
        doc.documentElement.getAttribute("lang") ||
        ""
      );
    }

    /** Show `n` in `el`: as text, or as one <span class="vc-digit"> per digit. Never lower. */
    function show(el, n) {
      if (typeof n !== "number" || !isFinite(n) || n < 0) return;
      var shown = el.getAttribute("data-viewcounter-value");
      if (shown !== null && Number(shown) >= n) return;
      var locale = localeOf(el);
      var text = formatter(locale).format(n);
      var digits = el.getAttribute("data-digits");
      if (digits === null) {
        el.textContent = text;
      } else {
        var width = Math.min(Math.max(parseInt(digits, 10) || 1, 1), 21);
        var plain = formatter(locale, { useGrouping: false, minimumIntegerDigits: width }).format(n);
        while (el.firstChild) el.removeChild(el.firstChild);
        for (var i = 0; i < plain.length; i++) {
          var box = doc.createElement("span");
          box.className = "vc-digit";
          box.textContent = plain.charAt(i);
          el.appendChild(box);
        }
        el.classList.add("vc-digits");
        el.setAttribute("role", "img");
        el.setAttribute("aria-label", text);
      }
      el.setAttribute("data-viewcounter-value", String(n));
    }

    function each(selector, fn) {
      var els = doc.querySelectorAll(selector);
      for (var i = 0; i < els.length; i++) fn(els[i]);
    }

    function showTotals(siteViews, pageViews) {
      each('[data-viewcounter="site"]', function (el) {
        show(el, siteViews);
      });
      each('[data-viewcounter="page"]', function (el) {
        show(el, pageViews);
      });
    }

    /** The statistics block's elements. */
    function statsElements() {
      var found = [];
      each("[data-viewcounter]", function (el) {
        if (Object.prototype.hasOwnProperty.call(STATS, el.getAttribute("data-viewcounter"))) {
          found.push(el);
        }
      });
      return found;
    }

    function showStats(stats) {
      statsElements().forEach(function (el) {
        show(el, stats[STATS[el.getAttribute("data-viewcounter")]]);
      });
    }

    /** The page's own URL for a page id that is a path ("/a", not "//host/a"), on this page's
     * origin; null for anything else, so no entry ever links elsewhere or to javascript:. */
    function linkTo(id) {
      if (typeof id !== "string" || id.charAt(0) !== "/" || id.charAt(1) === "/") return null;
      try {
        var url = new URL(id, location.origin);
        return url.origin === location.origin ? url.href : null;
      } catch (e) {
        return null;
      }
    }

    /** The most-read list in `el` (or in an <ol> put in it): text nodes only, no HTML parsed. */
    function showTop(el, pages) {
      var list = el.tagName === "OL" || el.tagName === "UL" ? el : doc.createElement("ol");
      var numbers = formatter(localeOf(el));
      while (el.firstChild) el.removeChild(el.firstChild);
      if (list !== el) el.appendChild(list);
      list.classList.add("vc-top");
      pages.forEach(function (entry) {
        var href = linkTo(entry.page);
        var item = doc.createElement("li");
        var name = doc.createElement(href ? "a" : "span");
        if (href) name.href = href;
        name.className = "vc-top-title";
        name.textContent = entry.title ? String(entry.title) : String(entry.page);
        var views = doc.createElement("span");
        views.className = "vc-top-views";
        views.textContent = typeof entry.views === "number" ? numbers.format(entry.views) : "";
        item.appendChild(name);
        item.appendChild(doc.createTextNode(" "));
        item.appendChild(views);
        list.appendChild(item);
      });
      el.setAttribute("data-viewcounter-entries", String(pages.length));
    }

    function jsonOf(response) {
      if (!response.ok) throw new Error("viewcounter: HTTP " + response.status);
      return response.json();
    }

    /** One hit for this view. Resolves with its answer (the live totals, and the statistics
     * block when `wantStats`) when the page needs it and it could be read; else with null. */
    function sendHit(wantAnswer, wantStats) {
      var url = api + "hits";
      var hit = { page: page };
      var title = pageTitle();
      if (title) hit.title = title;
      if (wantStats) hit.stats = true;
      // A string body goes as text/plain: a "simple" request, so no CORS preflight.
      var body = JSON.stringify(hit);
      if (wantAnswer && window.fetch) {
        // fetch, because its answer carries the numbers including this view; keepalive lets
        // the hit finish when the reader leaves at once.
        return fetch(url, { method: "POST", body: body, keepalive: true, credentials: "omit" }).then(
          jsonOf
        );
      }
      if (navigator.sendBeacon && navigator.sendBeacon(url, body)) return Promise.resolve(null);
      if (window.fetch) {
        return fetch(url, { method: "POST", body: body, keepalive: true, credentials: "omit" }).then(
          function () {
            return null;
          }
        );
      }
      return Promise.reject(new Error("viewcounter: no way to send"));
    }

    /** Fill every [data-viewcounter-page] element; one counts call per 100 distinct ids. */
    function readListed() {
      var byPage = {};
      var pages = [];
      each("[data-viewcounter-page]", function (el) {
        var id = (el.getAttribute("data-viewcounter-page") || "").trim();
        if (!id) return;
        if (!byPage[id]) {
          byPage[id] = [];
          pages.push(id);
        }
        byPage[id].push(el);
      });
      var reads = [];
      for (var start = 0; start < pages.length; start += MAX_PAGES_PER_READ) {
        var chunk = pages.slice(start, start + MAX_PAGES_PER_READ);
        var query = chunk
          .map(function (id) {
            return "page=" + encodeURIComponent(id);
          })
          .join("&");
        reads.push(
          fetch(api + "counts?" + query, { credentials: "omit" })
            .then(jsonOf)
            .then(function (answer) {
              var counts = answer.pages || {};
              for (var id in byPage) {
                if (Object.prototype.hasOwnProperty.call(counts, id)) {
                  byPage[id].forEach(function (el) {
                    show(el, counts[id]);
                  });
                }
              }
            })
        );
      }
      return Promise.all(reads);
    }

    /** Keep the totals fresh with Server-Sent Events while the page is visible. */
    function live() {
      if (!window.EventSource) return;
      var source = null;
      var retry = null;
      function open() {
        if (source || doc.visibilityState === "hidden") return;
        source = new EventSource(api + "stream?page=" + encodeURIComponent(page));
        source.addEventListener("counts", function (event) {
          try {
            var c = JSON.parse(event.data);
            showTotals(c.site_views, c.page_views);
          } catch (e) {
            // a malformed event changes nothing
          }
        });
        source.onerror = function () {
          // EventSource reconnects by itself after a dropped connection; after a refusal
          // (an HTTP error) it gives up, and we try again much later.
          if (source && source.readyState === 2) {
            close();
            retry = setTimeout(open, RETRY_CLOSED_STREAM_MS);
          }
        };
      }
      function close() {
        if (source) source.close();
        source = null;
        if (retry) clearTimeout(retry);
        retry = null;
      }
      doc.addEventListener("visibilitychange", function () {
        if (doc.visibilityState === "hidden") close();
        else open();
      });
      open();
    }

    /** Fill every most-read list; one GET top per distinct (period, limit). */
    function readTop() {
      var reads = {};
      var shown = [];
      each('[data-viewcounter="top"]', function (el) {
        var period = el.getAttribute("data-period") || "week";
        var limit = Math.min(Math.max(parseInt(el.getAttribute("data-limit"), 10) || 10, 1), 50);
        var query = "top?period=" + encodeURIComponent(period) + "&limit=" + limit;
        if (!reads[query]) reads[query] = fetch(api + query, { credentials: "omit" }).then(jsonOf);
        shown.push(
          reads[query].then(function (answer) {
            showTop(el, answer.pages || []);
          })
        );
      });
      return Promise.all(shown);
    }

    function run() {
      var wantTotals = !!doc.querySelector('[data-viewcounter="site"], [data-viewcounter="page"]');
      var wantStats = statsElements().length > 0;
      var answered = sendHit(wantTotals || wantStats, wantStats);
      var hit = answered.then(function (answer) {
        if (answer) showTotals(answer.site_views, answer.page_views);
      });
      var stats = !wantStats
        ? Promise.resolve()
        : answered.then(function (answer) {
            if (answer && answer.stats) return showStats(answer.stats);
            // The hit's answer could not be read, or had no block (an older server): one read.
            return fetch(api + "stats", { credentials: "omit" }).then(jsonOf).then(showStats);
          });
      var listed = doc.querySelector("[data-viewcounter-page]") ? readListed() : Promise.resolve();
      var top = doc.querySelector('[data-viewcounter="top"]') ? readTop() : Promise.resolve();
      Promise.all([hit, stats, listed, top]).then(
        function () {
          script.setAttribute("data-viewcounter-state", "done");
        },
        function () {
          script.setAttribute("data-viewcounter-state", "failed");
        }
      );
      if (flag("data-live") && wantTotals) hit.then(live, noop);
    }

    function start() {
      try {
        run();
      } catch (e) {
        script.setAttribute("data-viewcounter-state", "failed");
      }
    }

    function whenReady() {
      if (doc.readyState === "loading") doc.addEventListener("DOMContentLoaded", start);
      else start();
    }

    // A prerendered page is not a view until the reader actually opens it.
    if (doc.prerendering) doc.addEventListener("prerenderingchange", whenReady);
    else whenReady();
  }
})();

/* viewcounter counter.js: one hit per page view, then live numbers into the page.
 * No dependencies, no inline code, no eval: works under a strict Content-Security-Policy
 * (script-src and connect-src naming the counter's origin). Any failure leaves the page as
 * it was: numbers stay whatever the page put in the elements.
 *
 * <script async src="https://counter.example/v1/counter.js" data-site="quan11"></script>
 *   data-page="ID"      the page id (default: the canonical URL's path, normalised)
 *   data-locale="vi-VN" number format (default: <html lang>, then the browser's)
 *   data-live           keep the numbers fresh (Server-Sent Events)
 * Elements: data-viewcounter="site" | "page", data-viewcounter-page="ID" (read, not counted),
 *   each optionally with data-locale and data-digits="8" (digit boxes, zero-padded to 8).
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

    function jsonOf(response) {
      if (!response.ok) throw new Error("viewcounter: HTTP " + response.status);
      return response.json();
    }

    /** One hit for this view. Resolves with its answer (the live totals) when one was read. */
    function sendHit(wantTotals) {
      var url = api + "hits";
      // A string body goes as text/plain: a "simple" request, so no CORS preflight.
      var body = JSON.stringify({ page: page });
      if (wantTotals && window.fetch) {
        // fetch, because its answer carries the totals including this view; keepalive lets
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

    function run() {
      var wantTotals = !!doc.querySelector('[data-viewcounter="site"], [data-viewcounter="page"]');
      var isLive = script.hasAttribute("data-live") && script.getAttribute("data-live") !== "false";
      var hit = sendHit(wantTotals).then(function (answer) {
        if (answer) showTotals(answer.site_views, answer.page_views);
      });
      var listed = doc.querySelector("[data-viewcounter-page]") ? readListed() : Promise.resolve();
      Promise.all([hit, listed]).then(
        function () {
          script.setAttribute("data-viewcounter-state", "done");
        },
        function () {
          script.setAttribute("data-viewcounter-state", "failed");
        }
      );
      if (isLive && wantTotals) hit.then(live, noop);
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

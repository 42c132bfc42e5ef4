/*
 * Mallard tracking script: pageviews (SPA navigation included), custom events,
 * outbound-link and file-download clicks. No cookies, no storage, no dependencies.
 *
 * <script defer data-domain="example.com" src="https://analytics.example.com/mallard.js"></script>
 *
 * Attributes: data-domain (site id; default: this page's host), data-api (the
 * event endpoint; default: api/event beside this script), data-hash (hash-based
 * routing), data-outbound-links, data-file-downloads (optionally a comma list of
 * extensions), data-allow-local (record on localhost and file:// pages too).
 */
(function () {
  "use strict";

  // A module script has no currentScript: then the first script loaded from mallard.js.
  var script = document.currentScript || document.querySelector('script[src*="mallard.js"]');
  var loc = location;
  function option(name) {
    return script && script.getAttribute("data-" + name);
  }

  var endpoint = option("api") || new URL("api/event", script ? script.src : loc.href).href;
  // A file:// page's host is empty, which RFC 8089 reads as localhost.
  var host = loc.hostname || "localhost";
  var domain = option("domain") || host.replace(/^www\./, "");
  var hashMode = option("hash") !== null;
  var local = /^(localhost|127(\.\d+){3}|\[::1\])$/.test(host) || loc.protocol === "file:";
  var enabled = !local || option("allow-local") !== null;
  var lastPage;

  if (!enabled) {
    console.warn("Mallard: not recording on a local page; add data-allow-local to record");
  }

  // mallard(name, {props, revenue, currency, callback}): revenue is an amount
  // with its currency, or an object {amount, currency}. The callback receives
  // {status} (the server's answer), {error} or {ignored: true} (a local page).
  function send(name, options) {
    options = options || {};
    var callback = options.callback;
    var revenue = options.revenue;
    if (!enabled) {
      return callback && callback({ ignored: true });
    }
    // A string body goes out as text/plain, which needs no CORS preflight.
    var body = JSON.stringify({
      n: name,
      u: loc.protocol === "file:" ? "file://" + host + loc.pathname + loc.search + loc.hash : loc.href,
      d: domain,
      r: document.referrer || null,
      w: innerWidth,
      h: hashMode ? 1 : 0,
      p: options.props,
      revenue:
        revenue == null || typeof revenue === "object"
          ? revenue
          : { amount: revenue, currency: options.currency },
    });
    // Both survive the page being unloaded; fetch is used when the answer is wanted.
    if (callback || !navigator.sendBeacon) {
      fetch(endpoint, { method: "POST", body: body, keepalive: true }).then(
        function (response) {
          callback && callback({ status: response.status });
        },
        function (error) {
          callback && callback({ error: error });
        }
      );
    } else {
      navigator.sendBeacon(endpoint, body);
    }
  }

  // A pageview for each new page: on load, and when the path (with data-hash,
  // the path and fragment) changes through the History API or the fragment.
  function pageview() {
    var page = loc.pathname + (hashMode ? loc.hash : "");
    if (page !== lastPage) {
      lastPage = page;
      send("pageview");
    }
  }

  ["pushState", "replaceState"].forEach(function (method) {
    var original = history[method];
    history[method] = function () {
      var result = original.apply(this, arguments);
      pageview();
      return result;
    };
  });
  addEventListener("popstate", pageview);
  if (hashMode) {
    addEventListener("hashchange", pageview);
  }

  var outbound = option("outbound-links") !== null;
  var downloads = option("file-downloads");
  var extensions = (
    downloads ||
    "pdf,xlsx,docx,txt,rtf,csv,exe,key,pps,ppt,pptx,7z,pkg,rar,gz,zip,avi,mov,mp4,mpeg,wmv,midi,mp3,wav,wma,dmg,iso,msi"
  )
    .split(",")
    .map(function (extension) {
      return extension.trim().toLowerCase();
    });

  // Left and middle clicks on links; the keepalive request outlives the page.
  function onClick(event) {
    var link = event.target.closest && event.target.closest("a[href]");
    if (!link || !/^https?:$/.test(link.protocol) || (event.type === "auxclick" && event.button !== 1)) {
      return;
    }
    var props = { props: { url: link.href } };
    if (downloads !== null && extensions.indexOf(link.pathname.split(".").pop().toLowerCase()) >= 0) {
      send("File Download", props);
    } else if (outbound && link.host !== loc.host) {
      send("Outbound Link: Click", props);
    }
  }
  if (outbound || downloads !== null) {
    document.addEventListener("click", onClick);
    document.addEventListener("auxclick", onClick);
  }

  // Calls made before this script ran wait in mallard.q (see the README's stub).
  var queue = (window.mallard && window.mallard.q) || [];
  window.mallard = send;
  pageview();
  for (var i = 0; i < queue.length; i++) {
    send.apply(null, queue[i]);
  }
})();

// Shoal dashboard: keep the page's live region fresh and show times in the viewer's zone.
// The server renders everything; this only re-fetches the live region (X-Live: 1) and swaps it.
(function () {
  "use strict";
  // ISO order (2026-12-01 09:39:45) in the viewer's zone: unambiguous in every locale
  var fmt = new Intl.DateTimeFormat("en-CA", {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"
  });

  function local(d) {
    var p = {};
    fmt.formatToParts(d).forEach(function (part) { p[part.type] = part.value; });
    return p.year + "-" + p.month + "-" + p.day + " " + p.hour + ":" + p.minute + ":" + p.second;
  }

  function localTimes(root) {
    root.querySelectorAll("time[data-ms]").forEach(function (el) {
      var d = new Date(Number(el.getAttribute("data-ms")));
      var ms = String(d.getMilliseconds()).padStart(3, "0");
      el.textContent = local(d) + (el.hasAttribute("data-precise") ? "." + ms : "");
      el.setAttribute("datetime", d.toISOString());
      el.title = d.toISOString();
    });
  }

  function start() {
    var tz = document.getElementById("tz");
    if (tz) tz.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "local";
    localTimes(document);
    var live = document.getElementById("live");
    var every = live && Number(live.getAttribute("data-live-ms"));
    if (!every) return;
    var offline = document.getElementById("offline");
    var busy = false;

    function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(window.location.href, { headers: { "X-Live": "1" }, cache: "no-store", credentials: "same-origin" })
        .then(function (response) {
          if (!response.headers.get("X-Live-Region")) throw new Error("not a live region");
          // a page that could only say "broker unreachable" is drawn in full once it answers
          if (response.ok && live.hasAttribute("data-reload-on-ok")) window.location.reload();
          return response.text();
        })
        .then(function (html) {
          live.innerHTML = html;
          localTimes(live);
          offline.hidden = true;
        })
        .catch(function () { offline.hidden = false; })
        .finally(function () { busy = false; });
    }
    setInterval(refresh, every);
    document.addEventListener("visibilitychange", refresh);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

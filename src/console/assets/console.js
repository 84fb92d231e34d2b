// whale console: dates in the browser's time zone, and the overview's live refresh (SSE).
(function () {
  "use strict";
  var lang = document.documentElement.lang || undefined;
  function localize(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.title = t.getAttribute("datetime");
        t.textContent = d.toLocaleString(lang);
      }
    });
  }
  localize(document);
  var live = document.querySelector("[data-live]");
  if (live && window.EventSource) {
    var es = new EventSource(live.getAttribute("data-live"));
    es.addEventListener("overview", function (e) {
      live.innerHTML = e.data;
      localize(live);
      live.setAttribute("data-updated", String(Date.now()));
    });
  }
})();

// aios fleet console: live regions. An element with data-live="SECONDS" is
// refreshed in place from the same page every SECONDS, while the tab is
// visible and no form inside it is being edited.
(function () {
  "use strict";
  function refresh(region) {
    if (document.hidden || region.contains(document.activeElement) && document.activeElement.tagName !== "BODY") {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", headers: { "x-aios-live": "1" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var page = new DOMParser().parseFromString(html, "text/html");
        var fresh = page.getElementById(region.id);
        if (fresh) { region.innerHTML = fresh.innerHTML; }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  document.querySelectorAll("[data-live]").forEach(function (region) {
    var seconds = Math.max(1, parseInt(region.getAttribute("data-live"), 10) || 5);
    window.setInterval(function () { refresh(region); }, seconds * 1000);
  });
})();

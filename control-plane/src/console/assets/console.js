// aios fleet console: live regions. An element with data-live="SECONDS" is
// refreshed in place from the same page every SECONDS, while the tab is
// visible and no form inside it is being edited (focused, or holding text
// not yet sent).
(function () {
  "use strict";
  function editing(region) {
    if (region.contains(document.activeElement) && document.activeElement.tagName !== "BODY") {
      return true;
    }
    return Array.prototype.some.call(region.querySelectorAll("input, textarea"), function (field) {
      return field.type !== "hidden" && field.type !== "checkbox" && field.value !== field.defaultValue;
    });
  }
  function refresh(region) {
    if (document.hidden || editing(region)) {
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

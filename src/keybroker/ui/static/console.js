// keybroker console: live countdowns to each collateral expiry (<time data-countdown="ISO 8601">).
// The server writes the same text ("in 3d 4h", "2h 5m ago") once: the page reads without this file.
// Loaded as a file from /ui/static (script-src 'self'); no inline script, no eval.
"use strict";
(function () {
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function span(seconds) {
    var d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
    var m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (d > 0) { return d + "d " + pad(h) + ":" + pad(m) + ":" + pad(s); }
    return pad(h) + ":" + pad(m) + ":" + pad(s);
  }
  function tick() {
    var now = Date.now();
    var nodes = document.querySelectorAll("time[data-countdown]");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var at = Date.parse(el.getAttribute("data-countdown"));
      if (isNaN(at)) { continue; }
      var left = Math.round((at - now) / 1000);
      el.textContent = left >= 0 ? "in " + span(left) : "expired " + span(-left) + " ago";
      el.classList.toggle("expired", left < 0);
    }
  }
  function start() {
    if (!document.querySelector("time[data-countdown]")) { return; }
    tick();
    window.setInterval(tick, 1000);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

// Ferry console: live refresh of the parts of a page marked data-live (HTML fragments by
// element id, rendered by the server), and a confirmation before destructive forms.
// A part holding the keyboard focus is left alone so a refresh never steals it.
"use strict";
(function () {
  const PERIOD_MS = 2000;
  document.addEventListener("submit", function (ev) {
    const q = ev.target.getAttribute("data-confirm");
    if (q && !window.confirm(q)) ev.preventDefault();
  });
  const root = document.querySelector("[data-live]");
  if (!root) return;
  const url = root.getAttribute("data-live");
  let timer = null;
  let busy = false;
  async function refresh() {
    timer = null;
    if (busy) return;
    busy = true;
    if (!document.hidden) {
      try {
        const res = await fetch(url, { credentials: "same-origin", cache: "no-store" });
        if (res.status === 401) { window.location.assign("/ui/login?expired=1"); return; }
        if (res.ok) {
          const parts = await res.json();
          for (const id of Object.keys(parts)) {
            const el = document.getElementById(id);
            if (!el || el.contains(document.activeElement)) continue;
            const top = el.scrollTop;
            el.innerHTML = parts[id];
            el.scrollTop = top;
          }
          root.setAttribute("data-refreshed", String(Date.now()));
        }
      } catch (e) { /* the control plane restarting: try again next period */ }
    }
    busy = false;
    timer = window.setTimeout(refresh, PERIOD_MS);
  }
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer === null && !busy) refresh();
  });
  timer = window.setTimeout(refresh, PERIOD_MS);
})();

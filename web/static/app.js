// rpm-gateway pages: automatic logoff on an unattended screen, and the live alert inbox.
// No inline scripts anywhere (the Content-Security-Policy forbids them): everything is here.
"use strict";

(function idleLogoff() {
  const body = document.body;
  const minutes = Number(body.dataset.idleMinutes || 0);
  if (!minutes) return;
  // The server ends the session after `minutes` without a click; the screen should not keep showing
  // patients' data meanwhile, so the page leaves by itself shortly after.
  const limit = minutes * 60 * 1000 + 5000;
  let last = Date.now();
  for (const name of ["click", "keydown", "scroll", "touchstart"]) {
    window.addEventListener(name, () => { last = Date.now(); }, { passive: true });
  }
  setInterval(() => {
    if (Date.now() - last > limit) window.location.assign(body.dataset.idleUrl);
  }, 5000);
})();

(function liveInbox() {
  const box = document.getElementById("inbox-live");
  if (!box) return;
  const seconds = Math.max(2, Number(box.dataset.pollSeconds || 15));
  const status = document.getElementById("live-status");
  const baseTitle = document.title;
  let known = new Set(Array.from(box.querySelectorAll("#inbox tr[data-alert-id]"), (tr) => tr.dataset.alertId));

  function setCounts(counts) {
    for (const [severity, count] of Object.entries(counts)) {
      for (const el of document.querySelectorAll(`[data-severity="${severity}"]`)) {
        const target = el.querySelector("b") || el;
        target.textContent = String(count);
        el.classList.toggle("zero", count === 0);
      }
    }
    const waiting = (counts.critical || 0) + (counts.urgent || 0) + (counts.routine || 0);
    document.title = waiting ? `(${waiting}) ${baseTitle}` : baseTitle;
  }

  async function poll() {
    try {
      const response = await fetch(box.dataset.url, {
        headers: { "X-Rpmgw-Poll": "1", "Accept": "application/json" },
        credentials: "same-origin",
      });
      if (response.status === 401) {
        window.location.assign(document.body.dataset.idleUrl || "/login");
        return;
      }
      if (!response.ok) throw new Error(String(response.status));
      const data = await response.json();
      const template = document.createElement("template");
      template.innerHTML = data.html;
      for (const tr of template.content.querySelectorAll("#inbox tr[data-alert-id]")) {
        if (!known.has(tr.dataset.alertId)) tr.classList.add("new");
      }
      box.replaceChildren(template.content);
      known = new Set(data.ids.map(String));
      setCounts(data.counts);
      if (status) status.classList.remove("stale");
    } catch (error) {
      if (status) status.classList.add("stale");
    } finally {
      setTimeout(poll, seconds * 1000);
    }
  }
  setTimeout(poll, seconds * 1000);
})();

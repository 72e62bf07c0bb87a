// The dashboard's only script. Everything works without it; it adds two conveniences.

// "Select all" for the dead-letter table.
document.addEventListener("change", (event) => {
  const all = event.target.closest("[data-select-all]");
  if (!all || !all.form) return;
  for (const box of all.form.querySelectorAll('input[name="ids"]')) box.checked = all.checked;
});

// Auto-refresh: a page whose <main> says data-refresh="N" fetches itself every N seconds and swaps
// in the new <main> (so progress bars move and counts change without a reload). The toggle in the
// top bar turns it off and on; the choice is remembered (localStorage). A refresh never destroys
// what an operator is doing: it waits while a form field has the focus, after any field was
// edited, while a <details> is open, and while the tab is hidden.
(() => {
  const main = document.querySelector("main[data-refresh]");
  const toggle = document.querySelector("[data-refresh-toggle]");
  if (!main || !toggle) return;
  const KEY = "jobqueue.autorefresh";
  const every = Math.max(1, Number(main.dataset.refresh) || 5) * 1000;
  let edited = false;
  let busy = false;
  let refreshes = 0;

  const enabled = () => {
    try {
      return localStorage.getItem(KEY) !== "off";
    } catch {
      return true; // storage refused (privacy mode): on, but not remembered
    }
  };
  const show = () => {
    const on = enabled();
    toggle.setAttribute("aria-pressed", String(on));
    toggle.textContent = on ? "Auto-refresh on" : "Auto-refresh off";
    main.dataset.autorefresh = on ? "on" : "off";
  };
  const busyHere = () => {
    const active = document.activeElement;
    const typing = active && main.contains(active) && active.matches("input, select, textarea");
    return edited || typing || main.querySelector("details[open]") !== null;
  };

  main.addEventListener("input", () => {
    edited = true;
  });
  toggle.addEventListener("click", () => {
    try {
      localStorage.setItem(KEY, enabled() ? "off" : "on");
    } catch {
      // not remembered: nothing else to do
    }
    show();
  });

  const refresh = async () => {
    if (busy || !enabled() || document.hidden || busyHere()) return;
    busy = true;
    try {
      const resp = await fetch(location.href, { credentials: "same-origin", headers: { "X-Refresh": "1" } });
      if (!resp.ok || !resp.headers.get("content-type")?.startsWith("text/html")) return;
      const fresh = new DOMParser().parseFromString(await resp.text(), "text/html").querySelector("main[data-refresh]");
      // No fresh <main> (the session ended and this is the login page): leave the page as it is.
      if (!fresh || !enabled() || busyHere()) return;
      main.replaceChildren(...Array.from(fresh.childNodes, (n) => document.importNode(n, true)));
      refreshes += 1;
      main.dataset.refreshes = String(refreshes);
    } catch {
      // offline or the server is restarting: try again next time
    } finally {
      busy = false;
    }
  };

  toggle.hidden = false;
  show();
  setInterval(refresh, every);
})();

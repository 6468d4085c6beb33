// Measures the time an annotator spends on a pair, offers keys 1-4 for the choices, and
// renews the lease while the annotator is at work.
(function () {
  // Lease renewal: every `data-renew-every-ms` (a third of the campaign's lease), but only if
  // the annotator did something since the last renewal (a key, the pointer, scrolling) or a
  // clip is playing. An idle open tab stops renewing, its lease expires and the slot goes to
  // someone else; the server also caps a lease's total life.
  let activeSince = performance.now();
  let lastRenewal = performance.now();
  const markActive = () => { activeSince = performance.now(); };
  for (const type of ["keydown", "pointerdown", "pointermove", "wheel", "scroll", "input", "touchstart"]) {
    document.addEventListener(type, markActive, { passive: true, capture: true });
  }
  const clipPlaying = () => Array.from(document.querySelectorAll("video")).some((v) => !v.paused && !v.ended);
  const csrfToken = () => {
    try { return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || ""; }
    catch (e) { return ""; }
  };
  setInterval(() => {
    const lease = document.querySelector(".lease[data-renew-url]");
    if (!lease) return;
    const every = Number(lease.dataset.renewEveryMs) || 60000;
    const now = performance.now();
    if (now - lastRenewal < every) return;
    if (activeSince <= lastRenewal && !clipPlaying()) return;  // idle since the last renewal
    lastRenewal = now;
    fetch(lease.dataset.renewUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken(), "HX-Request": "true" },
    }).then((r) => r.text()).then((text) => { lease.textContent = text; }).catch(() => {});
  }, 1000);
  // A new lease starts a new period; a swap that shows the same lease again (a refused
  // submit) does not, or frequent refusals would keep the lease from ever being renewed.
  let leaseUrl = null;
  document.addEventListener("htmx:afterSwap", () => {
    const lease = document.querySelector(".lease[data-renew-url]");
    const url = lease ? lease.dataset.renewUrl : null;
    if (url !== leaseUrl) { leaseUrl = url; lastRenewal = performance.now(); }
  });

  let shownAt = performance.now();
  document.addEventListener("htmx:afterSwap", () => { shownAt = performance.now(); });
  document.addEventListener("submit", (event) => {
    const field = event.target.querySelector("input[name=duration_ms]");
    if (field) field.value = String(Math.round(performance.now() - shownAt));
  }, true);
  document.addEventListener("htmx:configRequest", (event) => {
    const form = event.detail.elt.closest && event.detail.elt.closest("form.judge");
    if (form) event.detail.parameters.duration_ms = String(Math.round(performance.now() - shownAt));
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.matches("input, textarea") || event.metaKey || event.ctrlKey || event.altKey) return;
    const button = document.querySelector(`form.judge button[data-key="${event.key}"]`);
    if (!button) return;
    event.preventDefault();
    // A key pressed right after a swap can beat htmx's processing of the new form; process
    // it now so the answer goes through htmx rather than as a full-page post.
    if (window.htmx) window.htmx.process(button.form);
    button.click();
  });
})();

// Measures the time an annotator spends on a pair and offers keys 1-4 for the choices.
(function () {
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

// The dashboard's only script: "select all" for the dead-letter table. Everything else works without it.
document.addEventListener("change", (event) => {
  const all = event.target.closest("[data-select-all]");
  if (!all || !all.form) return;
  for (const box of all.form.querySelectorAll('input[name="ids"]')) box.checked = all.checked;
});

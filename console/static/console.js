// The console's few behaviours that are not htmx requests (no inline scripts: the pages'
// Content-Security-Policy allows only files served by the console).
"use strict";

document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-remove-closest]");
  if (!button) return;
  var row = button.closest(button.getAttribute("data-remove-closest"));
  var list = row && row.parentElement;
  if (!row) return;
  row.remove();
  // The rule is written from the remaining rows.
  if (list && window.htmx) window.htmx.trigger(list, "criteria-changed");
});

function applyToggle(select) {
  var target = document.getElementById(select.getAttribute("data-toggles"));
  if (!target) return;
  var shown = select.value === select.getAttribute("data-toggle-value");
  target.hidden = !shown;
  target.querySelectorAll("input, select, textarea").forEach(function (el) {
    el.disabled = !shown;
  });
}

document.addEventListener("change", function (event) {
  if (event.target.matches("[data-toggles]")) applyToggle(event.target);
});

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-toggles]").forEach(applyToggle);
});

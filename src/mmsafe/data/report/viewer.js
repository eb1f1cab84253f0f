(function () {
  "use strict";
  var root = document.documentElement;
  var KEY = "mmsafe.viewer.reveal";
  function apply(on) {
    root.classList.toggle("reveal", on);
    var b = document.getElementById("cw-toggle");
    if (b) { b.textContent = on ? "Hide text and images" : "Show text and images"; b.setAttribute("aria-pressed", on ? "true" : "false"); }
  }
  var stored = false;
  try { stored = window.sessionStorage.getItem(KEY) === "1"; } catch (e) { stored = false; }
  apply(stored);
  document.addEventListener("DOMContentLoaded", function () {
    apply(root.classList.contains("reveal"));
    var b = document.getElementById("cw-toggle");
    if (b) {
      b.addEventListener("click", function () {
        var on = !root.classList.contains("reveal");
        apply(on);
        try { window.sessionStorage.setItem(KEY, on ? "1" : "0"); } catch (e) { /* private mode */ }
      });
    }
    // filters apply as soon as a select changes; drop empty fields from the URL
    document.querySelectorAll("form.filters").forEach(function (form) {
      form.addEventListener("submit", function () {
        Array.prototype.forEach.call(form.elements, function (el) {
          if (el.name && el.value === "" && el.tagName !== "BUTTON") { el.disabled = true; }
        });
      });
      form.querySelectorAll(".autosubmit").forEach(function (el) {
        el.addEventListener("change", function () {
          if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
        });
      });
    });
  });
})();

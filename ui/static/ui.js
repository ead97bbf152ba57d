// prefsmith ui: keyboard shortcuts. No inline script anywhere (the Content-Security-Policy forbids it).
(function () {
  "use strict";
  function typing(event) {
    var t = event.target;
    return t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
  }
  function go(id) {
    var link = document.getElementById(id);
    if (link) { window.location.href = link.href; }
  }
  function review(decision) {
    var form = document.getElementById("review-form");
    if (!form) { return; }
    form.elements.then.value = "next";
    var button = form.querySelector('button[value="' + decision + '"]');
    if (form.requestSubmit) { form.requestSubmit(button); } else { button.click(); }
  }
  var selected = -1;
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#rows tr.row")); }
  function select(i) {
    var all = rows();
    if (!all.length) { return false; }
    selected = Math.max(0, Math.min(all.length - 1, i));
    all.forEach(function (row, j) { row.classList.toggle("selected", j === selected); });
    all[selected].scrollIntoView({block: "nearest"});
    return true;
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event)) { return; }
    var key = event.key;
    if (key === "?") {
      var help = document.getElementById("keys");
      help.hidden = !help.hidden;
    } else if (key === "/") {
      var search = document.getElementById("search");
      if (search) { event.preventDefault(); search.focus(); } else { window.location.href = "/pairs"; }
    } else if (key === "a") { review("approved");
    } else if (key === "r") { review("rejected");
    } else if (key === "f") { review("flipped");
    } else if (key === "j") {
      if (!select(selected + 1)) { go("next-pair"); }
    } else if (key === "k") {
      if (!select(selected - 1)) { go("prev-pair"); }
    } else if (key === "Enter" && selected >= 0 && rows()[selected].getAttribute("data-href")) {
      window.location.href = rows()[selected].getAttribute("data-href");
    } else { return; }
  });
}());

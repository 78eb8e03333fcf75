"use strict";
// The review report's table: sort, filter, page, and label rows real / ai-generated / skip.
// Labels live in localStorage under the report's identity (same results, same labels after a
// reload) and leave the page only as the labels.jsonl a reviewer exports.
(function () {
  var V = ["ai-generated", "uncertain", "real", "error"], L = ["real", "ai-generated", "skip"];
  var D = JSON.parse(document.getElementById("data").textContent);
  // row: [source, prob_fake, verdict index, provenance, warnings, error, file sha256, model index]; + its index
  var rows = D.rows, PAGE = D.page_size, KEY = "nsnet-labels:" + D.id, IDX = 8;
  rows.forEach(function (r, i) { r[IDX] = i; });
  var page = 0, view = rows, sortCol = 1, sortDir = -1, cursor = 0, labels = load();
  var tbody = document.querySelector("#rows tbody"), status = document.getElementById("status");
  var reviewed = document.getElementById("reviewed");

  function load() {
    try { return JSON.parse(localStorage.getItem(KEY) || "{}") || {}; } catch (e) { return {}; }
  }
  function save() {
    try { localStorage.setItem(KEY, JSON.stringify(labels)); }
    catch (e) { reviewed.textContent = "labels could not be kept in this browser (" + e.name + "): export them now"; return; }
    count();
  }
  function count() {
    var n = Object.keys(labels).length;
    reviewed.textContent = n + " of " + rows.length + " rows labelled";
  }
  function cell(r, c) { return c === 2 ? V[r[2]] : c === 6 ? (labels[r[IDX]] ? L[labels[r[IDX]][0]] : "") : r[c]; }
  function cmp(a, b) {
    var x = cell(a, sortCol), y = cell(b, sortCol);
    if (x === null || x === "") return 1; if (y === null || y === "") return -1;
    return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
  }
  function keep(r, v, q, rv) {
    if (v && V[r[2]] !== v) return false;
    var done = labels[r[IDX]] !== undefined;
    if (rv === "reviewed" ? !done : rv && (done || (rv === "uncertain" && r[2] !== 1))) return false;
    if (!q) return true;
    return (r[0] + " " + V[r[2]] + " " + r[3] + " " + r[4] + " " + r[5]).toLowerCase().indexOf(q) >= 0;
  }
  function apply() {
    var q = document.getElementById("filter").value.toLowerCase(), v = document.getElementById("verdict").value;
    var rv = document.getElementById("review").value;
    view = rows.filter(function (r) { return keep(r, v, q, rv); });
    view.sort(cmp);
    page = 0; cursor = 0; render();
  }
  // A score that says little (an image smaller than one patch) is no evidence for calibration:
  // such a row can only be skipped.
  function lowInfo(r) { return r[4].indexOf(D.low_information) >= 0; }
  function labelCell(r) {
    var td = document.createElement("td"), lab = labels[r[IDX]];
    td.className = "lab";
    L.forEach(function (name, code) {
      var b = document.createElement("button");
      b.textContent = name; b.dataset.i = r[IDX]; b.dataset.l = code;
      if (code < 2 && lowInfo(r)) { b.disabled = true; b.title = "the score says little: not used for calibration"; }
      b.className = "l" + code + (lab && lab[0] === code ? " on" : "");
      td.appendChild(b);
    });
    var note = document.createElement("input");
    note.placeholder = "note"; note.dataset.i = r[IDX]; note.value = lab ? lab[1] : "";
    td.appendChild(note);
    return td;
  }
  function render() {
    var pages = Math.max(1, Math.ceil(view.length / PAGE)); page = Math.min(Math.max(page, 0), pages - 1);
    var start = page * PAGE, end = Math.min(view.length, start + PAGE), frag = document.createDocumentFragment();
    for (var i = start; i < end; i++) {
      var r = view[i], tr = document.createElement("tr");
      for (var c = 0; c < 6; c++) {
        var td = document.createElement("td"), val = cell(r, c);
        td.textContent = val === null ? "" : (c === 1 ? val.toFixed(4) : String(val));
        if (c === 0) td.className = "src"; if (c === 1) td.className = "num";
        if (c === 4 && val) {  // long warnings stay a few lines; the whole text is the tooltip
          var d = document.createElement("div"); d.className = "clip"; d.textContent = val; d.title = val;
          td.textContent = ""; td.appendChild(d);
        }
        tr.appendChild(td);
      }
      tr.appendChild(labelCell(r));
      tr.dataset.pos = i;
      if (labels[r[IDX]]) tr.classList.add("done");
      if (i === cursor) tr.classList.add("cursor");
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
    status.textContent = view.length ? ("rows " + (start + 1) + "\u2013" + end + " of " + view.length +
      (view.length !== rows.length ? " (filtered from " + rows.length + ")" : "") + ", page " + (page + 1) + " of " + pages)
      : "no rows match";
    document.querySelectorAll("#rows th").forEach(function (th) {
      th.className = +th.dataset.col === sortCol ? (sortDir > 0 ? "asc" : "desc") : "";
    });
    count();
  }
  function moveTo(pos) {
    if (!view.length) return;
    cursor = Math.min(Math.max(pos, 0), view.length - 1);
    page = Math.floor(cursor / PAGE); render();
    var tr = tbody.querySelector("tr.cursor"); if (tr && tr.scrollIntoView) tr.scrollIntoView({block: "nearest"});
  }
  function setLabel(i, code) {
    if (code === null) delete labels[i];
    else labels[i] = [code, labels[i] ? labels[i][1] : "", new Date().toISOString()];
    save(); render();
  }
  function nextUnreviewed() {
    for (var k = 1; k <= view.length; k++) {
      var pos = (cursor + k) % view.length;
      if (labels[view[pos][IDX]] === undefined) { moveTo(pos); return true; }
    }
    return false;
  }
  function exportText() {
    return Object.keys(labels).map(Number).sort(function (a, b) { return a - b; }).map(function (i) {
      var r = rows[i], lab = labels[i];
      return JSON.stringify({source: r[0], sha256: r[6], model_sha256: r[7] === null ? null : D.models[r[7]],
                             prob_fake: r[1], label: L[lab[0]], note: lab[1], time: lab[2]}) + "\n";
    }).join("");
  }
  function download() {
    var url = URL.createObjectURL(new Blob([exportText()], {type: "application/x-ndjson"}));
    var a = document.createElement("a");
    a.href = url; a.download = "labels.jsonl"; document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  }
  tbody.addEventListener("click", function (e) {
    var t = e.target, tr = t.closest("tr");
    if (tr) { cursor = +tr.dataset.pos; }
    if (t.dataset.l !== undefined) {
      var i = +t.dataset.i, code = +t.dataset.l;
      setLabel(i, labels[i] && labels[i][0] === code ? null : code);  // a second click clears it
    } else if (tr && t.tagName !== "INPUT") { render(); }
  });
  tbody.addEventListener("change", function (e) {
    var i = +e.target.dataset.i;
    if (e.target.tagName !== "INPUT") return;
    if (!labels[i]) labels[i] = [2, "", new Date().toISOString()];  // a note alone marks the row skipped
    labels[i][1] = e.target.value; save(); render();
  });
  document.addEventListener("keydown", function (e) {
    var tag = e.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || e.ctrlKey || e.metaKey || e.altKey) return;
    var r = view[cursor], k = e.key;
    if (k === "j" || k === "ArrowDown") moveTo(cursor + 1);
    else if (k === "k" || k === "ArrowUp") moveTo(cursor - 1);
    else if (k === "n") nextUnreviewed();
    else if (r && (k === "r" || k === "a" || k === "s")) {
      if (k !== "s" && lowInfo(r)) return;
      setLabel(r[IDX], "ras".indexOf(k)); moveTo(cursor + 1);
    }
    else if (r && k === "x") setLabel(r[IDX], null);
    else return;
    e.preventDefault();
  });
  document.querySelectorAll("#rows th").forEach(function (th) {
    th.addEventListener("click", function () {
      var c = +th.dataset.col; sortDir = c === sortCol ? -sortDir : (c === 1 ? -1 : 1); sortCol = c; apply();
    });
  });
  document.getElementById("filter").addEventListener("input", apply);
  document.getElementById("verdict").addEventListener("change", apply);
  document.getElementById("review").addEventListener("change", apply);
  function turn(d) {
    var pages = Math.max(1, Math.ceil(view.length / PAGE));
    page = Math.min(Math.max(page + d, 0), pages - 1); cursor = page * PAGE; render();
  }
  document.getElementById("prev").addEventListener("click", function () { turn(-1); });
  document.getElementById("next").addEventListener("click", function () { turn(1); });
  document.getElementById("export").addEventListener("click", download);
  document.getElementById("clear").addEventListener("click", function () {
    if (window.confirm("Forget every label of this report in this browser?")) { labels = {}; save(); render(); }
  });
  window.nsnetReport = {exportText: exportText, nextUnreviewed: nextUnreviewed, setLabel: setLabel,
                        cursorRow: function () { return view[cursor] ? view[cursor][IDX] : null; }};
  apply();
})();

// kiln pass viewer. Reads the JSON block #kiln-data; draws the selected stage as a layered SVG.
// Every user string reaches the page through textContent / setAttribute, never as markup.
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var DATA = JSON.parse(document.getElementById("kiln-data").textContent);
  var state = { stage: 0, collapsed: {}, showRemoved: true, zoom: 1 };

  function el(tag, attrs, parent, text) {
    var e = tag.indexOf("svg:") === 0 ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }

  // --- the visible graph: collapsed layer groups become one node ----------------------------
  function visibleGraph(stage) {
    var nodes = [], byId = {}, vis = {};
    stage.nodes.forEach(function (n) {
      if (n.kind === "removed" && !state.showRemoved) return;
      var id = n.group && state.collapsed[n.group] ? "g:" + n.group : n.id;
      vis[n.id] = id;
      if (!byId[id]) {
        byId[id] = id === n.id ? n : { id: id, kind: "group", op: n.group, group: n.group, members: [], type: "" };
        nodes.push(byId[id]);
      }
      if (byId[id].kind === "group") byId[id].members.push(n);
    });
    var edges = [], seen = {};
    stage.edges.forEach(function (e) {
      var s = vis[e[0]], d = vis[e[1]];
      if (!s || !d || s === d || seen[s + ">" + d]) return;
      seen[s + ">" + d] = true;
      edges.push({ s: s, d: d, type: e[2], removed: e[3] === "removed" });
    });
    return { nodes: nodes, byId: byId, edges: edges };
  }

  // --- layered layout: rank = longest path; x from the mean of the predecessors ---------------
  function nodeSize(n) {
    if (n.kind === "group") return { w: 240, h: 46 };
    var text = Math.max(n.op.length + (n.name ? n.name.length + 2 : 0), (n.type || "").length);
    var rows = n.inner ? Math.min(n.inner.length, 8) + 1 : 0;
    var badge = n.consts && n.consts.length ? 60 : 0;
    return { w: Math.max(130, text * 6.6 + 24 + badge), h: 40 + rows * 13 };
  }

  function ranks(g) {
    var rank = {};
    g.nodes.forEach(function (n) { rank[n.id] = 0; });
    for (var it = 0; it < 200; it++) {
      var moved = false;
      g.edges.forEach(function (e) {
        if (rank[e.d] < rank[e.s] + 1) { rank[e.d] = rank[e.s] + 1; moved = true; }
      });
      if (!moved) break;
    }
    return rank;
  }

  function layout(g) {
    var rank = ranks(g), rows = [], preds = {};
    g.nodes.forEach(function (n) { n.size = nodeSize(n); (rows[rank[n.id]] = rows[rank[n.id]] || []).push(n); });
    g.edges.forEach(function (e) { (preds[e.d] = preds[e.d] || []).push(e.s); });
    var y = 20, minX = Infinity, maxX = 0, maxY = 0;
    rows.forEach(function (row) {
      if (!row) return;
      row.forEach(function (n, i) {
        var ps = (preds[n.id] || []).map(function (p) { return g.byId[p]; }).filter(function (p) { return p && p.cx !== undefined; });
        n.want = ps.length ? ps.reduce(function (a, p) { return a + p.cx; }, 0) / ps.length : i * 200;
      });
      row.sort(function (a, b) { return a.want - b.want; });
      var right = -Infinity, h = 0;
      row.forEach(function (n) {
        n.x = Math.max(n.want - n.size.w / 2, right + 28);
        n.cx = n.x + n.size.w / 2;
        n.y = y;
        right = n.x + n.size.w;
        h = Math.max(h, n.size.h);
        minX = Math.min(minX, n.x);
        maxX = Math.max(maxX, right);
      });
      y += h + 46;
      maxY = y;
    });
    var shift = 40 - (minX === Infinity ? 0 : minX);
    g.nodes.forEach(function (n) { n.x += shift; n.cx += shift; });
    return { w: maxX + shift + 40, h: maxY + 20 };
  }

  // --- drawing ------------------------------------------------------------------------------
  function tooltip(n) {
    if (n.kind === "group") return n.group + " (collapsed, " + n.members.length + " nodes): click to expand";
    var lines = [n.op + (n.name ? " " + n.name : "") + (n.type ? " : " + n.type : "")];
    if (n.attrs) lines.push("attrs: " + n.attrs);
    if (n.src) lines.push("source: " + n.src);
    if (n.module) lines.push("module: " + n.module);
    (n.consts || []).forEach(function (c) { lines.push("const " + c[0] + " : " + c[1]); });
    (n.inner || []).forEach(function (m) { lines.push("  fused: " + m[0] + " : " + m[1]); });
    if (n.status && n.status !== "same") lines.push("diff: " + n.status);
    return lines.join("\n");
  }

  function drawNode(svg, n) {
    var cls = "kiln-node kind-" + n.kind + " status-" + (n.status || "same") + (n.inner ? " kiln-fusion" : "");
    var g = el("svg:g", { "class": cls, transform: "translate(" + n.x + "," + n.y + ")", "data-id": n.id }, svg);
    el("svg:title", {}, g, tooltip(n));
    el("svg:rect", { width: n.size.w, height: n.size.h, rx: 6, "class": n.inner ? "box" : "" }, g);
    var title = n.kind === "group" ? "\u25b8 " + n.group : n.op + (n.name ? " " + n.name : "");
    el("svg:text", { x: 10, y: 16, "class": "op" }, g, title);
    var sub = n.kind === "group" ? n.members.length + " nodes (click to expand)" : n.type || "";
    el("svg:text", { x: 10, y: 31, "class": "ty" }, g, sub);
    if (n.consts && n.consts.length) {
      el("svg:text", { x: n.size.w - 8, y: 16, "class": "badge", "text-anchor": "end" }, g, "+" + n.consts.length + " const");
    }
    (n.inner || []).slice(0, 8).forEach(function (m, j) {
      el("svg:text", { x: 16, y: 46 + j * 13, "class": "inner" }, g, "\u2022 " + m[0] + " : " + m[1]);
    });
    g.addEventListener("mouseenter", function () { document.getElementById("kiln-hover").textContent = tooltip(n); });
    if (n.kind === "group") g.addEventListener("click", function () { toggleGroup(n.group); });
  }

  function drawEdge(svg, g, e) {
    var a = g.byId[e.s], b = g.byId[e.d];
    var x1 = a.cx, y1 = a.y + a.size.h, x2 = b.cx, y2 = b.y;
    var span = Math.max(0, (y2 - y1) / 90 - 1), bend = Math.min(span * 14, 160);
    var d = "M" + x1 + "," + y1 + " C" + (x1 - bend) + "," + (y1 + 40) + " " + (x2 - bend) + "," + (y2 - 40) + " " + x2 + "," + y2;
    var p = el("svg:path", { d: d, "class": "kiln-edge" + (e.removed ? " removed" : ""), "marker-end": "url(#kiln-arrow)" }, svg);
    el("svg:title", {}, p, e.type);
  }

  function drawGroupBoxes(svg, g) {
    var boxes = {};
    g.nodes.forEach(function (n) {
      if (!n.group || n.kind === "group") return;
      var b = boxes[n.group] = boxes[n.group] || { x1: Infinity, y1: Infinity, x2: -Infinity, y2: -Infinity };
      b.x1 = Math.min(b.x1, n.x); b.y1 = Math.min(b.y1, n.y);
      b.x2 = Math.max(b.x2, n.x + n.size.w); b.y2 = Math.max(b.y2, n.y + n.size.h);
    });
    Object.keys(boxes).forEach(function (name) {
      var b = boxes[name];
      el("svg:rect", { x: b.x1 - 12, y: b.y1 - 24, width: b.x2 - b.x1 + 24, height: b.y2 - b.y1 + 36, rx: 10, "class": "kiln-group-box" }, svg);
      var t = el("svg:text", { x: b.x1 - 6, y: b.y1 - 9, "class": "kiln-group-label" }, svg, "\u25be " + name + " (click to collapse)");
      t.addEventListener("click", function () { toggleGroup(name); });
    });
  }

  function drawGraph() {
    var stage = DATA.stages[state.stage], g = visibleGraph(stage), size = layout(g);
    var host = document.getElementById("kiln-graph");
    clear(host);
    var svg = el("svg:svg", { id: "kiln-svg", viewBox: "0 0 " + size.w + " " + size.h, width: size.w * state.zoom, height: size.h * state.zoom }, host);
    var marker = el("svg:marker", { id: "kiln-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" }, el("svg:defs", {}, svg));
    el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#8893a8" }, marker);
    drawGroupBoxes(svg, g);
    g.edges.forEach(function (e) { drawEdge(svg, g, e); });
    g.nodes.forEach(function (n) { drawNode(svg, n); });
  }

  // --- sidebar ------------------------------------------------------------------------------
  function drawStages() {
    var list = document.getElementById("kiln-stages");
    clear(list);
    DATA.stages.forEach(function (s, i) {
      var li = el("li", { "class": "kiln-stage" + (i === state.stage ? " selected" : "") + (s.changed ? "" : " unchanged"), "data-index": i }, list);
      el("span", { "class": "kiln-stage-name" }, li, s.name);
      var badges = el("span", { "class": "kiln-badges" }, li);
      [["added", "+"], ["removed", "\u2212"], ["fused", "\u2295"], ["changed", "~"]].forEach(function (b) {
        if (s.counts && s.counts[b[0]]) el("span", { "class": "b-" + b[0], title: b[0] }, badges, b[1] + s.counts[b[0]]);
      });
      li.addEventListener("click", function () { select(i); });
    });
  }

  function drawStageInfo() {
    var s = DATA.stages[state.stage], real = s.nodes.filter(function (n) { return n.kind === "node"; }).length;
    var lines = [s.name, real + " nodes" + (s.changed ? "" : " (pass made no change)")];
    if (s.seconds !== undefined) lines.push((s.seconds * 1000).toFixed(2) + " ms");
    Object.keys(s.stats || {}).forEach(function (k) { lines.push(k + ": " + s.stats[k]); });
    if (s.counts) lines.push("vs previous: +" + s.counts.added + " added, \u2212" + s.counts.removed + " removed, " + s.counts.fused + " fused, " + s.counts.changed + " changed");
    document.getElementById("kiln-stage-info").textContent = lines.join("\n");
  }

  function drawLayers() {
    var host = document.getElementById("kiln-layers"), groups = [];
    clear(host);
    DATA.stages[state.stage].nodes.forEach(function (n) { if (n.group && groups.indexOf(n.group) < 0) groups.push(n.group); });
    if (!groups.length) el("div", {}, host, "(no repeated layers found)");
    groups.forEach(function (name) {
      var label = el("label", {}, host);
      var box = el("input", { type: "checkbox", "class": "kiln-layer-toggle" }, label);
      box.checked = !!state.collapsed[name];
      box.addEventListener("change", function () { toggleGroup(name); });
      label.appendChild(document.createTextNode(" collapse " + name));
    });
    return groups;
  }

  function redraw() { drawStages(); drawStageInfo(); drawLayers(); drawGraph(); }
  function select(i) { state.stage = Math.max(0, Math.min(DATA.stages.length - 1, i)); redraw(); }
  function toggleGroup(name) { state.collapsed[name] = !state.collapsed[name]; redraw(); }

  function setAll(collapsed) {
    state.collapsed = {};
    if (collapsed) drawLayers().forEach(function (name) { state.collapsed[name] = true; });
    redraw();
  }

  function wireControls() {
    document.getElementById("kiln-collapse-all").addEventListener("click", function () { setAll(true); });
    document.getElementById("kiln-expand-all").addEventListener("click", function () { setAll(false); });
    document.getElementById("kiln-zoom-in").addEventListener("click", function () { state.zoom *= 1.25; drawGraph(); });
    document.getElementById("kiln-zoom-out").addEventListener("click", function () { state.zoom /= 1.25; drawGraph(); });
    var removed = document.getElementById("kiln-show-removed");
    removed.addEventListener("change", function () { state.showRemoved = removed.checked; drawGraph(); });
    document.addEventListener("keydown", function (e) {
      if (e.key === "ArrowDown" || e.key === "j") select(state.stage + 1);
      if (e.key === "ArrowUp" || e.key === "k") select(state.stage - 1);
    });
  }

  // `page.html#5` or `page.html#fuse_patterns` opens that stage
  function initialStage() {
    var want = decodeURIComponent(location.hash.slice(1));
    if (!want) return DATA.initial || 0;
    if (/^\d+$/.test(want)) return parseInt(want, 10);
    var found = DATA.stages.findIndex(function (s) { return s.name.indexOf(want) >= 0; });
    return found < 0 ? 0 : found;
  }

  document.getElementById("kiln-title").textContent = DATA.title;
  wireControls();
  select(initialStage());
})();

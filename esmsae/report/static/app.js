// The study explorer: hash-addressed pages over window.EXPLORER (data.js, the index) and the parts it names
// (data/p{i}.js: a protein's mutants and graphs; data/f{i}.js: a block of features), each loaded as a script
// the first time a page needs it. No library, no network.
(function () {
  "use strict";
  const D = window.EXPLORER;
  const proteins = {};  // name -> {mutants, graphs}, as their parts arrive
  const features = {};  // "L{layer}_F{feature}" -> its page's data
  window.EXPLORER_PART = function (part) {
    if (part.kind === "protein") proteins[part.name] = part;
    else if (part.kind === "features") Object.assign(features, part.features);
  };
  const loading = {};
  function load(src) {  // a part, once: a page opened from file:// may add a script but not fetch a file
    if (!src) return Promise.resolve();
    if (!loading[src]) loading[src] = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src; script.onload = resolve;
      script.onerror = () => reject(new Error("cannot read " + src));
      document.head.append(script);
    });
    return loading[src];
  }
  const proteinPart = name => load(D.proteins[name] && D.proteins[name].file);
  function featurePart(id) {
    const m = /^L(\d+)_F(\d+)$/.exec(id);
    return load(m && D.feature_files["L" + m[1] + "_B" + Math.floor(Number(m[2]) / D.feature_block)]);
  }
  const page = document.getElementById("page");
  const crumbs = document.getElementById("crumbs");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  const fmt = (v, d = 3) => (v === null || v === undefined || v === "") ? "" :
    (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(d)) : String(v));
  const link = (href, text) => el("a", { href: href }, text);

  // A table whose columns sort on click (numbers numerically, empty cells last).
  function sortable(columns, rows) {
    const head = el("tr", {}, columns.map((c, i) => el("th", { class: c.text ? "text" : "", "data-col": i }, c.title)));
    const body = el("tbody");
    const table = el("table", { class: "sortable" }, el("thead", {}, head), body);
    let order = { col: -1, dir: 1 };
    function draw() {
      const sorted = rows.slice();
      if (order.col >= 0) {
        const c = columns[order.col];
        sorted.sort((a, b) => {
          const x = c.value(a), y = c.value(b);
          if (x === null || x === undefined || x === "") return 1;
          if (y === null || y === undefined || y === "") return -1;
          return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * order.dir;
        });
      }
      body.replaceChildren(...sorted.map(r => el("tr", {}, columns.map(c =>
        el("td", { class: c.text ? "text" : "" }, c.render ? c.render(r) : fmt(c.value(r)))))));
      head.querySelectorAll("th").forEach((th, i) => th.className = (columns[i].text ? "text " : "") +
        (i === order.col ? (order.dir > 0 ? "asc" : "desc") : ""));
    }
    head.addEventListener("click", e => {
      const th = e.target.closest("th"); if (!th) return;
      const col = Number(th.dataset.col);
      order = { col: col, dir: order.col === col ? -order.dir : 1 };
      draw();
    });
    draw();
    return table;
  }

  function verdictClass(v) { return v === "supported" ? "verdict-supported" : (v === "not supported" ? "verdict-not" : ""); }

  function home() {
    crumbs.replaceChildren();
    const rows = Object.entries(D.proteins).map(([name, p]) => ({ name: name, n: p.n_mutants, graphs: p.n_graphs }));
    page.replaceChildren(
      el("h1", {}, D.title),
      el("p", { class: "muted" }, "Every number here reads the SAEs on the " + (D.activations || "?") +
        " forward (config key sae.activations)."),
      el("h2", {}, "Proteins"),
      sortable([{ title: "protein", text: true, value: r => r.name, render: r => link("#/protein/" + r.name, r.name) },
                { title: "mutants", value: r => r.n }, { title: "with a graph", value: r => r.graphs }], rows),
      el("h2", {}, "Findings"),
      D.findings.length ? sortable([
        { title: "claim", text: true, value: r => r.claim }, { title: "scope", text: true, value: r => r.scope },
        { title: "verdict", text: true, value: r => r.verdict, render: r => el("span", { class: verdictClass(r.verdict) }, r.verdict) },
        { title: "p", value: r => r.p }, { title: "what the tables say", text: true, value: r => r.sentence }], D.findings)
        : el("p", { class: "muted" }, "No findings table."));
  }

  function protein(name) {
    const p = proteins[name];
    if (!p) return missing("protein " + name);
    crumbs.replaceChildren(" / ", name);
    const cols = [{ title: "mutant", text: true, value: r => r.mutant,
                    render: r => r.graph ? link("#/mutant/" + name + "/" + r.mutant, r.mutant) : r.mutant },
                  { title: "score", value: r => r.score }, { title: "DMS", value: r => r.dms }];
    for (const layer of D.layers.ig) {
      cols.push({ title: "F (L" + layer + ")", value: r => r.full_effect[layer] });
      cols.push({ title: "circuit (L" + layer + ")", value: r => r.circuit[layer] });
    }
    for (const layer of D.layers.positions) cols.push({ title: "site share (L" + layer + ")", value: r => r.site_share[layer] });
    page.replaceChildren(el("h1", {}, name),
      el("p", { class: "muted" }, "Score: WT-marginal log-odds. F: full effect of the SAE features at the site; circuit: minimal circuit size (empty: none within max_k, or negligible); site share: P_site / P_all. A mutant with a graph links to it."),
      sortable(cols, p.mutants));
  }

  // A node's label in at most `lines` lines of `chars` characters, broken between words; what does not fit
  // ends in "…" (the whole label is in the node's tooltip and on its feature's page).
  const LABEL_CHARS = 40;
  function wrapLabel(text, chars, lines) {
    const out = [];
    let rest = text.trim();
    while (rest && out.length < lines) {
      if (rest.length <= chars) { out.push(rest); rest = ""; break; }
      let cut = rest.lastIndexOf(" ", chars);
      if (cut <= 0) cut = chars;
      out.push(rest.slice(0, cut)); rest = rest.slice(cut).trim();
    }
    if (rest) out[out.length - 1] = out[out.length - 1].slice(0, chars - 1).trimEnd() + "…";
    return out;
  }

  function mutant(name, mut) {
    const graph = proteins[name] && proteins[name].graphs[mut];
    if (!graph) return missing("graph of " + name + " " + mut);
    crumbs.replaceChildren(" / ", link("#/protein/" + name, name), " / ", mut);
    const layers = D.layers.graph;
    const width = 300 + 260 * layers.length, rowHeight = 40;  // two lines of label per node
    const column = i => 90 + i * (width - 350) / Math.max(1, layers.length - 1);
    const byLayer = {};
    graph.nodes.forEach(n => (byLayer[n.layer] = byLayer[n.layer] || []).push(n));
    const height = 60 + rowHeight * Math.max(1, ...Object.values(byLayer).map(a => a.length));
    const pos = {};
    layers.forEach((layer, i) => (byLayer[layer] || []).sort((a, b) => a.feature - b.feature).forEach((n, j) => {
      pos[n.id] = { x: column(i), y: 40 + j * rowHeight };
    }));
    const maxM = Math.max(1e-12, ...graph.edges.map(e => Math.abs(e.M)));
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", width); svg.setAttribute("height", height); svg.setAttribute("id", "graph");
    layers.forEach((layer, i) => {
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", column(i)); t.setAttribute("y", 18);
      t.setAttribute("text-anchor", "middle"); t.textContent = "layer " + layer; svg.append(t);
    });
    for (const e of graph.edges) {
      if (!pos[e.source] || !pos[e.target]) continue;
      const line = document.createElementNS(NS, "line");
      line.setAttribute("x1", pos[e.source].x); line.setAttribute("y1", pos[e.source].y);
      line.setAttribute("x2", pos[e.target].x); line.setAttribute("y2", pos[e.target].y);
      line.setAttribute("stroke", e.M >= 0 ? "#1f77b4" : "#d62728");
      line.setAttribute("stroke-width", (0.5 + 7 * Math.abs(e.M) / maxM).toFixed(2));
      line.setAttribute("class", "edge"); line.dataset.absM = Math.abs(e.M);
      const title = document.createElementNS(NS, "title");
      title.textContent = e.source + " → " + e.target + ": w = " + fmt(e.w) + ", M = " + fmt(e.M) + " (AtP " + fmt(e.linear) + ")";
      line.append(title); svg.append(line);
    }
    for (const n of graph.nodes) {
      if (!pos[n.id]) continue;
      const g = document.createElementNS(NS, "g"); g.setAttribute("class", "node"); g.dataset.id = n.id;
      const c = document.createElementNS(NS, "circle");
      c.setAttribute("cx", pos[n.id].x); c.setAttribute("cy", pos[n.id].y); c.setAttribute("r", 7);
      c.setAttribute("fill", n.effect >= 0 ? "#9ecae1" : "#fcae91");
      const title = document.createElementNS(NS, "title");
      title.textContent = n.id + ": " + n.label + " (effect " + fmt(n.effect) + ")"; c.append(title);
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", pos[n.id].x + 10); t.setAttribute("y", pos[n.id].y + 3);
      wrapLabel("F" + n.feature + " " + (n.label || ""), LABEL_CHARS, 2).forEach((line, k) => {
        const span = document.createElementNS(NS, "tspan");
        span.setAttribute("x", pos[n.id].x + 10); span.setAttribute("dy", k ? "1.1em" : "0");
        span.textContent = line; t.append(span);
      });
      g.append(c, t);
      g.addEventListener("click", () => { location.hash = "#/feature/" + n.id; });
      svg.append(g);
    }
    const edges = Array.from(svg.querySelectorAll(".edge"));
    const shown = el("span", {}, "");
    const slider = el("input", { type: "range", id: "threshold", min: "0", max: "1", step: "0.01", value: "0" });
    const label = el("span", {}, "");
    function apply() {
      const bar = Number(slider.value) * maxM;
      let visible = 0;
      edges.forEach(e => { const hide = Number(e.dataset.absM) < bar; e.classList.toggle("hidden", hide); if (!hide) visible++; });
      label.textContent = " |M| ≥ " + fmt(bar);
      shown.textContent = " " + visible + " of " + edges.length + " edges shown";
    }
    slider.addEventListener("input", apply);
    page.replaceChildren(el("h1", {}, name + " " + mut),
      el("p", { class: "muted" }, "Nodes: the changed features at each layer (colour: sign of their one-layer patch effect). Edges: measured mediated effects M (width ∝ |M|, blue positive, red negative); hover for w and M; click a node for its feature."),
      el("div", { class: "controls" }, "hide edges below ", slider, label, shown), svg);
    apply();
  }

  function feature(id) {
    const f = features[id];
    if (!f) return missing("feature " + id);
    crumbs.replaceChildren(" / ", id);
    const concepts = f.concepts.length ? sortable([
      { title: "concept", text: true, value: r => r.concept }, { title: "F1", value: r => r.f1 },
      { title: "precision", value: r => r.precision }, { title: "recall", value: r => r.recall },
      { title: "hits", value: r => r.hits }], f.concepts) : el("p", { class: "muted" }, "No concept matched.");
    const examples = f.examples.length ? sortable([
      { title: "rank", value: r => r.rank }, { title: "record", text: true, value: r => r.record },
      { title: "position", value: r => r.position }, { title: "activation", value: r => r.activation },
      { title: "window", text: true, value: r => r.window, render: r => windowCell(r) }], f.examples)
      : el("p", { class: "muted" }, "No reference position activates it.");
    const mutants = f.mutants.length ? sortable([
      { title: "protein", text: true, value: r => r.protein }, { title: "mutant", text: true, value: r => r.mutant,
        render: r => r.graph ? link("#/mutant/" + r.protein + "/" + r.mutant, r.mutant) : r.mutant },
      { title: "rank", value: r => r.rank }, { title: "A_j", value: r => r.attribution }], f.mutants)
      : el("p", { class: "muted" }, "In no mutant's top 20.");
    const neighbours = f.neighbours.length ? sortable([
      { title: "feature", text: true, value: r => r.id, render: r => r.linked ? link("#/feature/" + r.id, r.id) : r.id },
      { title: "direction", text: true, value: r => r.direction }, { title: "graphs", value: r => r.n },
      { title: "Σ|M|", value: r => r.sum_abs_M }], f.neighbours) : el("p", { class: "muted" }, "In no mutant's graph.");
    page.replaceChildren(...[el("h1", { id: "feature-title" }, "Layer " + f.layer + ", feature " + f.feature),
      el("p", {}, el("b", {}, f.label)),
      el("p", { class: "muted" }, "Top residue " + f.top_residue + " (F1 " + fmt(f.f1, 2) + "), active at " +
        fmt(100 * f.frequency, 3) + " % of the reference positions" + (f.promotes ? "; promotes " + f.promotes : "")),
      el("div", { class: "grid" },
        el("div", {}, el("h2", {}, "Concepts"), concepts, el("h2", {}, "Graph neighbours"), neighbours),
        el("div", {}, el("h2", {}, "Top-activating examples"), examples, el("h2", {}, "Mutants it carries effect for"), mutants)),
      f.card ? el("div", {}, el("h2", {}, "Card"), el("img", { class: "card", src: f.card, alt: "card of " + id })) : null]
      .filter(x => x !== null));
  }

  function windowCell(r) {
    const values = String(r.window_activations || "").split(";").map(Number);
    const top = Math.max(1e-12, ...values);
    return el("span", { class: "window" }, Array.from(String(r.window)).map((c, i) =>
      el("span", { style: "background: rgba(115,64,179," + (0.1 + 0.9 * Math.max(0, values[i] || 0) / top).toFixed(2) + ")" +
        (r.window_start + i === r.position ? "; font-weight: bold; text-decoration: underline" : "") }, c)));
  }

  function missing(what) { page.replaceChildren(el("p", {}, "Not in this study: " + what + ". "), link("#/", "Back to the proteins")); }

  function route() {
    const hash = location.hash;
    const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    const pages = { protein: [() => proteinPart(parts[1]), () => protein(parts[1])],
                    mutant: [() => proteinPart(parts[1]), () => mutant(parts[1], parts[2])],
                    feature: [() => featurePart(parts[1]), () => feature(parts[1])] };
    const [needs, draw] = pages[parts[0]] || [() => Promise.resolve(), home];
    needs().then(() => {
      if (location.hash !== hash) return;  // the reader moved on while it loaded
      draw();
      window.scrollTo(0, 0);
    }, error => page.replaceChildren(el("p", {}, String(error.message)), link("#/", "Back to the proteins")));
  }
  window.addEventListener("hashchange", route);
  route();
})();

// The index: summary, density histogram, Fry's scatter (click a point to open its feature),
// jump to a feature by number, and a sortable, paginated table of the live features.
(function () {
  "use strict";
  const D = window.CLIPSAE_INDEX;
  const T = D.table;
  const N = T.feature.length;
  const PAGE = 50;
  const live = new Set(T.feature);
  const app = document.getElementById("app");
  const el = window.clipsae.el;
  const fmt = (x) => (x === null || x === undefined ? "" : typeof x === "number" ? String(x) : x);
  const featureHref = (f) => "features/" + f + ".html";

  app.replaceChildren(el("h1", { text: D.title }));

  const summary = el("table", { class: "summary" });
  for (const [k, v] of D.summary) summary.append(el("tr", {}, el("th", { text: k }), el("td", { text: v })));
  summary.append(el("tr", {}, el("th", { text: "features" }),
    el("td", { text: `${N.toLocaleString()} live of ${D.n_features.toLocaleString()} (the table and plots show the live ones)` })));
  app.append(summary);
  for (const c of D.correlations) {
    app.append(el("p", {}, "Matched one-to-one with ", el("a", { href: c.href, text: c.other }),
      ` (${c.pairs.toLocaleString()} pairs, analyze correlate).`));
  }

  // Jump to a feature by number.
  const input = el("input", { type: "number", min: "0", id: "jump-input", placeholder: "feature #" });
  const msg = el("span", { class: "message", id: "jump-message" });
  const jump = () => {
    const f = Number(input.value);
    if (!Number.isInteger(f) || input.value === "") { msg.textContent = "type a feature number"; return; }
    if (f < 0 || f >= D.n_features) { msg.textContent = `no feature ${f}: there are ${D.n_features}`; return; }
    if (!live.has(f)) { msg.textContent = `feature ${f} never fired on these images`; return; }
    window.location.href = featureHref(f);
  };
  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") jump(); });
  const go = el("button", { id: "jump-button", text: "open" });
  go.addEventListener("click", jump);
  app.append(el("div", { class: "jump" }, "Go to feature ", input, " ", go, msg));

  // Plots on canvases, from the table's columns.
  const W = 520, H = 320, M = { l: 48, r: 12, t: 12, b: 36 };
  const canvas = (id) => { const c = el("canvas", { class: "plot", id, width: W, height: H }); return c; };
  const axes = (ctx, x0, x1, y0, y1, xl, yl) => {
    ctx.strokeStyle = "#999"; ctx.fillStyle = "#333"; ctx.font = "11px sans-serif";
    ctx.strokeRect(M.l, M.t, W - M.l - M.r, H - M.t - M.b);
    ctx.textAlign = "center";
    for (let i = 0; i <= 4; i++) {
      const v = x0 + (x1 - x0) * i / 4;
      ctx.fillText(v.toFixed(1), M.l + (W - M.l - M.r) * i / 4, H - M.b + 14);
    }
    ctx.fillText(xl, (W + M.l) / 2, H - 6);
    ctx.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const v = y0 + (y1 - y0) * i / 4;
      ctx.fillText(Number.isInteger(v) ? String(v) : v.toFixed(1), M.l - 4, H - M.b - (H - M.t - M.b) * i / 4 + 4);
    }
    ctx.save(); ctx.translate(12, (H - M.b + M.t) / 2); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center"; ctx.fillText(yl, 0, 0); ctx.restore();
  };
  const range = (xs) => {
    let lo = Infinity, hi = -Infinity;
    for (const x of xs) if (Number.isFinite(x)) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
    if (!Number.isFinite(lo)) return [0, 1];
    if (lo === hi) return [lo - 0.5, hi + 0.5];
    const pad = (hi - lo) * 0.03;
    return [lo - pad, hi + pad];
  };

  const logTok = T.density_tokens.map((x) => Math.log10(x));
  const hist = canvas("density-hist");
  {
    const ctx = hist.getContext("2d");
    const [x0, x1] = range(logTok);
    const bins = new Array(40).fill(0);
    for (const x of logTok) bins[Math.min(39, Math.floor((x - x0) / (x1 - x0) * 40))]++;
    // A whole number of features per tick: four ticks of ceil(max / 4) each.
    const top = 4 * Math.max(1, Math.ceil(Math.max(...bins) / 4));
    ctx.fillStyle = "#4c78a8";
    const bw = (W - M.l - M.r) / 40;
    bins.forEach((c, i) => {
      const h = (H - M.t - M.b) * c / top;
      ctx.fillRect(M.l + i * bw + 1, H - M.b - h, bw - 2, h);
    });
    axes(ctx, x0, x1, 0, top, "log10 feature density (fraction of encoded tokens)", "features");
  }

  const px = T.density_images.map((x) => Math.log10(x));
  const py = T.mean_top20.map((y) => (y > 0 ? Math.log10(y) : NaN));
  const scatter = canvas("density-scatter");
  const [sx0, sx1] = range(px), [sy0, sy1] = range(py);
  const toX = (x) => M.l + (x - sx0) / (sx1 - sx0) * (W - M.l - M.r);
  const toY = (y) => H - M.b - (y - sy0) / (sy1 - sy0) * (H - M.t - M.b);
  {
    const ctx = scatter.getContext("2d");
    const eMax = Math.max(1e-9, ...T.entropy.filter((e) => e !== null));
    for (let i = 0; i < N; i++) {
      if (!Number.isFinite(py[i])) continue;
      const e = T.entropy[i];
      // viridis-like ramp over normalised entropy; grey where too few labelled top images
      ctx.fillStyle = e === null ? "#c8c8c8" : `hsl(${270 - 200 * e / eMax}, 70%, 45%)`;
      ctx.fillRect(toX(px[i]) - 1.5, toY(py[i]) - 1.5, 3, 3);
    }
    axes(ctx, sx0, sx1, sy0, sy1, "log10 image density", "log10 mean top-20 value");
    // The colour scale, top right over a white box: label entropy from 0 to its largest value.
    const cw = 120, cx0 = W - M.r - cw - 10, cy0 = M.t + 6;
    ctx.fillStyle = "rgba(255,255,255,0.9)"; ctx.fillRect(cx0 - 8, cy0 - 2, cw + 16, 42);
    ctx.fillStyle = "#333"; ctx.font = "10px sans-serif"; ctx.textAlign = "center";
    ctx.fillText("label entropy (nats)", cx0 + cw / 2, cy0 + 9);
    for (let j = 0; j < cw; j++) {
      ctx.fillStyle = `hsl(${270 - 200 * j / (cw - 1)}, 70%, 45%)`;
      ctx.fillRect(cx0 + j, cy0 + 13, 1, 9);
    }
    ctx.fillStyle = "#333";
    ctx.textAlign = "left"; ctx.fillText("0", cx0, cy0 + 34);
    ctx.textAlign = "right"; ctx.fillText(eMax.toFixed(2), cx0 + cw, cy0 + 34);
  }
  scatter.style.cursor = "pointer";
  scatter.addEventListener("click", (ev) => {
    const r = scatter.getBoundingClientRect();
    const cx = (ev.clientX - r.left) * W / r.width, cy = (ev.clientY - r.top) * H / r.height;
    let best = -1, bd = 64;
    for (let i = 0; i < N; i++) {
      if (!Number.isFinite(py[i])) continue;
      const d = (toX(px[i]) - cx) ** 2 + (toY(py[i]) - cy) ** 2;
      if (d < bd) { bd = d; best = i; }
    }
    if (best >= 0) window.location.href = featureHref(T.feature[best]);
  });
  app.append(el("h2", { text: "Density" }), el("div", { class: "plots" },
    el("figure", {}, hist, el("figcaption", { text: "How often each live feature fires, over encoded tokens (dense: above 10%, log10 = −1)." })),
    el("figure", {}, scatter, el("figcaption", { text: "Fry's scatter: image density against mean top-20 value, coloured by label entropy (scale at top right, purple lowest; grey: too few labelled top images). Click a point to open its feature." }))));

  // The table: sortable by any column, paginated.
  const cols = [
    ["feature", "feature", true], ["density_images", "image density", true], ["density_tokens", "token density", true],
    ["mean_top20", "mean top-20 value", true], ["entropy", "label entropy", true], ["top_label", "top label", false],
  ];
  if (T.ms) cols.splice(5, 0, ["ms", "monosemanticity", true]);
  if (T.name.some((x) => x !== null)) cols.push(["name", "name", false]);
  let order = Array.from({ length: N }, (_, i) => i);
  let sortKey = "feature", sortDir = 1, page = 0;
  const table = el("table", { id: "feature-table" });
  const head = el("tr");
  const tbody = el("tbody");
  table.append(el("thead", {}, head), tbody);
  const pageInfo = el("span", { id: "page-info" });
  const prev = el("button", { id: "prev-page", text: "‹ previous" });
  const next = el("button", { id: "next-page", text: "next ›" });
  const pages = () => Math.max(1, Math.ceil(N / PAGE));
  const render = () => {
    tbody.replaceChildren();
    for (const i of order.slice(page * PAGE, (page + 1) * PAGE)) {
      const tr = el("tr");
      for (const [k] of cols) {
        const v = T[k][i];
        const td = el("td", { class: typeof v === "number" ? "num" : "" });
        if (k === "feature") td.append(el("a", { href: featureHref(v), text: String(v) }));
        else td.textContent = fmt(v);
        tr.append(td);
      }
      tbody.append(tr);
    }
    pageInfo.textContent = `page ${page + 1} of ${pages()} (${N.toLocaleString()} features)`;
    prev.disabled = page === 0; next.disabled = page >= pages() - 1;
    for (const th of head.children) {
      th.className = "sortable" + (th.dataset.key === sortKey ? (sortDir > 0 ? " sorted-asc" : " sorted-desc") : "");
    }
  };
  const sortBy = (key) => {
    sortDir = key === sortKey ? -sortDir : (key === "feature" || key === "top_label" || key === "name" ? 1 : -1);
    sortKey = key;
    const col = T[key];
    // Empty cells last whichever the direction.
    order.sort((a, b) => {
      const x = col[a], y = col[b];
      if (x === null) return y === null ? a - b : 1;
      if (y === null) return -1;
      return (x < y ? -1 : x > y ? 1 : a - b) * sortDir;
    });
    page = 0; render();
  };
  for (const [k, label] of cols) {
    const th = el("th", { text: label });
    th.dataset.key = k;
    th.addEventListener("click", () => sortBy(k));
    head.append(th);
  }
  prev.addEventListener("click", () => { page = Math.max(0, page - 1); render(); });
  next.addEventListener("click", () => { page = Math.min(pages() - 1, page + 1); render(); });
  app.append(el("h2", { text: "Features" }), el("div", { class: "pager" }, prev, next, pageInfo), table);
  render();
})();

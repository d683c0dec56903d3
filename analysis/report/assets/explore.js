// The explorer's live pages (clipsae serve), drawn from its JSON API: the features table, an image with
// its patches and features, steering, one image through every served codes, and the guessing game.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("explore-data").textContent);
  const app = document.getElementById("app");
  const el = window.clipsae.el;
  const enc = encodeURIComponent;
  const fmt = (x) => (x === null || x === undefined ? "" : String(x));
  const thumb = (codes, image, size) => `/thumbs/${enc(codes)}/${image}.jpg?size=${size || 160}`;
  const featureHref = (codes, f) => `/features/${enc(codes)}/${f}`;
  const imageHref = (codes, key) => `/images/${enc(codes)}/${enc(key)}`;
  const message = el("p", { class: "message", id: "message" });

  async function api(path, options) {
    const r = await fetch(path, options);
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    return body;
  }
  const fail = (err) => { message.textContent = err.message; };

  // Navigation shared by every view: the served codes, and the views of the current ones.
  function header(title) {
    const nav = el("div", { class: "nav" });
    const cur = D.current || D.codes[0].name;
    for (const c of D.codes) {
      nav.append(el("a", { href: `/features/${enc(c.name)}`, class: c.name === cur ? "current" : "", text: `${c.name} (${c.hook})` }));
    }
    nav.append(el("a", { href: `/game/${enc(cur)}`, id: "game-link", text: "guess the image" }));
    app.replaceChildren(nav, el("h1", { text: title }), message);
  }

  function mapped(src, b64, grid, size) {
    // Drawn at the full width whatever the thumbnail's own size, so that the map's cells fall on the image's.
    const img = el("img", { src, alt: "", style: `width:${size}px;max-width:${size}px;max-height:none;display:block` });
    const box = el("div", { class: "thumb", style: `width:${size}px;height:auto` }, img);
    if (b64 && grid) {
      const cv = el("canvas");
      box.append(cv);
      const draw = () => window.clipsae.drawMap(cv, img, b64, grid);
      if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw);
    }
    return box;
  }

  // ---- Features: the navigator -------------------------------------------------------------------------
  function featuresView() {
    const codes = D.current;
    const info = D.codes.find((c) => c.name === codes);
    header(`Features of ${codes}: ${info.model} ${info.hook}`);
    app.append(el("p", { text: `${info.live.toLocaleString()} live features of ${info.n_features.toLocaleString()}, ` +
      `${info.n_images.toLocaleString()} images, tokens ${info.tokens}` +
      (info.random_weights ? " — the model has random weights: names and zero-shot figures mean nothing" : "") }));
    const cols = [["feature", "feature"], ["density", "image density"], ["density_tokens", "token density"],
      ["mean_top", "mean top-20 value"], ["label_entropy", "label entropy"], ["monosemanticity", "monosemanticity"],
      ["top_label", "top label"], ["name", "name"]];
    const st = { sort: "feature", desc: false, offset: 0, limit: 50, state: "live" };
    const number = el("input", { type: "number", min: "0", id: "jump-input", placeholder: "feature #" });
    const go = el("button", { id: "jump-button", text: "open" });
    const goTo = () => {
      const f = Number(number.value);
      if (number.value === "" || !Number.isInteger(f)) { message.textContent = "type a feature number"; return; }
      if (f < 0 || f >= info.n_features) { message.textContent = `no feature ${f}: there are ${info.n_features}`; return; }
      window.location.href = featureHref(codes, f);
    };
    go.addEventListener("click", goTo);
    number.addEventListener("keydown", (e) => { if (e.key === "Enter") goTo(); });
    const text = el("input", { type: "text", id: "text-input", placeholder: "a text, e.g. a dog on grass", size: "30" });
    const search = el("button", { id: "text-button", text: "search" });
    const hits = el("div", { id: "text-hits" });
    const runSearch = async () => {
      if (!text.value.trim()) return;
      hits.replaceChildren(el("p", { text: "asking the text tower… (the model loads on first use)" }));
      try {
        const r = await api(`/api/codes/${enc(codes)}/search?text=${enc(text.value)}&n=10`);
        const p = el("p", {}, `Features nearest to “${r.text}” by cos(decoder direction in the joint space, text): `);
        r.features.forEach((x, i) => {
          if (i) p.append(", ");
          p.append(el("a", { href: featureHref(codes, x.feature), class: "text-hit", text: String(x.feature) }), ` (${x.score})`);
        });
        hits.replaceChildren(p);
      } catch (err) { hits.replaceChildren(); fail(err); }
    };
    search.addEventListener("click", runSearch);
    text.addEventListener("keydown", (e) => { if (e.key === "Enter") runSearch(); });
    const key = el("input", { type: "text", id: "key-input", placeholder: "image key" });
    const openKey = el("button", { id: "key-button", text: "open image" });
    openKey.addEventListener("click", () => { if (key.value) window.location.href = imageHref(codes, key.value); });
    app.append(el("div", { class: "jump" }, "Go to feature ", number, " ", go, " · by text ", text, " ", search,
      " · image ", key, " ", openKey), hits);

    const state = el("select", { id: "filter-state" });
    for (const s of ["live", "dense", "dead", "all"]) state.append(el("option", { value: s, text: s }));
    const minD = el("input", { type: "number", step: "any", id: "filter-min-density", placeholder: "min density", size: "8" });
    const maxD = el("input", { type: "number", step: "any", id: "filter-max-density", placeholder: "max density", size: "8" });
    const label = el("input", { type: "text", id: "filter-label", placeholder: "top label contains", size: "14" });
    const name = el("input", { type: "text", id: "filter-name", placeholder: "name contains", size: "14" });
    const apply = el("button", { id: "filter-apply", text: "filter" });
    app.append(el("div", { class: "jump" }, "Show ", state, " features, image density ", minD, " to ", maxD, ", ", label, " ", name, " ", apply));

    const table = el("table", { id: "feature-table" });
    const head = el("tr");
    const tbody = el("tbody");
    table.append(el("thead", {}, head), tbody);
    const info2 = el("span", { id: "page-info" });
    const prev = el("button", { id: "prev-page", text: "‹ previous" });
    const next = el("button", { id: "next-page", text: "next ›" });
    const load = async () => {
      const q = new URLSearchParams({ sort: st.sort, desc: st.desc ? "1" : "0", offset: st.offset, limit: st.limit, state: st.state });
      for (const [k, input] of [["min_density", minD], ["max_density", maxD], ["label", label], ["name", name]]) {
        if (input.value) q.set(k, input.value);
      }
      try {
        const r = await api(`/api/codes/${enc(codes)}/features?${q}`);
        const total = r.total;
        tbody.replaceChildren();
        for (const row of r.rows) {
          const tr = el("tr");
          for (const [k] of cols) {
            const v = row[k];
            const td = el("td", { class: typeof v === "number" ? "num" : "" });
            if (k === "feature") td.append(el("a", { href: featureHref(codes, v), text: String(v) }));
            else td.textContent = fmt(v);
            tr.append(td);
          }
          tbody.append(tr);
        }
        const pages = Math.max(1, Math.ceil(total / st.limit));
        info2.textContent = `page ${Math.floor(st.offset / st.limit) + 1} of ${pages} (${total.toLocaleString()} features)`;
        prev.disabled = st.offset === 0; next.disabled = st.offset + st.limit >= total;
        for (const th of head.children) {
          th.className = "sortable" + (th.dataset.key === st.sort ? (st.desc ? " sorted-desc" : " sorted-asc") : "");
        }
        message.textContent = "";
      } catch (err) { fail(err); }
    };
    for (const [k, text] of cols) {
      const th = el("th", { text });
      th.dataset.key = k;
      th.addEventListener("click", () => {
        st.desc = k === st.sort ? !st.desc : !(k === "feature" || k === "top_label" || k === "name");
        st.sort = k; st.offset = 0; load();
      });
      head.append(th);
    }
    prev.addEventListener("click", () => { st.offset = Math.max(0, st.offset - st.limit); load(); });
    next.addEventListener("click", () => { st.offset += st.limit; load(); });
    apply.addEventListener("click", () => { st.state = state.value; st.offset = 0; load(); });
    app.append(el("div", { class: "pager" }, prev, next, info2), table);
    load();
  }

  // ---- Image: patches, features, steering ------------------------------------------------------------------
  function imageView() {
    const codes = D.current;
    const info = D.codes.find((c) => c.name === codes);
    const upload = D.upload;
    header(upload ? `Uploaded image in ${codes}` : `Image ${D.key} in ${codes}`);
    const base = upload ? `/api/codes/${enc(codes)}/uploads/${enc(upload)}` : `/api/codes/${enc(codes)}/images/${enc(D.key)}`;
    const SIZE = 448;
    const grid = info.grid;
    const selected = new Set();
    const img = el("img", { id: "main-image", alt: D.key, style: `width:${SIZE}px;display:block` });
    const overlay = el("canvas", { id: "patch-grid", style: "position:absolute;left:0;top:0;cursor:crosshair" });
    const stage = el("div", { style: "position:relative;display:inline-block" }, img, overlay);
    const side = el("div", { style: "flex:1;min-width:320px" });
    const list = el("div", { id: "image-features" });
    const file = el("input", { type: "file", id: "upload-input", accept: "image/png,image/jpeg,image/webp" });
    const linkCompare = upload ? "" : el("a", { href: `/compare/${enc(D.key)}`, id: "compare-link", text: "this image in every served codes" });
    app.append(el("p", {}, "Upload an image: ", file, " ", linkCompare));
    app.append(el("div", { style: "display:flex;gap:24px;flex-wrap:wrap" }, el("div", {}, stage,
      el("p", { id: "selection-info", text: grid ? "Click or drag over patches to select them; click again to clear." : "These codes hold no patch grid." })), side));
    side.append(list);
    file.addEventListener("change", async () => {
      if (!file.files.length) return;
      const form = new FormData();
      form.append("image", file.files[0]);
      message.textContent = "encoding the upload… (the model loads on first use)";
      try {
        const r = await api(`/api/codes/${enc(codes)}/encode`, { method: "POST", body: form });
        window.location.href = `/images/${enc(codes)}/upload?upload=${enc(r.upload)}`;
      } catch (err) { fail(err); }
    });
    if (upload) img.src = `/uploads/${enc(upload)}.jpg?codes=${enc(codes)}`;  // a store image's is set once the API names its number
    const drawGrid = () => {
      if (!grid) return;
      overlay.width = img.width; overlay.height = img.height;
      const ctx = overlay.getContext("2d");
      const [gh, gw] = grid;
      const cw = img.width / gw, ch = img.height / gh;
      ctx.clearRect(0, 0, overlay.width, overlay.height);
      ctx.strokeStyle = "rgba(255,255,255,0.35)";
      for (let r = 0; r < gh; r++) for (let c = 0; c < gw; c++) {
        ctx.strokeRect(c * cw, r * ch, cw, ch);
        if (selected.has(r * gw + c)) { ctx.fillStyle = "rgba(255,200,0,0.45)"; ctx.fillRect(c * cw, r * ch, cw, ch); }
      }
    };
    const cellAt = (ev) => {
      const rect = overlay.getBoundingClientRect();
      const [gh, gw] = grid;
      const c = Math.min(gw - 1, Math.max(0, Math.floor((ev.clientX - rect.left) / rect.width * gw)));
      const r = Math.min(gh - 1, Math.max(0, Math.floor((ev.clientY - rect.top) / rect.height * gh)));
      return [r, c];
    };
    let dragFrom = null;
    overlay.addEventListener("mousedown", (ev) => { if (grid) dragFrom = cellAt(ev); });
    overlay.addEventListener("mouseup", (ev) => {
      if (!grid || !dragFrom) return;
      const [r0, c0] = dragFrom, [r1, c1] = cellAt(ev);
      dragFrom = null;
      if (r0 === r1 && c0 === c1) {
        const p = r0 * grid[1] + c0;
        if (selected.has(p)) selected.delete(p); else selected.add(p);
      } else {
        for (let r = Math.min(r0, r1); r <= Math.max(r0, r1); r++) for (let c = Math.min(c0, c1); c <= Math.max(c0, c1); c++) selected.add(r * grid[1] + c);
      }
      drawGrid(); loadFeatures();
    });

    const steer = { edits: new Map(), classes: null };
    const probs = el("div", { id: "steer-result" });
    const classes = el("input", { type: "text", id: "steer-classes", size: "40", placeholder: "classes, comma-separated [default: the store's]" });
    const reset = el("button", { id: "steer-reset", text: "reset" });
    let timer = null;
    const runSteer = async () => {
      const edits = [...steer.edits.entries()].map(([feature, e]) => ({ feature, ...e }));
      const body = { edits, ...(upload ? { upload } : { key: D.key }) };
      if (classes.value.trim()) body.classes = classes.value.split(",").map((c) => c.trim()).filter((c) => c);
      probs.replaceChildren(el("p", { text: "running the model… (it loads on first use)" }));
      try {
        const r = await api(`/api/codes/${enc(codes)}/steer`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
        const order = r.after.map((x, i) => i).sort((a, b) => r.after[b].prob - r.after[a].prob || r.before[b].prob - r.before[a].prob);
        const t = el("table", { id: "steer-table" });
        t.append(el("tr", {}, el("th", { text: "class" }), el("th", { text: "before" }), el("th", { text: "after" }), el("th", { text: "change" })));
        for (const i of order.slice(0, 8)) {
          const d = r.after[i].prob - r.before[i].prob;
          t.append(el("tr", {}, el("td", { text: r.after[i].class }), el("td", { class: "num prob-before", text: r.before[i].prob.toFixed(4) }),
            el("td", { class: "num prob-after", text: r.after[i].prob.toFixed(4) }), el("td", { class: "num", text: (d >= 0 ? "+" : "") + d.toFixed(4) })));
        }
        probs.replaceChildren(el("p", { id: "steer-cosine", text: `cos(original embedding, edited) = ${r.cosine.toFixed(4)}; ${edits.length} edit(s)` }), t);
      } catch (err) { probs.replaceChildren(); fail(err); }
    };
    const later = () => { clearTimeout(timer); timer = setTimeout(runSteer, 250); };
    reset.addEventListener("click", () => { steer.edits.clear(); for (const s of list.querySelectorAll("input.slider")) s.value = "1"; runSteer(); });
    classes.addEventListener("change", later);

    const loadFeatures = async () => {
      const q = selected.size ? `?patches=${[...selected].sort((a, b) => a - b).join(",")}` : "";
      try {
        const r = await api(base + q);
        if (!upload && !img.src) img.src = thumb(codes, r.image, SIZE);
        document.getElementById("selection-info").textContent = selected.size
          ? `${selected.size} patch(es) selected: each feature's largest value over them` : "All tokens: each feature's largest value over the image. " +
            (grid ? "Click or drag over patches to select them." : "");
        const rows = el("div", { class: "cards" });
        for (const x of r.features) {
          const slider = el("input", { type: "range", min: "-20", max: "20", step: "0.5", value: "1", class: "slider", "data-feature": String(x.feature) });
          const val = el("span", { class: "slider-value", text: "×1" });
          slider.addEventListener("input", () => { val.textContent = `×${slider.value}`; steer.edits.set(x.feature, { op: "scale", value: Number(slider.value) }); later(); });
          const ablate = el("button", { class: "ablate", text: "ablate" });
          ablate.addEventListener("click", () => { steer.edits.set(x.feature, { op: "ablate", value: 0 }); val.textContent = "ablated"; later(); });
          const clamp = el("input", { type: "number", step: "any", class: "clamp", placeholder: "clamp", size: "5" });
          clamp.addEventListener("change", () => { if (clamp.value !== "") { steer.edits.set(x.feature, { op: "clamp", value: Number(clamp.value) }); val.textContent = `=${clamp.value}`; later(); } });
          const card = el("div", { class: "card feature-card", style: "width:200px" },
            mapped(upload ? `/uploads/${enc(upload)}.jpg?codes=${enc(codes)}` : thumb(codes, r.image, 160), x.map, r.grid, 160),
            el("div", {}, el("a", { href: featureHref(codes, x.feature), class: "feature-link", text: `feature ${x.feature}` }), ` value ${x.value}` + (x.name ? ` — ${x.name}` : "")),
            el("div", { class: "tops" }, ...(x.top || []).map((t) => el("a", { href: imageHref(codes, t.key) }, el("img", { src: thumb(codes, t.image, 96), style: "width:46px;height:46px;object-fit:cover", alt: t.key })))),
            el("div", {}, slider, " ", val), el("div", {}, ablate, " ", clamp));
          rows.append(card);
        }
        list.replaceChildren(el("h2", { text: `Top features (${r.features.length} of ${r.total})` }),
          el("div", {}, "Steer: ", classes, " ", reset), probs, rows);
        message.textContent = "";
      } catch (err) { fail(err); }
    };
    img.addEventListener("load", drawGrid);
    loadFeatures();
  }

  // ---- Compare: one image through every served codes ----------------------------------------------------------
  async function compareView() {
    header(`Image ${D.key} in every served codes`);
    try {
      const r = await api(`/api/compare/${enc(D.key)}`);
      const row = el("div", { class: "plots", id: "compare" });
      for (const c of r.codes) {
        const col = el("div", { class: "compare-column" }, el("h2", {}, el("a", { href: c.held ? imageHref(c.codes, D.key) : "#", text: c.codes })));
        if (!c.held) { col.append(el("p", { text: "its store does not hold this image" })); row.append(col); continue; }
        for (const x of c.features) {
          const matches = (x.matches || []).map((m) => `${m.codes} ${m.feature} (${m.affinity})`).join(", ");
          col.append(el("div", { class: "card", style: "width:200px" }, mapped(thumb(c.codes, c.image, 160), x.map, c.grid, 160),
            el("div", {}, el("a", { href: featureHref(c.codes, x.feature), text: `feature ${x.feature}` }), ` value ${x.value}`),
            el("div", { class: "key", title: matches, text: matches ? `matches: ${matches}` : "" })));
        }
        row.append(col);
      }
      app.append(row);
    } catch (err) { fail(err); }
  }

  // ---- Guess the image (Fry's game) ------------------------------------------------------------------------------
  function gameView() {
    const codes = D.current;
    header(`Guess the image from its features: ${codes}`);
    const score = JSON.parse(sessionStorage.getItem("clipsae-game") || '{"right":0,"rounds":0}');
    const scoreLine = el("p", { id: "game-score" });
    const board = el("div", { id: "game-board" });
    const showScore = () => { scoreLine.textContent = `score: ${score.right} of ${score.rounds} rounds`; };
    const round = async () => {
      board.replaceChildren(el("p", { text: "drawing an image…" }));
      try {
        const r = await api(`/api/codes/${enc(codes)}/game`);
        const feats = el("div", { id: "game-features" });
        for (const f of r.features) {
          feats.append(el("div", { class: "game-feature" }, el("div", { text: `feature ${f.feature}, value ${f.value} on the hidden image; its top images:` }),
            el("div", { class: "cards" }, ...f.top.map((t) => el("img", { src: thumb(codes, t.image, 96), alt: "", style: "width:80px;height:80px;object-fit:cover" })))));
        }
        const choices = el("div", { class: "cards", id: "game-choices" });
        const verdict = el("p", { id: "game-verdict" });
        const guess = async (image) => {
          const g = await api(`/api/codes/${enc(codes)}/game/guess?round=${r.round}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ image }) });
          if (image !== null) { score.rounds++; if (g.correct) score.right++; sessionStorage.setItem("clipsae-game", JSON.stringify(score)); }
          showScore();
          verdict.textContent = image === null ? `It was ${g.key}.` : g.correct ? `Right: it was ${g.key}.` : `No: it was ${g.key}.`;
          for (const b of choices.children) {
            b.classList.toggle("answer", Number(b.dataset.image) === g.answer);
            b.disabled = true;
          }
        };
        for (const c of r.choices) {
          const b = el("button", { class: "choice", "data-image": String(c.image) }, el("img", { src: thumb(codes, c.image, 160), alt: c.key }));
          b.addEventListener("click", () => guess(c.image));
          choices.append(b);
        }
        const reveal = el("button", { id: "game-reveal", text: "reveal" });
        reveal.addEventListener("click", () => guess(null));
        const again = el("button", { id: "game-next", text: "next round" });
        again.addEventListener("click", round);
        board.replaceChildren(el("h2", { text: "The hidden image's top features" }), feats, el("h2", { text: "Which image is it?" }), choices,
          el("div", {}, reveal, " ", again), verdict);
      } catch (err) { fail(err); }
    };
    app.append(scoreLine, board);
    showScore();
    round();
  }

  ({ features: featuresView, image: imageView, compare: compareView, game: gameView })[D.view]();
})();

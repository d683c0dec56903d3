// One feature's page, drawn from the JSON record inline in the page: statistics, top images with
// the feature's code over the patch grid, samples from lower intervals, labels, neighbours, matches.
(function () {
  "use strict";
  const R = JSON.parse(document.getElementById("feature-data").textContent);
  const app = document.getElementById("app");
  const el = window.clipsae.el;
  const fmt = (x) => (x === null || x === undefined ? "–" : String(x));
  const L = R.links;
  // Where thumbnails, other features and image pages are: the report's files, or the explorer's URLs.
  const thumbHref = (x) => (L.thumb || "../images/{image}.jpg").replace("{image}", x.image);
  const featureHref = (f) => (L.feature || "{feature}.html").replace("{feature}", f);

  const nav = el("div", { class: "nav" }, el("a", { href: L.index, text: "← all features" }));
  if (L.prev) nav.append(el("a", { href: L.prev, id: "prev-feature", text: "‹ previous live feature" }));
  if (L.next) nav.append(el("a", { href: L.next, id: "next-feature", text: "next live feature ›" }));
  // With random weights a name is noise: it stays out of the title, and the page says why.
  const named = R.names.length && !R.random_weights;
  app.append(nav, el("h1", { text: `Feature ${R.feature}` + (named ? ` — ${R.names[0].word}` : "") }));
  if (R.random_weights) {
    app.append(el("p", { class: "warning", id: "random-weights", text: "The store's model has random weights " +
      "(no --pretrained): feature names and zero-shot figures are not evidence of any concept." }));
  }

  const stats = [
    ["density (images)", `${fmt(R.density_images)} (${R.images_fired.toLocaleString()} images)` +
      ("density_rank" in R ? ` — denser than ${Math.round(100 * R.density_rank)}% of live features` : "")],
    ["density (tokens)", `${fmt(R.density_tokens)} (${R.tokens_fired.toLocaleString()} tokens)` + (R.dense ? " — dense" : "")],
    ["largest value", fmt(R.max)], ["mean of top-20 values", fmt(R.mean_top20)],
    ["label entropy", R.entropy === null ? `– (only ${R.labelled_top} labelled top images)` : `${R.entropy} nats (normalised ${fmt(R.entropy_norm)})`],
    ["top label", fmt(R.top_label)],
  ];
  if ("ms" in R) stats.push(["monosemanticity", R.ms === null ? "– (fires on one image)" : fmt(R.ms)]);
  if (R.neuron) {
    stats.push(["MLP neuron alignment", `|cos| ${R.neuron.max_cos} with neuron ${R.neuron.neuron}` +
      (R.neuron.above_random ? " (above random directions)" : " (not above random directions)")]);
  }
  const st = el("table", { class: "stats" });
  for (const [k, v] of stats) st.append(el("tr", {}, el("th", { text: k }), el("td", { text: v })));
  app.append(st);
  if (R.attributes && R.attributes.length) {
    app.append(el("p", { id: "attributes", text: "Predicts (analyze probe): " +
      R.attributes.map((a) => `${a.attribute} (${a.statistic} ${a.value})`).join(", ") }));
  }
  if (R.names.length) {
    app.append(el("p", { text: "Names (analyze name-features): " +
      R.names.map((n) => `${n.word} (${n.score}, ${n.method})`).join(", ") }));
  }

  // A map with no patch firing (the value is the CLS token's) would darken the whole thumbnail: none is drawn.
  const anyPatch = (b64) => Array.from(atob(b64)).some((c) => c.charCodeAt(0) > 0);
  const card = (x) => {
    const img = el("img", { src: thumbHref(x), alt: `image ${x.key}`, class: "thumbnail" });
    const box = el("div", { class: "thumb" }, img);
    if (L.image_page) {
      box.style.cursor = "pointer";
      box.addEventListener("click", () => { window.location.href = L.image_page.replace("{key}", encodeURIComponent(x.key)); });
    }
    if (x.map && R.grid && !anyPatch(x.map)) box.append(el("div", { class: "nopatch", text: "no patch fires" }));
    if (x.map && R.grid && anyPatch(x.map)) {
      const cv = el("canvas");
      box.append(cv);
      const draw = () => window.clipsae.drawMap(cv, img, x.map, R.grid);
      if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw);
    }
    return el("div", { class: "card" }, box,
      el("div", { text: `value ${x.value}` + (R.grid ? `, token ${x.token}` : "") }),
      el("div", { text: x.label_name }), el("div", { class: "key", title: x.key, text: x.key }));
  };

  if (R.grid) {
    const toggle = el("input", { type: "checkbox", id: "show-maps", checked: "" });
    toggle.addEventListener("change", () => document.body.classList.toggle("hidemaps", !toggle.checked));
    app.append(el("p", {}, el("label", {}, toggle,
      ` show the feature's code over the ${R.grid[0]}×${R.grid[1]} patch grid (darkened where it is small relative to its largest value)`)));
  }
  if (R.segments && R.segments.length) {
    // analyze patch-probe: the classes this feature alone finds best among the segmented patches.
    app.append(el("h2", { text: "Segments (analyze patch-probe)" }));
    const t = el("table", { id: "segments" });
    t.append(el("tr", {}, el("th", { text: "class" }), el("th", { text: "AP" }), el("th", { text: "probe_r" })));
    for (const s of R.segments) {
      t.append(el("tr", {}, el("td", { text: s.class }), el("td", { class: "num", text: fmt(s.ap) }),
        el("td", { class: "num", text: fmt(s.probe_r) })));
    }
    app.append(t);
    const S = R.segment_map;
    if (S && S.class_map && R.grid && !anyPatch(S.class_map)) {
      app.append(el("p", { id: "segment-absent", text: `${S.class} covers no patch of the top image` }));
    } else if (S && S.class_map && R.grid) {
      // Left: the patches the masks give the class on the top image; right: where the feature fires there.
      const classCard = card({ ...S, map: S.class_map });
      classCard.id = "segment-class-map";
      classCard.append(el("div", { text: `patches of ${S.class}` }));
      const featureCard = card(S);
      featureCard.append(el("div", { text: "the feature's code" }));
      app.append(el("div", { class: "cards" }, classCard, featureCard));
    }
  }
  app.append(el("h2", { text: `Top ${R.top.length} images` }), el("div", { class: "cards", id: "top-images" }, ...R.top.map(card)));
  for (const iv of R.intervals) {
    app.append(el("h2", { text: `Values in (${iv.low}, ${iv.high}]` }));
    app.append(iv.images.length ? el("div", { class: "cards" }, ...iv.images.map(card))
      : el("p", { text: "no other images in this interval" }));
  }

  app.append(el("h2", { text: "Labels of the top-20 images" }));
  if (R.labels.length) {
    const t = el("table");
    t.append(el("tr", {}, el("th", { text: "label" }), el("th", { text: "images" }), el("th", { text: "share of value" }), el("th")));
    for (const l of R.labels) {
      t.append(el("tr", {}, el("td", { text: l.name }), el("td", { class: "num", text: String(l.count) }),
        el("td", { class: "num", text: fmt(l.share) }),
        el("td", {}, el("span", { class: "bar", style: `width:${Math.round(200 * (l.share || 0))}px` }))));
    }
    app.append(t);
  } else {
    app.append(el("p", { text: "none of the top images has a label" }));
  }

  app.append(el("h2", { text: "Nearest features by decoder cosine" }));
  if (R.nearest) {
    const p = el("p");
    R.nearest.forEach((n, i) => {
      if (i) p.append(", ");
      p.append(n.live ? el("a", { href: featureHref(n.feature), text: String(n.feature) }) : `${n.feature} (never fired)`, ` (${n.cosine})`);
    });
    app.append(p);
  } else {
    app.append(el("p", { text: "the SAE was not found when the report was written (pass --sae)" }));
  }
  if (R.cofiring) {
    // The explorer's: features firing on the images this page shows.
    app.append(el("h2", { text: "Most co-firing features (on the images shown here)" }));
    const p = el("p", { id: "cofiring" });
    if (!R.cofiring.length) p.append("none");
    R.cofiring.forEach((c, i) => {
      if (i) p.append(", ");
      p.append(el("a", { href: featureHref(c.feature), text: String(c.feature) }), ` (${c.share} of ${c.images} images)`);
    });
    app.append(p);
  }
  if (R.universal) {
    // A universal SAE's latent (analyze universal): the same latent in the run's other models, side by side.
    const U = R.universal;
    app.append(el("h2", { text: "The same latent in the universal SAE's other models" }));
    app.append(el("p", { id: "universality", text: `universality ${U.universality} (its smallest co-firing rate between two models); ` +
      U.models.map((m) => `model ${m.model} (${m.hook}${m.this ? ", this one" : ""}): energy ${m.energy}, fires on ${m.fire_rate} of images`).join("; ") }));
    for (const m of U.models.filter((x) => !x.this)) {
      app.append(el("h3", { text: `Top images in model ${m.model} (${m.hook})` }));
      app.append(m.top.length ? el("div", { class: "cards universal-top" }, ...m.top.map((x) =>
        el("div", { class: "card" }, el("div", { class: "thumb" }, el("img", { src: thumbHref(x), alt: `image ${x.key}`, class: "thumbnail" })),
          el("div", { text: x.label_name }), el("div", { class: "key", title: x.key, text: x.key }))))
        : el("p", { text: "it fires on no shared image there" }));
    }
  }
  if (R.matches.length) {
    app.append(el("h2", { text: "Matched features in other codes" }));
    for (const m of R.matches) {
      const how = m.corr !== undefined ? `r = ${m.corr} (analyze correlate)`
        : `affinity ${m.affinity}: its mean value over this feature's top ${m.images} images, over its own largest`;
      const target = m.href ? el("a", { href: m.href, text: `feature ${m.feature}` }) : `feature ${m.feature}`;
      app.append(el("p", { class: "match" }, `${m.other}: `, target, `, ${how}`));
    }
  }
})();

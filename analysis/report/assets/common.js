// Shared by the report's pages: building elements without HTML strings (data never becomes markup).
window.clipsae = {
  el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  },
  // A feature's patch map (base64 bytes, 0–255 of its largest value, row-major over the grid [rows, cols])
  // drawn smooth over the image it belongs to as a spotlight: patches where the feature is silent are
  // darkened, whatever the image's colours. The canvas lies over the image.
  drawMap(canvas, img, b64, grid) {
    const [gh, gw] = grid;
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const small = document.createElement("canvas");
    small.width = gw; small.height = gh;
    const sctx = small.getContext("2d");
    const data = sctx.createImageData(gw, gh);
    for (let i = 0; i < gw * gh; i++) data.data[4 * i + 3] = Math.round(170 * (1 - bytes[i] / 255));
    sctx.putImageData(data, 0, 0);
    canvas.width = img.width; canvas.height = img.height;
    canvas.style.left = img.offsetLeft + "px"; canvas.style.top = img.offsetTop + "px";
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(small, 0, 0, img.width, img.height);
  },
};

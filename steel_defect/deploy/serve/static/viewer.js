// steel-defect viewer: upload an image to POST /predict, draw the returned RLE masks over it per class.
"use strict";
// The same colours as steel_defect.report.CLASS_COLORS (cycled for more classes).
const COLORS = [[255, 200, 0], [0, 180, 255], [255, 60, 60], [60, 220, 60], [200, 90, 255], [255, 130, 200], [0, 220, 200], [255, 255, 255]];
const state = { model: null, results: [], current: null, shown: {} };
const $ = (id) => document.getElementById(id);

function color(k) { return COLORS[k % COLORS.length]; }

// Every request of the page: same-origin, with the session cookie set by the key prompt (when the service
// has an API key). A 401 means the key changed or the session ended: reload to get the prompt again.
async function api(url, options = {}) {
  const resp = await fetch(url, { credentials: "same-origin", ...options });
  if (resp.status === 401) {
    location.reload();
    throw new Error("the API key is needed again");
  }
  return resp;
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = kind;
}

// Kaggle RLE: 1-indexed start/length pairs over the column-major (top to bottom, then left to right) pixels.
function decodeRle(rle, height, width) {
  const mask = new Uint8Array(height * width);
  if (!rle) return mask;
  const v = rle.trim().split(/\s+/).map(Number);
  for (let i = 0; i + 1 < v.length; i += 2) {
    for (let p = v[i] - 1; p < v[i] - 1 + v[i + 1]; p++) {
      const row = p % height, col = Math.floor(p / height);
      mask[row * width + col] = 1;
    }
  }
  return mask;
}

function param(name, k) {
  const p = state.model && state.model.thresholds.params[name];
  if (p === undefined || p === null) return "-";
  const v = Array.isArray(p) ? p[k] : p;
  return v === null || v === undefined ? "off" : String(v);
}

function draw() {
  const r = state.current;
  if (!r) return;
  const canvas = $("view");
  const { height, width } = r.result.image;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(r.bitmap, 0, 0, width, height);
  const img = ctx.getImageData(0, 0, width, height);
  r.result.classes.forEach((c, k) => {
    if (!c.kept || !state.shown[k]) return;
    const m = r.masks[k], [cr, cg, cb] = color(k);
    for (let i = 0; i < m.length; i++) {
      if (!m[i]) continue;
      const o = 4 * i;
      img.data[o] = Math.round(0.55 * img.data[o] + 0.45 * cr);
      img.data[o + 1] = Math.round(0.55 * img.data[o + 1] + 0.45 * cg);
      img.data[o + 2] = Math.round(0.55 * img.data[o + 2] + 0.45 * cb);
    }
  });
  ctx.putImageData(img, 0, 0);
  ctx.lineWidth = 1;
  r.result.classes.forEach((c, k) => {
    if (!c.kept || !state.shown[k]) return;
    ctx.strokeStyle = `rgb(${color(k).join(",")})`;
    c.boxes.forEach((b) => ctx.strokeRect(b.x + 0.5, b.y + 0.5, b.width - 1, b.height - 1));
  });
}

function renderTable() {
  const r = state.current;
  const body = $("classes").tBodies[0];
  body.innerHTML = "";
  r.result.classes.forEach((c, k) => {
    const tr = document.createElement("tr");
    tr.dataset.class = c.name;
    tr.dataset.kept = c.kept ? "1" : "0";
    tr.dataset.area = String(c.area);
    tr.dataset.probability = String(c.probability);
    const cells = [c.probability.toFixed(3), c.kept ? "yes" : "no", String(c.area), String(c.boxes.length),
                   param("t_cls", k), param("t_pix", k), param("min_area", k)];
    const name = document.createElement("td");
    name.className = "name";
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = `rgb(${color(k).join(",")})`;
    name.append(sw, document.createTextNode(c.name));
    tr.append(name);
    cells.forEach((t) => { const td = document.createElement("td"); td.textContent = t; tr.append(td); });
    body.append(tr);
  });
  $("thresholds").textContent = `thresholds: ${r.result.thresholds.source}; model ${r.result.model.fingerprints.join(", ")}`
    + (r.result.image_probability === null ? "" : `; image probability ${r.result.image_probability.toFixed(3)}`);
}

function renderToggles() {
  const box = $("toggles");
  box.innerHTML = "";
  state.model.classes.forEach((name, k) => {
    if (state.shown[k] === undefined) state.shown[k] = true;
    const label = document.createElement("label");
    const cb = document.createElement("input");
    cb.type = "checkbox";
    cb.checked = state.shown[k];
    cb.dataset.class = name;
    cb.addEventListener("change", () => { state.shown[k] = cb.checked; draw(); });
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = `rgb(${color(k).join(",")})`;
    label.append(cb, sw, document.createTextNode(/^\d+$/.test(name) ? `class ${name}` : name));
    box.append(label);
  });
}

function renderGallery() {
  const g = $("gallery");
  g.innerHTML = "";
  state.results.forEach((r) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = r.thumb;
    const cap = document.createElement("figcaption");
    const kept = r.result.classes.filter((c) => c.kept).map((c) => c.name);
    cap.textContent = `${r.result.image.name}: ${kept.length ? "classes " + kept.join(", ") : "no defect"}`;
    fig.append(img, cap);
    fig.addEventListener("click", () => show(r));
    g.append(fig);
  });
}

function show(r) {
  state.current = r;
  draw();
  renderTable();
}

async function predict(blob, name) {
  setStatus(`predicting ${name}...`, "busy");
  try {
    const resp = await api(`/predict?name=${encodeURIComponent(name)}`, { method: "POST", body: blob });
    const doc = await resp.json();
    if (!resp.ok) throw new Error(`${resp.status}: ${doc.detail || JSON.stringify(doc)}`);
    const bitmap = await createImageBitmap(blob);
    const { height, width } = doc.image;
    const r = { result: doc, bitmap, masks: doc.classes.map((c) => decodeRle(c.rle, height, width)) };
    show(r);
    r.thumb = $("view").toDataURL("image/png");
    state.results.unshift(r);
    state.results.length = Math.min(state.results.length, state.model.gallery || 12);
    renderGallery();
    setStatus(`done: ${doc.image.name}`, "done");
  } catch (err) {
    setStatus(`error: ${err.message}`, "error");
  }
}

async function pick(name) {
  const resp = await api(`/api/images/${encodeURIComponent(name)}`);
  if (!resp.ok) { setStatus(`error: cannot read ${name} (${resp.status})`, "error"); return; }
  await predict(await resp.blob(), name);
}

async function init() {
  state.model = await (await api("/api/model")).json();
  $("model").textContent = `classes ${state.model.classes.join(", ")} · ${state.model.checkpoints.join(", ")}`
    + ` · thresholds: ${state.model.thresholds.source}`;
  renderToggles();
  const listing = await (await api("/api/images")).json();
  const sel = $("pick");
  if (listing.images.length) {
    sel.innerHTML = "";
    listing.images.forEach((n) => { const o = document.createElement("option"); o.value = n; o.textContent = n; sel.append(o); });
  }
  $("pick-go").addEventListener("click", () => { if (sel.value) pick(sel.value); });
  $("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) predict(f, f.name); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) predict(f, f.name);
  });
  document.body.dataset.ready = "1";
  const wanted = new URLSearchParams(location.search).get("pick");
  if (wanted) pick(wanted);
}

init().catch((err) => setStatus(`error: ${err.message}`, "error"));

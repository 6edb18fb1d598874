// The page over the service's API: the model card, the training pictures, and scoring of uploaded
// images (image models) or typed and pasted rows (tabular models). No framework and no build step.
"use strict";

const KEY_STORAGE = "vae-api-key";
const DISPLAY_PX = 160; // an image's longer side on screen; small model images are scaled up, pixelated
const MAX_ROW_INPUTS = 64; // beyond this many features, only the CSV box is offered
const CAPTIONS = { // training/report.py's pictures
  "curves.png": "Training curves: ELBO, reconstruction and KL per epoch (nats per input)",
  "reconstructions.png": "Validation inputs (top) and their reconstructions (bottom)",
  "samples.png": "Samples from the prior, decoded",
  "latents.png": "Posterior means of validation inputs in 2-D",
  "calibration.png": "Calibration anomaly scores and the default threshold",
};

const $ = (id) => document.getElementById(id);
let card = null; // GET /v1/model
let tableRows = 0;

class ApiError extends Error {}

// ---- the API ----

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** fetch with the API key; a non-2xx answer throws ApiError with the server's {"error": ...} text. */
async function api(path, { method = "GET", json, form, accept } = {}) {
  const headers = authHeaders();
  let body;
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets multipart/form-data with its boundary
  }
  if (accept) headers.accept = accept;
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (err) {
    throw new ApiError(`could not reach the service (${err.message})`);
  }
  if (!response.ok) throw new ApiError(await errorText(response));
  return response;
}

async function errorText(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
  } catch (_) { /* not JSON: keep the status text */ }
  const hint = response.status === 401 ? " (type the key in the API key field above)" : "";
  return `${response.status}: ${message}${hint}`;
}

const postJson = async (path, json) => (await api(path, { method: "POST", json })).json();

// ---- small helpers ----

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

/** Four significant digits for the eye; the exact number stays in data-value. */
function fmt(x) {
  if (typeof x !== "number") return String(x);
  return Number(x.toPrecision(4)).toString();
}

function showError(node, message) {
  node.textContent = message;
  node.hidden = !message;
}

/** One <dt>/<dd> pair; the <dd> carries data-field and, for numbers, the exact data-value. */
function field(list, label, name, value, text) {
  const dd = el("dd", { "data-field": name, text: text ?? fmt(value) });
  if (typeof value === "number") dd.dataset.value = String(value);
  list.append(el("dt", { text: label }), dd);
  return dd;
}

function options() {
  const seed = $("opt-seed").value.trim();
  const n = $("opt-n-samples").value.trim();
  return { ...(seed !== "" && { seed }), ...(n !== "" && { n_samples: n }) };
}

function pixelSize() {
  const { height, width } = card.image;
  const scale = Math.max(1, Math.floor(DISPLAY_PX / Math.max(height, width)));
  return { width: String(width * scale), height: String(height * scale) };
}

// ---- the model card and the pictures ----

async function loadCard() {
  showError($("page-error"), "");
  try {
    card = await (await api("/v1/model")).json();
  } catch (err) {
    showError($("page-error"), `Model card: ${err.message}`);
    return;
  }
  renderCard();
  loadPictures();
  setUpScoring();
}

function renderCard() {
  const list = $("card-fields");
  list.replaceChildren();
  const calibration = card.scoring.calibration;
  field(list, "name", "name", card.name);
  field(list, "likelihood", "likelihood", card.likelihood);
  field(list, "architecture", "architecture", card.architecture);
  field(list, "input shape", "input_shape", null, card.input_shape.join(" × "));
  field(list, "latent dim", "latent_dim", card.latent_dim);
  const threshold = card.threshold === calibration.threshold
    ? `${fmt(card.threshold)} (calibrated)`
    : `${fmt(card.threshold)} (set by VAE_THRESHOLD; calibrated: ${fmt(calibration.threshold)})`;
  field(list, "threshold", "threshold", card.threshold, threshold);
  // The rate the threshold was set for; when the calibration split was too small for the default, why.
  field(list, "false-alarm rate", "fpr", calibration.fpr,
    calibration.fpr_note ? `${fmt(calibration.fpr)} (${calibration.fpr_note})` : undefined);
  // The estimator the threshold was set with: -L_K, or -ELBO_L; its draws chosen from the data when selection is set.
  const { estimator, iw_samples: k, n_samples: l = 1, iw_selection: chosen } = card.scoring;
  const byElbo = estimator === "elbo";
  field(list, "anomaly score", "estimator", null, byElbo ? "−elbo (ELBO_L)" : "−log_likelihood (L_K)");
  const [drawsLabel, drawsName, draws] = byElbo ? ["n_samples (L)", "n_samples", l] : ["iw_samples (K)", "iw_samples", k];
  field(list, drawsLabel, drawsName, draws, chosen
    ? `${draws} (chosen: score noise ${fmt(chosen.ladder.at(-1).noise)} nats, at most ${chosen.tolerance} × IQR)`
    : undefined);
  // The page scores with the calibrated L, so its decisions are the default ones.
  if (byElbo) $("opt-n-samples").value = String(l);
  field(list, "calibration rows", "calibration_n", calibration.n);
  if (card.image) {
    const { channels, height, width, resize } = card.image;
    field(list, "images", "image", null,
      `${channels === 1 ? "grey" : "colour"}, ${height} × ${width}${resize ? " (others are resized)" : ""}`);
  }
  field(list, "trained on", "data_source", null,
    `${card.training.data_source}, ${card.training.epochs} epochs (best ${card.training.best_epoch})`);
  field(list, "runtime", "runtime", card.runtime);
  $("card").hidden = false;
}

async function loadPictures() {
  const list = $("picture-list");
  list.replaceChildren();
  let pictures;
  try {
    pictures = (await (await api("/v1/model/report")).json()).pictures;
  } catch (err) {
    list.append(el("p", { class: "error", text: `Training pictures: ${err.message}` }));
    $("pictures").hidden = false;
    return;
  }
  if (pictures.length === 0) {
    list.append(el("p", { class: "hint", text: "No pictures in the model's report/ folder (`vae report DIR` writes them)." }));
  }
  $("pictures").hidden = false;
  const known = Object.keys(CAPTIONS);
  const rank = (name) => (known.includes(name) ? known.indexOf(name) : known.length);
  pictures.sort((a, b) => rank(a.name) - rank(b.name) || a.name.localeCompare(b.name));
  for (const { name, url } of pictures) {
    const img = el("img", { alt: CAPTIONS[name] || name });
    const link = el("a", { target: "_blank", title: `${name}: open full size` }, img);
    list.append(el("figure", { "data-picture": name }, link, el("figcaption", { text: CAPTIONS[name] || name })));
    // Fetched with the API key, then shown from a blob: an <img src> could not send the header.
    api(url).then(async (r) => { img.src = link.href = URL.createObjectURL(await r.blob()); })
      .catch((err) => link.replaceWith(el("p", { class: "error", text: err.message })));
  }
}

// ---- scoring ----

function setUpScoring() {
  $("scoring").hidden = false;
  $("image-input").hidden = !card.image;
  $("table-input").hidden = Boolean(card.image);
  if (!card.image) buildRowForm();
}

function verdict(scores, i) {
  const flagged = scores.is_anomaly[i];
  const relation = flagged ? ">" : "≤";
  return el("p", { class: `verdict ${flagged ? "anomaly" : "normal"}`, "data-field": "is_anomaly", "data-value": String(flagged),
    text: `${flagged ? "Anomaly" : "Normal"}: score ${fmt(scores.anomaly_score[i])} ${relation} threshold ${fmt(scores.threshold)}` });
}

function scoreFields(list, scores, i) {
  field(list, "anomaly score", "anomaly_score", scores.anomaly_score[i]);
  field(list, "threshold", "threshold", scores.threshold);
  field(list, "p-value", "p_value", scores.p_value[i]);
  field(list, "elbo", "elbo", scores.elbo[i]);
  field(list, "reconstruction", "reconstruction", scores.reconstruction[i]);
  field(list, "kl", "kl", scores.kl[i]);
  field(list, "seed", "seed", scores.seed);
  field(list, "n_samples, K", "samples", null, `${scores.n_samples}, ${scores.iw_samples}`);
}

// Images: each file gets a card with the upload, its reconstruction, its heatmap and its scores.

function uploadForm(file, extra = {}) {
  const form = new FormData();
  form.append("files", file, file.name);
  for (const [name, value] of Object.entries(extra)) form.append(name, value);
  return form;
}

async function reconstruction(file) {
  const { mu } = await (await api("/encode", { method: "POST", form: uploadForm(file) })).json();
  const png = await api("/decode", { method: "POST", json: { z: mu }, accept: "image/png" });
  return png.blob();
}

// Heatmaps: each image's per-pixel share of −reconstruction in nats (its /elbo feature_scores, channels
// added up, as POST /heatmap computes them), drawn on one scale shared by every image on the page, so the
// colours of two images compare. POST /heatmap scales each image by its own largest score, which cannot.
const RAMP = [[0, 0, 0], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]]; // service/core/images.py's
const heatmaps = []; // { canvas, scores: H rows of W nats }
let heatScale = 0; // nats: the largest per-pixel score of any image on the page, the top of the legend

/** A value in [0, 1] as [r, g, b], linear between the ramp's anchors (service/core/images.py's heat_colours). */
function heatColour(value) {
  const position = Math.min(Math.max(value, 0), 1) * (RAMP.length - 1);
  const low = Math.min(Math.floor(position), RAMP.length - 2);
  const frac = position - low;
  return RAMP[low].map((a, k) => Math.round(a * (1 - frac) + RAMP[low + 1][k] * frac));
}

/** feature_scores[i], shaped [C][H][W], as H rows of W nats with the channels added up. */
function pixelScores(featureScores) {
  return featureScores[0].map((row, h) => row.map((_, w) => featureScores.reduce((sum, ch) => sum + ch[h][w], 0)));
}

function drawHeatmap({ canvas, scores }) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  scores.flat().forEach((nats, i) => {
    const [r, g, b] = heatColour(heatScale > 0 ? Math.max(nats, 0) / heatScale : 0);
    image.data.set([r, g, b, 255], 4 * i);
  });
  context.putImageData(image, 0, 0);
}

/** Add an image's heatmap; when its largest score is a new top, every heatmap is redrawn on the new scale. */
function addHeatmap(canvas, scores) {
  const entry = { canvas, scores };
  heatmaps.push(entry);
  const top = Math.max(...scores.flat());
  if (top > heatScale) {
    heatScale = top;
    heatmaps.forEach(drawHeatmap);
    drawLegend();
  } else {
    drawHeatmap(entry);
  }
}

function drawLegend() {
  const legend = $("heat-legend");
  const bar = legend.querySelector("canvas");
  const context = bar.getContext("2d");
  for (let x = 0; x < bar.width; x += 1) {
    const [r, g, b] = heatColour(x / (bar.width - 1));
    context.fillStyle = `rgb(${r}, ${g}, ${b})`;
    context.fillRect(x, 0, 1, bar.height);
  }
  legend.dataset.max = String(heatScale);
  legend.querySelector("[data-legend=max]").textContent = `${fmt(heatScale)} nats`;
  legend.hidden = false;
}

function figure(caption, role) {
  const img = el("img", { class: "pixels", alt: caption, "data-image": role, ...pixelSize() });
  return [img, el("figure", {}, img, el("figcaption", { text: caption }))];
}

/** A canvas of the model's image size, shown at the page's pixel size (scaled up, pixelated). */
function heatFigure(caption) {
  const { height, width } = card.image;
  const shown = pixelSize();
  const canvas = el("canvas", { class: "pixels", "data-image": "heatmap", width: String(width), height: String(height),
    role: "img", "aria-label": caption });
  // Through the CSSOM: the page's Content-Security-Policy refuses style attributes.
  canvas.style.width = `${shown.width}px`;
  canvas.style.height = `${shown.height}px`;
  return [canvas, el("figure", {}, canvas, el("figcaption", { text: caption }))];
}

async function scoreImage(file) {
  const opts = options();
  const [original, originalFigure] = figure("uploaded", "original");
  const [recon, reconFigure] = figure("reconstruction", "reconstruction");
  const [heat, heatFig] = heatFigure("heatmap: −reconstruction per pixel (nats; scale below)");
  const scores = el("dl", { class: "scores" });
  const error = el("p", { class: "error", role: "alert", hidden: "" });
  const status = el("p", { class: "hint", text: "scoring…" });
  const result = el("article", { class: "result", "data-file": file.name, "data-state": "pending" },
    el("h3", { text: file.name }), el("div", { class: "images" }, originalFigure, reconFigure, heatFig),
    status, scores, error);
  $("image-results").prepend(result);
  original.src = URL.createObjectURL(file);

  const errors = new Set();
  const show = (img) => (blob) => { img.src = URL.createObjectURL(blob); };
  const noted = (img) => (err) => { errors.add(err.message); img.closest("figure").classList.add("failed"); };
  await Promise.all([
    reconstruction(file).then(show(recon), noted(recon)),
    api("/elbo", { method: "POST", form: uploadForm(file, { ...opts, feature_scores: "true" }) }).then(async (r) => {
      const body = await r.json();
      status.replaceWith(verdict(body, 0));
      scoreFields(scores, body, 0);
      addHeatmap(heat, pixelScores(body.feature_scores[0]));
    }, (err) => { errors.add(err.message); status.remove(); noted(heat)(err); }),
  ]);
  showError(error, [...errors].join("\n"));
  result.dataset.state = errors.size ? "error" : "done";
}

function scoreFiles(files) {
  for (const file of files) scoreImage(file);
}

// Rows: one input per feature, or CSV lines pasted into the box.

// A feature's name: the data's column name when the model kept them (manifest feature_names), else x0, x1, …
function featureName(j) {
  return card.feature_names?.[j] ?? `x${j}`;
}

function buildRowForm() {
  const d = card.input_shape.reduce((a, b) => a * b, 1);
  const fields = $("row-fields");
  fields.replaceChildren();
  if (d > MAX_ROW_INPUTS) {
    $("row-form").hidden = true;
    return;
  }
  const offset = card.preprocessing.offset;
  for (let j = 0; j < d; j++) {
    const typical = Array.isArray(offset) ? offset[j] : offset;
    fields.append(el("label", {}, featureName(j),
      el("input", { type: "text", inputmode: "decimal", "data-feature": String(j), value: fmt(typical) })));
  }
}

function parseNumber(text) {
  const trimmed = text.trim();
  const value = Number(trimmed);
  return trimmed !== "" && Number.isFinite(value) ? value : null;
}

function parseCsv(text) {
  const lines = text.split(/\r?\n/).map((line, i) => [i + 1, line.trim()]).filter(([, line]) => line);
  const rows = [];
  for (const [index, [number, line]] of lines.entries()) {
    const cells = line.split(/[,;\t]/);
    const values = cells.map(parseNumber);
    const bad = values.indexOf(null);
    if (bad === -1) {
      rows.push(values);
    } else if (index !== 0) { // only the first line may be a header
      throw new ApiError(`line ${number}: field ${bad + 1} (${JSON.stringify(cells[bad].trim())}) is not a finite number`);
    }
  }
  if (rows.length === 0) throw new ApiError("no rows of numbers to score: paste one row per line, separated by commas");
  return rows;
}

async function scoreRows(rows) {
  showError($("table-error"), "");
  let scores;
  try {
    const opts = Object.fromEntries(Object.entries(options()).map(([k, v]) => [k, Number(v)]));
    scores = await postJson("/elbo", { instances: rows, ...opts });
  } catch (err) {
    showError($("table-error"), err.message);
    return;
  }
  const body = $("table-results").querySelector("tbody");
  rows.forEach((_, i) => {
    tableRows += 1;
    const cell = (name, value, text) => el("td", { "data-field": name, "data-value": String(value), text: text ?? fmt(value) });
    const flagged = scores.is_anomaly[i];
    body.prepend(el("tr", { "data-row": String(tableRows) },
      el("td", { text: `#${tableRows}` }),
      cell("elbo", scores.elbo[i]),
      cell("anomaly_score", scores.anomaly_score[i]),
      cell("threshold", scores.threshold),
      el("td", { class: flagged ? "anomaly" : "normal", "data-field": "is_anomaly", "data-value": String(flagged),
        text: flagged ? "anomaly" : "normal" }),
      cell("p_value", scores.p_value[i])));
  });
  $("table-results").hidden = false;
}

// ---- wiring ----

function wire() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    loadCard();
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    loadCard();
  });
  $("options").addEventListener("submit", (event) => event.preventDefault());

  $("file-input").addEventListener("change", (event) => {
    scoreFiles(event.target.files);
    event.target.value = ""; // the same file again is a new choice
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    scoreFiles(event.dataTransfer.files);
  });
  // A file dropped next to the zone must not make the browser leave the page to show it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  $("row-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const inputs = [...$("row-fields").querySelectorAll("input")];
    const values = inputs.map((input) => parseNumber(input.value));
    const bad = values.indexOf(null);
    if (bad !== -1) {
      showError($("table-error"), `${featureName(bad)}: ${JSON.stringify(inputs[bad].value)} is not a finite number`);
      return;
    }
    scoreRows([values]);
  });
  $("csv-form").addEventListener("submit", (event) => {
    event.preventDefault();
    let rows;
    try {
      rows = parseCsv($("csv-text").value);
    } catch (err) {
      showError($("table-error"), err.message);
      return;
    }
    scoreRows(rows);
  });
}

wire();
loadCard();

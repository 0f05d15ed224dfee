// The consultation page: upload a photo, choose the settings, compare before and simulation.
// Every request goes to the server that sent this page; nothing else is contacted.
"use strict";

const $ = (id) => document.getElementById(id);
const REGION_COLOURS = {
  eyes: "#00aaff", nose: "#ffc800", jaw: "#ff3ca0", lips: "#ff5a28", chin: "#a05aff", brows: "#00dc8c",
};

const page = {
  models: [],
  model: null,      // the chosen model's description (from /api/models)
  file: null,       // the chosen File, kept to upload again if the server dropped the photo
  photo: null,      // the server's description of the photo on screen
  result: null,     // the server's answer to the last simulation shown
  pinned: null,     // {result, caption}: setting A of the A/B comparison
  reference: null,  // the uploaded reference photo (reference-guided models)
  kept: {},         // model id -> its settings, kept while another model is chosen
  view: "face",
  sequence: 0,      // only the newest simulation is shown when several overlap
  timer: null,
  started: 0,       // when the action the status times began (the upload, or a change)
};

function setState(state) {
  document.body.dataset.state = state;
  $("results").setAttribute("aria-busy", state === "busy" ? "true" : "false");
}

function say(message, kind = "") {
  const status = $("status");
  status.textContent = message;
  status.className = kind;
  status.setAttribute("role", kind === "error" ? "alert" : "status");
}

async function api(url, options = {}) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  let body = {};
  try {
    body = await response.json();
  } catch (error) {
    body = {};
  }
  if (!response.ok) {
    const problem = new Error(body.error || `the server answered ${response.status} ${response.statusText}`);
    problem.status = response.status;
    throw problem;
  }
  return body;
}

function postJSON(url, body) {
  return api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function loaded(img, url) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve();
    img.onerror = () => reject(new Error("an image of the result could not be loaded; simulate again"));
    img.src = url;
  });
}

function pretty(name) {
  return name.charAt(0).toUpperCase() + name.slice(1).replace(/[_-]/g, " ");
}

// -- controls ---------------------------------------------------------------------------------

function defaults(model) {
  return {
    procedures: Object.fromEntries(model.procedures.map((name) => [name, { on: false, strength: 1 }])),
    intensity: 1,
    composite: model.composite,
    seed: 0,
  };
}

function buildControls() {
  const model = page.model;
  const box = $("procedures");
  box.replaceChildren();
  for (const name of model.procedures) {
    const row = document.createElement("div");
    row.className = "procedure";
    const label = document.createElement("label");
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.value = name;
    tick.name = "procedure";
    tick.id = `procedure-${name}`;
    tick.addEventListener("change", () => changed());
    label.append(tick, " " + pretty(name));
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = "0";
    slider.max = "1";
    slider.step = "0.05";
    slider.value = "1";
    slider.id = `strength-${name}`;
    slider.setAttribute("aria-label", `${pretty(name)} strength`);
    const value = document.createElement("output");
    value.id = `strength-${name}-value`;
    value.textContent = "1.00";
    slider.addEventListener("input", () => { value.textContent = Number(slider.value).toFixed(2); });
    slider.addEventListener("change", () => {
      tick.checked = true;
      changed();
    });
    row.append(label, slider, value);
    box.append(row);
  }
  $("procedures-section").hidden = model.procedures.length === 0;
  $("intensity-section").hidden = !model.intensity;
  $("seed-section").hidden = !model.seed;
  $("reference-section").hidden = !model.reference;
  apply(page.kept[model.id] || defaults(model));
}

function current() {
  const model = page.model;
  const procedures = {};
  for (const name of model.procedures) {
    procedures[name] = { on: $(`procedure-${name}`).checked, strength: Number($(`strength-${name}`).value) };
  }
  return {
    procedures,
    intensity: Number($("intensity").value),
    composite: $("composite").checked,
    seed: Math.max(0, Math.floor(Number($("seed").value) || 0)),
  };
}

function apply(kept) {
  for (const [name, { on, strength }] of Object.entries(kept.procedures)) {
    if (!$(`procedure-${name}`)) continue;
    $(`procedure-${name}`).checked = on;
    $(`strength-${name}`).value = String(strength);
    $(`strength-${name}-value`).textContent = Number(strength).toFixed(2);
  }
  $("intensity").value = String(kept.intensity);
  $("intensity-value").textContent = Number(kept.intensity).toFixed(2);
  $("composite").checked = kept.composite;
  $("seed").value = String(kept.seed);
}

function settings() {
  const model = page.model;
  const chosen = current();
  const body = { photo: page.photo.photo, model: model.id, composite: chosen.composite };
  if (model.procedures.length) {
    body.procedures = Object.fromEntries(
      Object.entries(chosen.procedures).filter(([, value]) => value.on).map(([name, value]) => [name, value.strength]),
    );
  }
  if (model.intensity) body.intensity = chosen.intensity;
  if (model.seed) body.seed = chosen.seed;
  if (model.reference && page.reference) body.reference = page.reference.photo;
  return body;
}

function describe(answer) {
  const parts = [];
  const used = answer.settings;
  if (used.procedures) {
    const ticked = Object.entries(used.procedures).map(([name, value]) => `${name} ${value.toFixed(2)}`);
    parts.push(ticked.length ? ticked.join(", ") : "no procedure");
  }
  if (used.intensity !== undefined) parts.push(`intensity ${used.intensity.toFixed(2)}`);
  parts.push(used.composite ? "composite" : "no composite");
  return `${answer.label}: ${parts.join(" · ")}`;
}

// -- photo ------------------------------------------------------------------------------------

async function uploadFile(file) {
  return api("/api/photos", {
    method: "POST",
    headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
    body: file,
  });
}

// Whatever belonged to the photo on screen goes with it: images, result, comparison, face.
function clearPhoto() {
  page.photo = null;
  page.result = null;
  page.pinned = null;
  ++page.sequence;
  $("results").hidden = true;
  $("ab").hidden = true;
  $("face-section").hidden = true;
  for (const id of ["compare-before", "compare-after", "side-before", "side-after", "difference", "ab-a", "ab-b"]) {
    $(id).removeAttribute("src");
  }
  $("overlay-layer").replaceChildren();
  $("simulate").disabled = true;
  $("save").disabled = true;
  $("pin").disabled = true;
  delete document.body.dataset.result;
}

async function choose(file) {
  if (!file) return;
  clearPhoto();
  page.file = file;
  page.started = performance.now();
  $("photo-name").textContent = file.name;
  setState("busy");
  say("Reading the photo…");
  try {
    page.photo = await uploadFile(file);
  } catch (error) {
    clearPhoto();
    page.file = null;
    $("photo-name").textContent = "";
    setState("error");
    say(error.message, "error");
    return;
  }
  showFace();
  $("simulate").disabled = false;
  await simulate(page.started);
}

function showFace() {
  const overlay = page.photo.overlay;
  const count = overlay.faces.length;
  let text = "";
  if (count > 1) {
    text = `${count} faces found: the largest is used. Show the whole photo with the overlay on and click another face to use it.`;
  } else if (count === 1) {
    text = "1 face found. Adjust its square below if it is framed badly.";
  } else {
    text = "Face found by skin colour (the face layer is not installed): adjust the square if needed.";
  }
  $("face-info").textContent = text;
  $("face-section").hidden = false;
  drawOverlay();
}

async function reframe(body) {
  if (!page.photo) return;
  setState("busy");
  say("Framing the face…");
  try {
    page.photo = await postJSON(`/api/photos/${page.photo.photo}/face`, body);
  } catch (error) {
    setState("error");
    say(error.message, "error");
    return;
  }
  showFace();
  await simulate();
}

function nudge(button) {
  if (!page.photo) return;
  const [x0, y0, x1, y1] = page.photo.box;
  const side = x1 - x0;
  let cx = (x0 + x1) / 2;
  let cy = (y0 + y1) / 2;
  let half = side / 2;
  if (button.dataset.move) {
    const [dx, dy] = button.dataset.move.split(",").map(Number);
    cx += dx * 0.05 * side;
    cy += dy * 0.05 * side;
  } else {
    half *= Number(button.dataset.scale);
  }
  reframe({ box: [cx - half, cy - half, cx + half, cy + half] });
}

function svg(kind, attributes) {
  // The overlay's own namespace (SVG's): the page names no address.
  const node = document.createElementNS($("overlay-layer").namespaceURI, kind);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

// The face squares (every face in the whole-photo view; the one used is green) and the used
// face's procedure regions, in photo pixels mapped onto the view shown.
function drawOverlay() {
  const layer = $("overlay-layer");
  layer.replaceChildren();
  const show = $("overlay").checked && page.photo;
  layer.hidden = !show;
  if (!show) return;
  const [vx0, vy0, vx1, vy1] = page.photo.views[page.view];
  layer.setAttribute("viewBox", `${vx0} ${vy0} ${vx1 - vx0} ${vy1 - vy0}`);
  layer.setAttribute("preserveAspectRatio", "none");
  const overlay = page.photo.overlay;
  const stroke = Math.max(1, (vx1 - vx0) / 300);
  for (const [name, polygons] of Object.entries(overlay.regions)) {
    for (const polygon of polygons) {
      layer.append(svg("polygon", {
        points: polygon.map(([x, y]) => `${x},${y}`).join(" "), fill: "none",
        stroke: REGION_COLOURS[name] || "#fff", "stroke-width": stroke, class: `region region-${name}`,
      }));
    }
  }
  overlay.faces.forEach((square, index) => {
    if (index === overlay.face) return;
    const [x0, y0, x1, y1] = square;
    const rect = svg("rect", {
      x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "transparent", stroke: "#dddddd",
      "stroke-width": stroke, "stroke-dasharray": `${4 * stroke} ${3 * stroke}`, class: "other-face",
      "data-face": String(index), tabindex: "0", role: "button", "aria-label": `Use face ${index + 1}`,
    });
    rect.addEventListener("click", () => reframe({ face: index }));
    rect.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") reframe({ face: index });
    });
    layer.append(rect);
  });
  const [x0, y0, x1, y1] = page.photo.box;
  layer.append(svg("rect", {
    x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none", stroke: "#28ff28",
    "stroke-width": 1.5 * stroke, class: "face-square",
  }));
}

async function chooseReference(file) {
  if (!file) return;
  $("reference-name").textContent = file.name;
  say("Reading the reference photo…");
  try {
    page.reference = await uploadFile(file);
  } catch (error) {
    page.reference = null;
    $("reference-name").textContent = "";
    say(error.message, "error");
    return;
  }
  changed();
}

// -- simulation -------------------------------------------------------------------------------

// A change of settings simulates again after a short pause, so a burst of changes costs one run.
function changed() {
  page.kept[page.model.id] = current();
  if (!page.photo) return;
  clearTimeout(page.timer);
  page.started = performance.now();
  setState("busy");
  page.timer = setTimeout(() => simulate(page.started), 150);
}

async function simulate(started = performance.now()) {
  if (!page.photo) return;
  clearTimeout(page.timer);
  const sequence = ++page.sequence;
  setState("busy");
  say("Simulating…");
  let result;
  try {
    try {
      result = await postJSON("/api/simulate", settings());
    } catch (error) {
      if (error.status !== 404 || !page.file) throw error;
      page.photo = await uploadFile(page.file);  // the server no longer held the photo: send it again
      showFace();
      result = await postJSON("/api/simulate", settings());
    }
    if (sequence !== page.sequence) return;
    await show(result);
  } catch (error) {
    if (sequence !== page.sequence) return;
    setState("error");
    say(error.message, "error");
    return;
  }
  if (sequence !== page.sequence) return;
  const seconds = (performance.now() - started) / 1000;
  if (result.changed) {
    say(`Simulated in ${seconds.toFixed(2)} s (model ${result.timings.model.toFixed(2)} s).`);
  } else {
    say(`No visible change: ${result.note}`, "warning");
  }
  document.body.dataset.result = result.result;
  document.body.dataset.changed = String(result.changed);
  setState("ready");
}

async function show(result) {
  const images = result.images[page.view];
  $("results").hidden = false;
  const waits = [
    loaded($("compare-before"), images.before),
    loaded($("compare-after"), images.after),
    loaded($("side-before"), images.before),
    loaded($("side-after"), images.after),
    loaded($("difference"), images.difference),
  ];
  if (page.pinned) {
    waits.push(loaded($("ab-a"), page.pinned.result.images[page.view].after));
    waits.push(loaded($("ab-b"), images.after));
    $("ab-a-caption").textContent = `A — ${page.pinned.caption}`;
    $("ab-b-caption").textContent = `B — ${describe(result)}`;
  }
  await Promise.all(waits);
  const shown = $("compare-before");
  $("compare").style.setProperty("--aspect", String(shown.naturalWidth / Math.max(1, shown.naturalHeight)));
  page.result = result;
  $("ab").hidden = !page.pinned;
  $("save").disabled = false;
  $("pin").disabled = false;
  drawOverlay();
}

function pin() {
  if (!page.result) return;
  page.pinned = { result: page.result, caption: describe(page.result) };
  say("Kept as A. Change the settings: B follows them.", "");
  show(page.result).catch((error) => say(error.message, "error"));
}

function unpin() {
  page.pinned = null;
  $("ab").hidden = true;
}

function save() {
  if (!page.result) return;
  const link = document.createElement("a");
  link.href = page.result.images[page.view].export;
  link.download = "";
  document.body.append(link);
  link.click();
  link.remove();
}

function split() {
  const at = Number($("split").value);
  $("compare-clip").style.clipPath = `inset(0 0 0 ${at}%)`;
  $("divider").style.left = `${at}%`;
}

// -- start ------------------------------------------------------------------------------------

function chooseModel() {
  page.kept[page.model.id] = current();
  page.model = page.models.find((model) => model.id === $("model").value) || page.models[0];
  buildControls();
  changed();
}

function reset() {
  apply(defaults(page.model));
  page.reference = null;
  $("reference-name").textContent = "";
  $("reference-file").value = "";
  changed();
}

function wireDrop() {
  const zone = $("drop");
  for (const kind of ["dragenter", "dragover"]) {
    zone.addEventListener(kind, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const kind of ["dragleave", "drop"]) {
    zone.addEventListener(kind, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    choose(event.dataTransfer.files[0]);
  });
  // A photo dropped beside the zone must not make the browser open it instead of the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  zone.addEventListener("click", () => $("file").click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
}

async function start() {
  wireDrop();
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    // Cleared at once, so choosing the same file again is a change too.
    event.target.value = "";
    choose(file);
  });
  $("reference-file").addEventListener("change", (event) => chooseReference(event.target.files[0]));
  $("model").addEventListener("change", chooseModel);
  $("intensity").addEventListener("input", () => {
    $("intensity-value").textContent = Number($("intensity").value).toFixed(2);
  });
  $("intensity").addEventListener("change", () => changed());
  $("seed").addEventListener("change", () => changed());
  $("composite").addEventListener("change", () => changed());
  $("overlay").addEventListener("change", drawOverlay);
  for (const button of document.querySelectorAll(".nudge button")) {
    button.addEventListener("click", () => nudge(button));
  }
  $("simulate").addEventListener("click", () => simulate());
  $("reset").addEventListener("click", reset);
  $("save").addEventListener("click", save);
  $("pin").addEventListener("click", pin);
  $("unpin").addEventListener("click", unpin);
  $("split").addEventListener("input", split);
  for (const radio of document.querySelectorAll('input[name="view"]')) {
    radio.addEventListener("change", async () => {
      page.view = radio.value;
      drawOverlay();
      if (page.result) {
        try {
          await show(page.result);
        } catch (error) {
          say(error.message, "error");
        }
      }
    });
  }
  split();
  try {
    page.models = (await api("/api/models")).models;
  } catch (error) {
    setState("error");
    say(error.message, "error");
    return;
  }
  const select = $("model");
  for (const model of page.models) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.label;
    select.append(option);
  }
  $("model-section").hidden = page.models.length < 2;
  page.model = page.models[0];
  buildControls();
  setState("idle");
  say("Choose or drop a photo to begin.");
}

start();

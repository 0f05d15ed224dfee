// The consultation page: upload a photo, choose the settings, compare before and simulation.
// Every request goes to the server that sent this page; nothing else is contacted.
"use strict";

const $ = (id) => document.getElementById(id);

const page = {
  models: [],
  model: null,     // the chosen model's description (from /api/models)
  file: null,      // the chosen File, kept to upload again if the server dropped the photo
  photo: null,     // the server's answer to the upload
  result: null,    // the server's answer to the last simulation shown
  view: "face",
  sequence: 0,     // only the newest simulation is shown when several overlap
  timer: null,
};

function setState(state) {
  document.body.dataset.state = state;
}

function say(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
  status.setAttribute("role", isError ? "alert" : "status");
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

function buildControls() {
  const model = page.model;
  const box = $("procedures");
  box.replaceChildren();
  for (const name of model.procedures) {
    const label = document.createElement("label");
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.value = name;
    tick.name = "procedure";
    tick.addEventListener("change", schedule);
    label.append(tick, " " + pretty(name));
    box.append(label);
  }
  $("procedures-section").hidden = model.procedures.length === 0;
  $("intensity-section").hidden = !model.intensity;
  $("seed-section").hidden = !model.seed;
  $("composite").checked = model.composite;
}

function settings() {
  const model = page.model;
  const chosen = [...document.querySelectorAll("#procedures input:checked")].map((tick) => tick.value);
  const body = { photo: page.photo.photo, model: model.id, composite: $("composite").checked };
  if (model.procedures.length) body.procedures = chosen;
  if (model.intensity) body.intensity = Number($("intensity").value);
  if (model.seed) body.seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
  return body;
}

// -- photo ------------------------------------------------------------------------------------

async function upload(file) {
  const response = await api("/api/photos", {
    method: "POST",
    headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
    body: file,
  });
  page.photo = response;
  return response;
}

async function choose(file) {
  if (!file) return;
  page.file = file;
  page.photo = null;
  page.result = null;
  $("photo-name").textContent = file.name;
  $("simulate").disabled = true;
  $("save").disabled = true;
  setState("busy");
  say("Reading the photo…");
  try {
    await upload(file);
  } catch (error) {
    setState("error");
    say(error.message, true);
    return;
  }
  $("simulate").disabled = false;
  await simulate();
}

// -- simulation -------------------------------------------------------------------------------

// A change of settings simulates again after a short pause, so a burst of changes costs one run.
function schedule() {
  if (!page.photo) return;
  clearTimeout(page.timer);
  setState("busy");
  page.timer = setTimeout(simulate, 150);
}

async function simulate() {
  if (!page.photo) return;
  clearTimeout(page.timer);
  const sequence = ++page.sequence;
  const started = performance.now();
  setState("busy");
  say("Simulating…");
  let result;
  try {
    try {
      result = await api("/api/simulate", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(settings()),
      });
    } catch (error) {
      if (error.status !== 404 || !page.file) throw error;
      await upload(page.file);  // the server no longer held the photo: send it again
      result = await api("/api/simulate", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(settings()),
      });
    }
    if (sequence !== page.sequence) return;
    await show(result);
  } catch (error) {
    if (sequence !== page.sequence) return;
    setState("error");
    say(error.message, true);
    return;
  }
  if (sequence !== page.sequence) return;
  const seconds = (performance.now() - started) / 1000;
  const model = result.timings.model;
  say(`Simulated in ${seconds.toFixed(2)} s (model ${model.toFixed(2)} s).`);
  document.body.dataset.result = result.result;
  setState("ready");
}

async function show(result) {
  const images = result.images[page.view];
  $("results").hidden = false;
  await Promise.all([
    loaded($("compare-before"), images.before),
    loaded($("compare-after"), images.after),
    loaded($("side-before"), images.before),
    loaded($("side-after"), images.after),
    loaded($("difference"), images.difference),
  ]);
  page.result = result;
  $("save").disabled = false;
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
  page.model = page.models.find((model) => model.id === $("model").value) || page.models[0];
  buildControls();
  schedule();
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
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
}

async function start() {
  wireDrop();
  $("file").addEventListener("change", (event) => choose(event.target.files[0]));
  $("model").addEventListener("change", chooseModel);
  $("intensity").addEventListener("input", () => {
    $("intensity-value").textContent = Number($("intensity").value).toFixed(2);
  });
  $("intensity").addEventListener("change", schedule);
  $("seed").addEventListener("change", schedule);
  $("composite").addEventListener("change", schedule);
  $("simulate").addEventListener("click", simulate);
  $("save").addEventListener("click", save);
  $("split").addEventListener("input", split);
  for (const radio of document.querySelectorAll('input[name="view"]')) {
    radio.addEventListener("change", async () => {
      page.view = radio.value;
      if (page.result) {
        try {
          await show(page.result);
        } catch (error) {
          say(error.message, true);
        }
      }
    });
  }
  split();
  try {
    page.models = (await api("/api/models")).models;
  } catch (error) {
    setState("error");
    say(error.message, true);
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

// mesh-images playground: plain JavaScript, no build step, no network but this gateway.
// The stream is read with fetch and a ReadableStream; its Server-Sent Events are parsed by the
// vendored eventsource-parser (vendor/, MIT). Every request asks for Mesh's dialect explicitly.
import { createParser } from "./vendor/eventsource-parser.js";

const $ = (id) => document.getElementById(id);
const apiBase = (() => {
  const configured = document.querySelector('meta[name="mesh-api-base"]').content;
  // Empty: the API lives where the page does (the page is served by the images app itself).
  return (configured || new URL(".", location.href).pathname).replace(/\/+$/, "");
})();

const state = {
  key: "", // the gateway key: this variable only (never storage, never the URL)
  models: new Map(),
  image: null, // the File to edit
  controller: null,
  pings: 0,
  lastByte: 0,
  ticker: 0,
};

// ---- requests -------------------------------------------------------------------------------

function headers(extra = {}) {
  const all = { "X-Mesh-Dialect": "mesh", ...extra };
  if (state.key) all.Authorization = `Bearer ${state.key}`;
  return all;
}

/** Our error envelope as a readable message (with the request id). */
function describeError(body, status, requestId) {
  const error = body && typeof body === "object" ? body.error : null;
  if (!error || typeof error !== "object") {
    return { title: `HTTP ${status}`, lines: [], requestId };
  }
  const lines = [error.message || ""];
  if (error.param) lines.push(`Field: ${error.param}`);
  if (Array.isArray(error.details)) {
    for (const d of error.details) lines.push(`${(d.loc || []).join(".")}: ${d.msg}`);
  }
  if (error.provider_code) lines.push(`Provider code: ${error.provider_code}`);
  if (error.retry_after_seconds != null) lines.push(`Retry after ${error.retry_after_seconds} s`);
  return {
    title: `${status ? `${status} ` : ""}${error.code || "error"}`,
    lines,
    requestId: (body && body.request_id) || requestId,
  };
}

function showError({ title, lines, requestId }) {
  const box = $("error");
  box.replaceChildren();
  const head = document.createElement("p");
  const strong = document.createElement("strong");
  strong.textContent = title;
  head.append(strong);
  box.append(head);
  for (const line of lines.filter(Boolean)) {
    const p = document.createElement("p");
    p.textContent = line;
    box.append(p);
  }
  if (requestId) {
    const p = document.createElement("p");
    p.textContent = `Request id: ${requestId}`;
    p.className = "request-id";
    box.append(p);
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// ---- models ---------------------------------------------------------------------------------

async function loadModels() {
  const select = $("model");
  select.disabled = true;
  $("go").disabled = true;
  let response;
  try {
    response = await fetch(`${apiBase}/v1/models`, { headers: headers() });
  } catch (exc) {
    showError({ title: "The gateway cannot be reached", lines: [String(exc)] });
    return;
  }
  const body = await readJson(response);
  if (!response.ok) {
    const described = describeError(body, response.status, response.headers.get("x-request-id"));
    if (response.status === 401) described.lines.push("Enter a gateway key above, then Use key.");
    showError(described);
    select.replaceChildren(new Option("No models (see the error below)", ""));
    if (response.status === 401) $("key").focus();
    return;
  }
  clearError();
  // Mesh's dialect lists a bare array; OpenAI's shape is {"data": [...]}.
  const list = Array.isArray(body) ? body : body.data;
  state.models = new Map(list.map((model) => [model.id, model]));
  const previous = select.value;
  select.replaceChildren(
    ...list.map((model) => new Option(modelLabel(model), model.id, false, model.id === previous)),
  );
  if (!select.value && state.models.has("local/sketch")) select.value = "local/sketch";
  select.disabled = list.length === 0;
  modelChanged();
}

function modelLabel(model) {
  const status = model.lifecycle && model.lifecycle.status;
  return status && status !== "active" ? `${model.id} (${status})` : model.id;
}

/** Replace a select's options; keep its value if still offered (unless `reset`), else `preferred`. */
function fill(select, values, preferred, reset = false) {
  const keep = reset ? null : select.value;
  select.replaceChildren(...values.map((v) => new Option(v.label ?? v, v.value ?? v)));
  const offered = (v) => v != null && values.some((x) => (x.value ?? x) === v);
  const wanted = [keep, preferred].find(offered);
  if (wanted != null) select.value = wanted;
}

function editCapabilities(model) {
  const edits = model && model.capabilities && model.capabilities.edits;
  return edits && !edits.retired ? edits : null;
}

function modelChanged() {
  const model = state.models.get($("model").value);
  if (!model) return;
  const caps = model.capabilities || {};
  const editing = state.image !== null;
  const edits = editCapabilities(model);

  const sizes = editing && edits && edits.sizes ? edits.sizes : caps.sizes || ["auto"];
  const sizeOptions = sizes.map((s) => ({ value: s, label: s }));
  if (!editing || !(edits && edits.sizes)) {
    for (const ratio of caps.aspect_ratios || []) sizeOptions.push({ value: ratio, label: ratio });
  }
  if (editing) sizeOptions.unshift({ value: "", label: "same as the image" });
  const size = $("size");
  const switched = size.dataset.editing !== String(editing); // an image was picked or dropped
  size.dataset.editing = String(editing);
  const preferred = editing ? "" : sizes.includes("1024x1024") ? "1024x1024" : sizes[0];
  fill(size, sizeOptions, preferred, switched);
  fill($("quality"), caps.qualities || ["auto"], "auto");
  fill($("output-format"), caps.output_formats || ["png"], "png");

  const n = $("n");
  n.max = String(caps.max_n || 1);
  clampN();
  $("partials-field").hidden = !(caps.params || []).includes("partial_images");

  const info = [];
  const lifecycle = model.lifecycle || {};
  if (lifecycle.status && lifecycle.status !== "active") {
    let text = `${lifecycle.status}`;
    if (lifecycle.shutdown_date) text += `, shuts down ${lifecycle.shutdown_date}`;
    if (lifecycle.replacement) text += `; use ${lifecycle.replacement}`;
    info.push(text);
  }
  info.push(`up to ${caps.max_n || 1} image(s)`);
  info.push(caps.native_streaming ? "streams partial images" : "no partial images");
  info.push(edits ? `edits${edits.mask ? " with a mask" : ""}` : "no edits");
  if (model.description) info.push(model.description);
  $("model-info").textContent = info.join(" · ");
  editorChanged();
}

function clampN() {
  const n = $("n");
  const max = Number(n.max) || 1;
  const value = Math.trunc(Number(n.value));
  n.value = String(Number.isFinite(value) ? Math.min(Math.max(value, 1), max) : 1);
}

// ---- the image to edit and its mask ---------------------------------------------------------

async function setImage(file) {
  if (!file) return;
  if (!/^image\/(png|jpeg|webp)$/.test(file.type)) {
    showError({ title: "Not an image this gateway edits", lines: ["Use a PNG, JPEG or WebP."] });
    return;
  }
  const bitmap = await createImageBitmap(file);
  state.image = file;
  for (const canvas of [$("source"), $("mask")]) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  $("source").getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  clearMask();
  $("editor").hidden = false;
  clearError();
  modelChanged();
}

function dropImage() {
  state.image = null;
  $("image").value = "";
  $("editor").hidden = true;
  modelChanged();
}

function editorChanged() {
  const model = state.models.get($("model").value);
  const edits = editCapabilities(model);
  const editing = state.image !== null;
  $("mask-tools").hidden = !(editing && edits && edits.mask);
  $("go").textContent = editing ? "Edit" : "Generate";
  let problem = "";
  if (editing && !edits) problem = `${model ? model.id : "This model"} cannot edit images: pick another model or remove the image.`;
  if (editing) {
    const w = $("source").width;
    const h = $("source").height;
    $("edit-info").textContent = problem || `Editing a ${w}x${h} image.`;
  }
  $("go").disabled = !model || Boolean(problem) || state.controller !== null;
}

let painted = false;

function clearMask() {
  const canvas = $("mask");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  painted = false;
}

function maskAll() {
  const canvas = $("mask");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "rgb(220, 30, 30)";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  painted = true;
}

let stroke = null; // the last point of the stroke being painted, in image pixels

/** Paint from the stroke's last point to the pointer: a round line, the brush's width. */
function paintAt(event) {
  const canvas = $("mask");
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  const point = [(event.clientX - box.left) * scale, (event.clientY - box.top) * scale];
  const from = stroke || point;
  const ctx = canvas.getContext("2d");
  ctx.strokeStyle = "rgb(220, 30, 30)";
  ctx.lineWidth = Number($("brush").value) * scale;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...from);
  ctx.lineTo(...point);
  ctx.stroke();
  stroke = point;
  painted = true;
}

/** The mask OpenAI's way: the image's size, opaque, transparent (alpha 0) where painted. */
function maskBlob() {
  const overlay = $("mask");
  const mask = document.createElement("canvas");
  mask.width = overlay.width;
  mask.height = overlay.height;
  const ctx = mask.getContext("2d");
  ctx.fillStyle = "#000000";
  ctx.fillRect(0, 0, mask.width, mask.height);
  ctx.globalCompositeOperation = "destination-out";
  ctx.drawImage(overlay, 0, 0);
  // Anti-aliased stroke edges leave partly clear pixels: make every painted pixel fully clear.
  const pixels = ctx.getImageData(0, 0, mask.width, mask.height);
  for (let i = 3; i < pixels.data.length; i += 4) if (pixels.data[i] < 255) pixels.data[i] = 0;
  ctx.putImageData(pixels, 0, 0);
  return new Promise((resolve) => mask.toBlob(resolve, "image/png"));
}

// ---- generating -----------------------------------------------------------------------------

function fields() {
  const model = state.models.get($("model").value);
  const caps = model.capabilities || {};
  clampN();
  const body = {
    model: model.id,
    prompt: $("prompt").value,
    n: Number($("n").value),
    quality: $("quality").value,
    output_format: $("output-format").value,
    response_format: "b64_json",
    stream: $("stream").checked,
  };
  if ($("size").value) body.size = $("size").value;
  if (body.stream && (caps.params || []).includes("partial_images")) {
    body.partial_images = Number($("partial-images").value);
  }
  return body;
}

async function request(body) {
  if (state.image === null) {
    return fetch(`${apiBase}/v1/images/generations`, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal: state.controller.signal,
    });
  }
  const form = new FormData();
  for (const [name, value] of Object.entries(body)) form.append(name, String(value));
  form.append("image", state.image, state.image.name || "image.png");
  const edits = editCapabilities(state.models.get(body.model));
  if (edits && edits.mask && painted) form.append("mask", await maskBlob(), "mask.png");
  return fetch(`${apiBase}/v1/images/edits`, {
    method: "POST",
    headers: headers(), // the browser writes the multipart Content-Type with its boundary
    body: form,
    signal: state.controller.signal,
  });
}

function resetOutput() {
  clearError();
  $("headers").replaceChildren();
  $("partials").replaceChildren();
  $("images").replaceChildren();
  state.pings = 0;
  $("pings").value = "0";
  $("idle").value = "–";
}

function showHeader(name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  $("headers").append(dt, dd);
}

function showHeaders(response) {
  for (const [name, value] of response.headers) {
    if (name === "x-request-id" || name.startsWith("x-mesh-")) showHeader(name, value);
  }
}

function addImage(container, item, format, caption) {
  const src = item.b64_json ? `data:image/${format};base64,${item.b64_json}` : item.url;
  if (!src) return;
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  const figcaption = document.createElement("figcaption");
  figcaption.textContent = caption;
  figure.append(img, figcaption);
  container.append(figure);
}

function setState(text) {
  $("state").textContent = text;
}

function touch() {
  state.lastByte = performance.now();
}

function tick() {
  if (state.lastByte) $("idle").value = `${((performance.now() - state.lastByte) / 1000).toFixed(1)} s`;
}

async function generate(event) {
  event.preventDefault();
  if (!$("prompt").value.trim() && state.image === null) {
    showError({ title: "A prompt is needed", lines: ["Write what the image should show."] });
    $("prompt").focus();
    return;
  }
  resetOutput();
  const body = fields();
  state.controller = new AbortController();
  $("stop").disabled = false;
  editorChanged();
  setState(state.image ? "Sending the edit…" : "Sending…");
  touch();
  state.ticker = setInterval(tick, 200);
  try {
    const response = await request(body);
    touch();
    showHeaders(response);
    const requestId = response.headers.get("x-request-id");
    if (!response.ok) {
      showError(describeError(await readJson(response), response.status, requestId));
      setState("Refused.");
    } else if ((response.headers.get("content-type") || "").startsWith("text/event-stream")) {
      await readStream(response, body.output_format, requestId);
    } else {
      const answer = await readJson(response);
      (answer.data || []).forEach((item, i, all) => addImage($("images"), item, body.output_format, `Image ${i + 1} of ${all.length}`));
      setState(`Done: ${(answer.data || []).length} image(s).`);
    }
  } catch (exc) {
    if (exc.name === "AbortError") setState("Stopped.");
    else showError({ title: "The request failed", lines: [String(exc)] });
  } finally {
    clearInterval(state.ticker);
    tick();
    state.controller = null;
    $("stop").disabled = true;
    editorChanged();
  }
}

async function readStream(response, format, requestId) {
  let finished = false;
  const parser = createParser({
    onEvent(event) {
      if (event.data === "[DONE]") {
        finished = true;
        return;
      }
      onChunk(JSON.parse(event.data), format, requestId);
    },
    onComment(comment) {
      if (comment.trim() === "ping") {
        state.pings += 1;
        $("pings").value = String(state.pings);
      }
    },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    touch();
    parser.feed(value);
  }
  if (!finished) setState("The stream ended before [DONE].");
}

function onChunk(chunk, format, requestId) {
  if (chunk.error) {
    showError(describeError(chunk, 0, requestId));
    setState("Failed.");
    return;
  }
  if (chunk.status === "processing") {
    setState(`Processing on ${chunk.model}…`);
  } else if (chunk.status === "partial") {
    const index = chunk.partial_image_index ?? $("partials").childElementCount;
    for (const item of chunk.data || []) addImage($("partials"), item, format, `Partial image ${index + 1}`);
    setState(`Partial image ${index + 1} received…`);
  } else if (chunk.status === "completed") {
    const data = chunk.data || [];
    data.forEach((item, i) => addImage($("images"), item, format, `Image ${i + 1} of ${data.length}`));
    if (chunk.routing) {
      for (const [name, value] of Object.entries(chunk.routing)) showHeader(`routing.${name}`, String(value));
    }
    if (chunk.usage && chunk.usage.cost_usd != null) showHeader("usage.cost_usd", String(chunk.usage.cost_usd));
    setState(`Done: ${data.length} image(s) from ${chunk.model}.`);
  }
}

// ---- wiring ---------------------------------------------------------------------------------

function wire() {
  $("request").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("model").addEventListener("change", modelChanged);
  $("n").addEventListener("change", clampN);
  $("use-key").addEventListener("click", () => {
    state.key = $("key").value.trim();
    loadModels();
  });
  $("key").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      $("use-key").click();
    }
  });
  $("image").addEventListener("change", () => setImage($("image").files[0]));
  $("drop-image").addEventListener("click", dropImage);
  $("mask-all").addEventListener("click", maskAll);
  $("mask-clear").addEventListener("click", clearMask);
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    setImage(event.dataTransfer.files[0]);
  });
  const mask = $("mask");
  mask.addEventListener("pointerdown", (event) => {
    mask.setPointerCapture(event.pointerId);
    stroke = null;
    paintAt(event);
  });
  mask.addEventListener("pointermove", (event) => {
    if (mask.hasPointerCapture(event.pointerId)) paintAt(event);
  });
}

wire();
loadModels();

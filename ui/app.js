// stillmoving web page: plain JS against the HTTP API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("stillmoving-key") || "";
keyInput.addEventListener("change", () => { localStorage.setItem("stillmoving-key", keyInput.value); refresh(); });

const watched = new Map(); // job id -> {kind, label}

async function api(method, path, body, isForm) {
  const headers = { Authorization: `Bearer ${keyInput.value}` };
  if (body !== undefined && !isForm) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: isForm ? body : body === undefined ? undefined : JSON.stringify(body) });
  const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = data.error || { message: response.statusText };
    throw new Error(`${err.message}${err.field ? ` (field: ${err.field})` : ""}`);
  }
  return data;
}

function say(text) { $("message").textContent = text || ""; }

function intOrNull(id) { const v = $(id).value.trim(); return v === "" ? null : Number(v); }

// Only what the user set goes into a request: the server's schema holds every default.
function sendSet(body, inputs) {
  for (const [id, field] of inputs) { const v = intOrNull(id); if (v !== null) body[field] = v; }
}

// The placeholders show the server's defaults, read from its OpenAPI schema (public, no key needed).
fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  const config = spec.paths["/customizations"].post.requestBody.content["multipart/form-data"].schema.properties.config.properties;
  $("num-images").placeholder = `default ${config.num_images.default}`;
  $("train-steps").placeholder = `default ${config.train_steps.default}`;
}).catch(() => {});

$("customize-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  say("");
  const config = { prompts: $("prompts").value.split("\n").map((p) => p.trim()).filter(Boolean) };
  if ($("name").value) config.name = $("name").value;
  sendSet(config, [["num-images", "num_images"], ["train-steps", "train_steps"]]);
  const form = new FormData();
  form.append("checkpoint", $("checkpoint").files[0]);
  form.append("config", JSON.stringify(config));
  try {
    const job = await api("POST", "/customizations", form, true);
    watch(job.job_id, `customize ${config.name || job.customization_id}`);
    refresh();
  } catch (e) { say(`Upload refused: ${e.message}`); }
});

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  say("");
  const request = { prompt: $("prompt").value };
  const customization = $("customization-select").value;
  if (customization) request.customization_id = customization;
  sendSet(request, [["num-frames", "num_frames"], ["steps", "steps"], ["seed", "seed"]]);
  try {
    const job = await api("POST", "/generate", request);
    watch(job.job_id, `generate "${request.prompt}"`);
  } catch (e) { say(`Generation refused: ${e.message}`); }
});

$("refresh").addEventListener("click", refresh);

async function refresh() {
  if (!keyInput.value) return;
  try {
    const list = await api("GET", "/customizations?limit=50");
    const ul = $("customization-list");
    const select = $("customization-select");
    const chosen = select.value;
    ul.replaceChildren();
    select.replaceChildren(new Option("(base model)", ""));
    for (const c of list.items) {
      const li = document.createElement("li");
      li.className = "customization";
      li.dataset.id = c.id;
      li.append(`${c.name || c.id} — ${c.status} `);
      for (const url of (c.image_urls || []).slice(0, 6)) {
        const img = document.createElement("img"); img.src = url; img.alt = "frozen-video image"; li.append(img);
      }
      ul.append(li);
      if (c.status === "ready" || c.status === "training" || c.status === "queued") {
        select.append(new Option(`${c.name || c.id} (${c.status})`, c.id));
      }
    }
    select.value = chosen;
  } catch (e) { say(`Could not list customizations: ${e.message}`); }
}

function watch(jobId, label) {
  watched.set(jobId, { label });
  renderJob(jobId, { status: "queued", progress: 0, stage: null });
  follow(jobId);
}

// The job's live status stream (GET /jobs/{id}/events; fetch, since EventSource cannot send the key), then one
// poll for the final record; polling throughout when the stream fails.
async function follow(jobId) {
  const job = { status: "queued", progress: 0, stage: null };
  try {
    const response = await fetch(`/jobs/${jobId}/events`, { headers: { Authorization: `Bearer ${keyInput.value}` } });
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const lines = buffer.slice(0, end).split("\n");
        buffer = buffer.slice(end + 2);
        const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue; // a keep-alive comment
        const event = JSON.parse(data);
        if (event.type === "log") continue;
        for (const key of ["status", "stage", "progress", "queue_position", "eta_s"]) {
          if (key in event) job[key] = event[key];
        }
        if (event.status && event.status !== "queued") job.queue_position = null;
        renderJob(jobId, job);
      }
    }
  } catch (e) { /* polling from here */ }
  poll(jobId);
}

function renderJob(jobId, job) {
  let row = document.querySelector(`[data-job="${jobId}"]`);
  if (!row) {
    row = document.createElement("div");
    row.className = "job"; row.dataset.job = jobId;
    row.innerHTML = `<span class="label"></span><progress max="1" value="0"></progress><span class="status"></span><button class="secondary cancel" type="button">Cancel</button>`;
    row.querySelector(".cancel").addEventListener("click", async () => {
      try { await api("POST", `/jobs/${jobId}/cancel`); } catch (e) { say(`Cancel failed: ${e.message}`); }
    });
    $("job-list").prepend(row);
  }
  row.querySelector(".label").textContent = watched.get(jobId).label;
  row.querySelector("progress").value = job.progress || 0;
  const status = row.querySelector(".status");
  const eta = job.status === "running" && job.eta_s != null ? ` · ~${Math.ceil(job.eta_s)} s left` : "";
  status.textContent = `${job.status}${job.stage ? ` · ${job.stage}` : ""}${job.queue_position ? ` · #${job.queue_position} in queue` : ""}${eta}`;
  status.className = `status status-${job.status}`;
  row.querySelector(".cancel").hidden = ["succeeded", "failed", "canceled"].includes(job.status);
  if (job.status === "failed" && job.error) say(`Job failed: ${job.error.message}`);
}

async function poll(jobId) {
  try {
    const job = await api("GET", `/jobs/${jobId}`);
    renderJob(jobId, job);
    if (["succeeded", "failed", "canceled"].includes(job.status)) {
      if (job.status === "succeeded" && job.kind === "generate") show(job.result);
      if (job.kind === "customize") refresh();
      return;
    }
  } catch (e) { say(`Lost track of job ${jobId}: ${e.message}`); }
  setTimeout(() => poll(jobId), 700);
}

function show(result) {
  $("result").hidden = false;
  const isGif = (result.format || "mp4") === "gif";
  $("result-video").hidden = isGif;
  $("result-image").hidden = !isGif;
  if (isGif) $("result-image").src = result.video_url;
  else { $("result-video").src = result.video_url; $("result-video").poster = result.poster_url || ""; }
}

refresh();

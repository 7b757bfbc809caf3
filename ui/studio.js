// A customization's page (#/customizations/<id>): its state with live training progress, the preview video,
// the frozen-video stills with their prompts and seeds, the loss curves, its settings, exports, and Compare.
"use strict";

import { api, ApiError, explain, follow } from "./api.js";
import { lossChart } from "./chart.js";
import { renderComparison } from "./compare.js";
import * as forms from "./forms.js";
import { progressLine, trackJob } from "./jobs.js";
import { $, element, say } from "./page.js";

export const EXPORT_FORMATS = [["diffusers", "Diffusers"], ["kohya", "Kohya LoRA"], ["comfyui", "ComfyUI"]];
let shown = null; // the id on the page
let generation = 0; // bumped on each open: late answers for an earlier page are dropped

export async function openCustomization(id) {
  const mine = ++generation;
  shown = id;
  const section = $("studio");
  section.hidden = false;
  let record;
  try {
    record = await api("GET", `/customizations/${encodeURIComponent(id)}`);
  } catch (e) {
    if (mine === generation) $("studio-body").replaceChildren(element("p", "status status-failed", e.message));
    return;
  }
  if (mine !== generation) return;
  render(record);
  if (["queued", "training"].includes(record.status)) {
    const update = progressLine($("studio-progress"), `training ${record.name || record.id}`);
    follow(record.job_id, (job) => {
      update(job);
      if (job.status === "running") $("studio-state").textContent = `training · ${record.id}`;
    }).then(() => { if (shown === id && mine === generation) openCustomization(id); });
  }
}

export function closeCustomization() {
  shown = null;
  generation += 1;
  $("studio").hidden = true;
}

function render(record) {
  $("studio-title").textContent = record.name || record.id;
  $("studio-state").textContent = `${record.status} · ${record.id}`;
  $("studio-state").className = `status status-${record.status === "ready" ? "succeeded" : record.status}`;
  $("studio-progress").replaceChildren();
  if (record.error) $("studio-progress").append(element("p", "status status-failed", record.error.message));
  const body = $("studio-body");
  body.replaceChildren();
  const manifest = record.manifest;
  body.append(previewPanel(record), settingsPanel(record));
  body.append(galleryPanel(record, manifest));
  body.append(chartsPanel(manifest));
  body.append(exportPanel(record), comparePanel(record));
  $("studio-generate").onclick = () => {
    const select = document.querySelector("#generate-form [data-field='customization_id']");
    select.value = record.id;
    select.dispatchEvent(new Event("change"));
    document.querySelector("#generate-form [data-field='prompt']").focus();
  };
  $("studio-generate").disabled = !["queued", "training", "ready"].includes(record.status);
}

function panel(title, className) {
  const section = element("section", `panel panel-${className}`);
  const heading = element("h3", "", title);
  heading.id = `panel-${className}`;
  section.setAttribute("aria-labelledby", heading.id);
  section.append(heading);
  return section;
}

function previewPanel(record) {
  const section = panel("Preview", "preview");
  if (!record.preview_url) {
    section.append(element("p", "hint", record.status === "ready" ? "This customization has no preview."
      : "The preview comes when training ends."));
    return section;
  }
  const video = document.createElement("video");
  Object.assign(video, { loop: true, muted: true, autoplay: true, playsInline: true, controls: true });
  video.src = record.preview_url;
  video.id = "preview-video";
  const preview = (record.manifest && record.manifest.preview) || {};
  video.setAttribute("aria-label", `Preview: “${preview.prompt || ""}”`);
  section.append(video, element("p", "hint", `“${preview.prompt || ""}”, seed ${preview.seed ?? "?"}`));
  return section;
}

function settingsPanel(record) {
  const section = panel("Settings", "settings");
  const dl = element("dl", "settings-list");
  const add = (name, value) => {
    if (value === undefined || value === null || value === "") return;
    dl.append(element("dt", "", name), element("dd", "", typeof value === "object" ? JSON.stringify(value) : String(value)));
  };
  const m = record.manifest || {};
  add("Checkpoint", `${record.checkpoint.format}, sha256 ${record.checkpoint.sha256}`);
  if (m.resolved) add("Size", `${m.resolved.num_frames} frames of ${m.resolved.width}x${m.resolved.height}`);
  if (m.motion_adapter) add("Motion Adapter", m.motion_adapter.used ? `${m.motion_adapter.source}` : "not used");
  for (const [key, value] of Object.entries(record.config || {})) {
    if (!key.startsWith("webhook")) add(forms.label(key), Array.isArray(value) ? value.join(" · ") : value);
  }
  if (m.timings) add("Timings (s)", Object.entries(m.timings).map(([k, v]) => `${k} ${v}`).join(", "));
  add("Created", record.created_at);
  add("Finished", record.finished_at);
  section.append(dl);
  return section;
}

function galleryPanel(record, manifest) {
  const section = panel("Frozen-video stills", "gallery");
  const images = (manifest && manifest.images) || [];
  if (!images.length) {
    section.append(element("p", "hint", "The stills come when training has sampled them."));
    return section;
  }
  section.append(element("p", "hint", "Each still, repeated over every frame, is one frozen video the Spatial " +
    "Adapter trained on."));
  const ul = element("ul", "gallery");
  images.forEach((item, i) => {
    const figure = element("figure");
    const img = document.createElement("img");
    img.src = record.image_urls[i];
    img.alt = `Still ${i + 1}: “${item.prompt}”, seed ${item.seed}`;
    img.loading = "lazy";
    const caption = element("figcaption");
    caption.append(element("span", "prompt", item.prompt), element("span", "seed", `seed ${item.seed}`));
    figure.append(img, caption);
    const li = element("li");
    li.append(figure);
    ul.append(li);
  });
  section.append(ul);
  return section;
}

function chartsPanel(manifest) {
  const section = panel("Training", "charts");
  if (!manifest) {
    section.append(element("p", "hint", "The loss curves come when training ends."));
    return section;
  }
  const spatial = element("div", "chart-box");
  spatial.id = "loss-chart";
  section.append(element("h4", "", "Spatial Adapter loss"), spatial);
  lossChart(spatial, "Spatial Adapter loss", manifest.loss_curve || []);
  const motion = manifest.motion_adapter || {};
  section.append(element("h4", "", "Motion Adapter loss"));
  if (motion.loss_curve && motion.loss_curve.length) {
    const box = element("div", "chart-box");
    box.id = "motion-loss-chart";
    section.append(box);
    lossChart(box, "Motion Adapter loss", motion.loss_curve);
  } else {
    section.append(element("p", "hint", motion.used ? "Not recorded for this customization." : "No Motion Adapter was used."));
  }
  return section;
}

function exportPanel(record) {
  const section = panel("Export", "export");
  const buttons = element("div", "buttons");
  const message = element("p", "export-message");
  message.setAttribute("role", "status");
  for (const [format, name] of EXPORT_FORMATS) {
    const button = element("button", "secondary", name);
    button.type = "button";
    button.dataset.format = format;
    button.disabled = record.status !== "ready";
    button.addEventListener("click", () => exportAs(record.id, format, name, message));
    buttons.append(button);
  }
  section.append(buttons, message);
  return section;
}

// GET /customizations/{id}/export?format=...: a presigned URL to the export, built as the training ended;
// 409 when there is none (not ready, or trained before exports existed), 404 when the customization is gone.
async function exportAs(id, format, name, message) {
  message.textContent = `Preparing the ${name} export…`;
  try {
    const data = await api("GET", `/customizations/${encodeURIComponent(id)}/export?format=${format}`);
    const link = element("a", "export-link", `Download ${data.filename}`);
    link.href = data.url;
    link.download = data.filename;
    message.replaceChildren(link, ` ${(data.size / 1e6).toFixed(1)} MB, sha256 ${data.sha256}` +
      ` (link valid ${Math.round(data.expires_in_s / 60)} min)`);
  } catch (e) {
    message.textContent = e instanceof ApiError && [404, 409].includes(e.status)
      ? `The ${name} export is not available here (${e.message}).` : `Export failed: ${e.message}`;
  }
}

function comparePanel(record) {
  const section = panel("Compare", "compare");
  section.append(element("p", "hint", "One prompt and seed, four ways: the base model, the customized " +
    "checkpoint injected naively, Still-Moving, and Still-Moving trained without the Motion Adapter."));
  const form = element("form", "compare-form");
  form.id = "compare-form";
  form.noValidate = true;
  const prompt = forms.field({ type: "string" }, "prompt", { label: "Prompt", required: true,
    value: ((record.config && record.config.prompts) || [""])[0], hint: "" });
  const seed = forms.field({ type: "integer", minimum: 0 }, "seed", { hint: "", placeholder: "random" });
  const steps = forms.field({ type: "integer", minimum: 1 }, "steps", { hint: "", placeholder: "preset's" });
  const row = element("div", "row");
  row.append(seed, steps);
  const button = element("button", "", "Compare");
  button.type = "submit";
  button.id = "compare-button";
  button.disabled = ["failed", "canceled"].includes(record.status);
  const progress = element("div", "compare-progress");
  const result = element("div", "compare-result");
  result.id = "compare-result";
  form.append(prompt, row, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    forms.clearErrors(form);
    const body = { customization_id: record.id, ...forms.read(form) };
    let accepted;
    try {
      accepted = await api("POST", "/evaluations", body);
    } catch (e) {
      if (!forms.showError(form, e)) say(`Comparison refused: ${explain(e)}`);
      return;
    }
    const job = { id: accepted.job_id, kind: "evaluate", params: body, status: "queued", customization_id: record.id };
    result.replaceChildren();
    const done = trackJob(job);
    const final = await follow(job.id, progressLine(progress, `comparing “${body.prompt}”`));
    await done;
    if (final.status === "succeeded" && final.result) renderComparison(result, final.result);
  });
  section.append(form, progress, result);
  return section;
}

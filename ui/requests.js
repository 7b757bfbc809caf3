// The two request forms, built from the server's OpenAPI schema (every field the API takes, its bounds,
// choices and defaults) and GET /limits (the preset's sizes and steps): Customize (POST /customizations)
// and Generate (POST /generate, with control and init videos uploaded through POST /files).
"use strict";

import { api, explain } from "./api.js";
import * as forms from "./forms.js";
import { trackJob } from "./jobs.js";
import { $, element, say } from "./page.js";

// Generate's fields in groups; anything else the schema has goes under "More".
const GENERATE_GROUPS = [
  ["Model", ["customization_id", "method"]],
  ["Prompt", ["prompt", "negative_prompt"]],
  ["Video", ["num_frames", "height", "width", "fps", "format", "seed"]],
  ["Sampling", ["steps", "guidance_scale", "scheduler", "spatial_adapter_scale", "motion_adapter_scale"]],
];
const INPUTS = { control: "Control video (ControlNet)", init: "Initial video (video-to-video)" };
const WEBHOOK = ["webhook", "webhook_events_filter"];
const PRESET_DEFAULTS = { num_frames: "num_frames", height: "height", width: "width", steps: "sample_steps",
  guidance_scale: "guidance_scale" };
const CUSTOMIZE_FIRST = ["prompts", "name", "num_images", "train_steps"];
const MEDIA = "video/mp4,video/webm,image/gif,image/png,image/jpeg";

let generateProps = {};

function fieldset(legend, className) {
  const set = element("fieldset", className);
  set.append(element("legend", "", legend));
  return set;
}

function grid(fields) {
  const box = element("div", "grid");
  box.append(...fields);
  return box;
}

function more(summary, fields) {
  const details = element("details", "more");
  details.append(element("summary", "", summary), grid(fields));
  return details;
}

function presetHint(name, limits) {
  return limits && PRESET_DEFAULTS[name] ? `${limits[PRESET_DEFAULTS[name]]} (the preset's)` : undefined;
}

// ---- Customize ------------------------------------------------------------------------------------------
export function buildCustomizeForm(spec) {
  const schema = spec.paths["/customizations"].post.requestBody.content["multipart/form-data"].schema;
  const props = Object.fromEntries(Object.entries(schema.properties.config.properties)
    .map(([k, v]) => [k, forms.resolve(spec, v)]));
  const form = $("customize-form");
  const first = [forms.field({ type: "string" }, "checkpoint", { file: true, accept: ".safetensors", required: true,
    label: "Checkpoint (.safetensors)", hint: "A LoRA (diffusers or kohya keys), a full UNet, or a single-file SD 1.5 checkpoint" })];
  first.push(forms.field(props.prompts, "config.prompts", { multiline: true, list: true, required: true,
    label: "Prompts (one a line)", value: "a sks red circle\na sks blue square", hint: props.prompts.description }));
  for (const name of CUSTOMIZE_FIRST.slice(1)) first.push(forms.field(props[name], `config.${name}`));
  const rest = Object.keys(props).filter((n) => !CUSTOMIZE_FIRST.includes(n) && !WEBHOOK.includes(n) && n !== "base_model");
  const button = element("button", "", "Upload and train");
  button.type = "submit";
  button.id = "customize-button";
  form.replaceChildren(grid(first), more("More training settings", rest.map((n) => forms.field(props[n], `config.${n}`))),
    more("Webhook", WEBHOOK.map((n) => forms.field(props[n], `config.${n}`))), button);
  form.onsubmit = async (event) => {
    event.preventDefault();
    forms.clearErrors(form);
    say("");
    let data;
    try { data = forms.read(form, prefixed(props, "config."), (n) => n === "checkpoint"); } catch (e) {
      forms.showError(form, { field: e.field, message: `${e.field}: ${e.message}` });
      return;
    }
    const upload = new FormData();
    upload.append("config", JSON.stringify(data.config || {}));
    const file = form.querySelector("[data-field='checkpoint']").files[0];
    if (file) upload.append("checkpoint", file);
    button.disabled = true;
    try {
      const job = await api("POST", "/customizations", upload);
      trackJob({ id: job.job_id, kind: "customize", customization_id: job.customization_id, status: "queued",
                 params: { config: data.config } });
      document.dispatchEvent(new CustomEvent("customizations-changed", { detail: job.customization_id }));
      location.hash = `#/customizations/${job.customization_id}`;
    } catch (e) {
      forms.showError(form, e);
      say(`Upload refused: ${explain(e)}`);
    } finally { button.disabled = false; }
  };
}

function prefixed(props, prefix) {
  return Object.fromEntries(Object.entries(props).map(([k, v]) => [prefix + k, v]));
}

// ---- Generate -------------------------------------------------------------------------------------------
export function buildGenerateForm(spec, limits) {
  const schema = forms.requestSchema(spec, "/generate");
  const props = Object.fromEntries(Object.entries(schema.properties).map(([k, v]) => [k, forms.resolve(spec, v)]));
  generateProps = props;
  const form = $("generate-form");
  const parts = [];
  const placed = new Set([...WEBHOOK, ...Object.keys(INPUTS)]);
  const make = (name) => {
    placed.add(name);
    if (name === "customization_id") {
      return forms.field(props[name], name, { label: "Customization", choices: [], noDefault: true, hint: "" });
    }
    return forms.field(props[name], name, { multiline: name === "prompt", required: name === "prompt",
      placeholder: presetHint(name, limits), value: name === "prompt" ? "a sks red circle moving right" : undefined });
  };
  for (const [legend, names] of GENERATE_GROUPS) {
    const set = fieldset(legend);
    set.append(grid(names.filter((n) => props[n]).map(make)));
    parts.push(set);
  }
  for (const [name, legend] of Object.entries(INPUTS)) if (props[name]) parts.push(inputFieldset(spec, props[name], name, legend, limits));
  const others = Object.keys(props).filter((n) => !placed.has(n));
  if (others.length) parts.push(more("More", others.map(make)));
  parts.push(more("Webhook", WEBHOOK.filter((n) => props[n]).map(make)));
  const button = element("button", "", "Generate video");
  button.type = "submit";
  button.id = "generate-button";
  form.replaceChildren(...parts, button);
  form.onsubmit = (event) => { event.preventDefault(); submitGenerate(form, button); };
}

// A control or init: a switch, then the video (uploaded, or a finished generation's job id) and its settings.
function inputFieldset(spec, prop, name, legend, limits) {
  const set = fieldset(legend, "media-input");
  const sub = Object.fromEntries(Object.entries(prop.properties).map(([k, v]) => [k, forms.resolve(spec, v)]));
  const toggle = forms.field({ type: "boolean", default: false }, `use-${name}`, { label: `Use ${legend.split(" (")[0].toLowerCase()}`, hint: "" });
  const box = element("fieldset", "inner");
  box.append(element("legend", "visually-hidden", `${legend} settings`));
  box.disabled = true;
  box.hidden = true;
  const fields = Object.keys(sub).map((key) => {
    if (key === "file") return forms.field(sub[key], `${name}.file`, { file: true, accept: MEDIA, label: "Video or image file",
      hint: "Uploaded with POST /files when you generate" });
    if (key === "controlnet" && limits) {
      return forms.field(sub[key], `${name}.${key}`, { choices: limits.controlnets.map((c) => [c, c]) });
    }
    return forms.field(sub[key], `${name}.${key}`, { noDefault: sub[key].enum && sub[key].default === undefined });
  });
  box.append(grid(fields));
  delete toggle.querySelector("input").dataset.field; // a switch, not a field of the request
  toggle.querySelector("input").addEventListener("change", (e) => { box.disabled = box.hidden = !e.target.checked; });
  set.append(toggle, box);
  return set;
}

async function submitGenerate(form, button) {
  forms.clearErrors(form);
  say("");
  let body;
  try {
    body = forms.read(form, generateProps);
  } catch (e) {
    forms.showError(form, { field: e.field, message: `${e.field}: ${e.message}` });
    return;
  }
  button.disabled = true;
  try {
    for (const name of Object.keys(INPUTS)) {
      if (!body[name] || !(body[name].file instanceof File)) continue;
      const upload = new FormData();
      upload.append("file", body[name].file);
      try {
        body[name].file = (await api("POST", "/files", upload)).file_id;
      } catch (e) {
        if (e.field === "file") e.field = `${name}.file`;
        throw e;
      }
    }
    const job = await api("POST", "/generate", body);
    trackJob({ id: job.job_id, kind: "generate", params: body, status: "queued", customization_id: body.customization_id });
    $("jobs").scrollIntoView({ block: "nearest" });
  } catch (e) {
    if (!e.field || !forms.showError(form, e)) say(`Generation refused: ${explain(e)}`);
  } finally { button.disabled = false; }
}

// The customization choices of the Generate form (ready or still training: a generation waits for it).
export function setCustomizations(items) {
  const select = document.querySelector("#generate-form [data-field='customization_id']");
  if (!select) return;
  const chosen = select.value;
  select.replaceChildren(new Option("(base model)", ""));
  for (const c of items) {
    if (["ready", "training", "queued"].includes(c.status)) select.append(new Option(`${c.name || c.id} (${c.status})`, c.id));
  }
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
}

// Form fields built from the server's OpenAPI schema: each field's type, bounds, choices, default and help
// come from the request model the API validates with, so a field added there shows up here. A field's
// element carries `data-field` = the API's error `field` (dotted for nested: "control.scale"), where the
// API's validation message is shown inline.
"use strict";

let counter = 0;

// A schema property with its `$ref` / `anyOf: [T, null]` resolved: {type, enum, minimum, maximum, default, ...}.
export function resolve(spec, prop) {
  if (prop.$ref) return resolve(spec, spec.components.schemas[prop.$ref.split("/").pop()]);
  if (prop.allOf && prop.allOf.length === 1) return { ...resolve(spec, prop.allOf[0]), ...prop, allOf: undefined };
  if (prop.anyOf) {
    const options = prop.anyOf.filter((p) => p.type !== "null");
    const nullable = options.length < prop.anyOf.length;
    if (options.length === 1) return { ...resolve(spec, options[0]), ...prop, anyOf: undefined, nullable };
    // a string or a structure (a prompt or a {frame: prompt} map): plain text stays text, an object is parsed
    const text = options.some((p) => p.type === "string");
    return { ...prop, type: text ? "text-or-json" : "json", nullable };
  }
  return prop;
}

export function requestSchema(spec, path) {
  const content = spec.paths[path].post.requestBody.content;
  return resolve(spec, content["application/json"].schema);
}

export function label(name) {
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function defaultText(prop) {
  if (prop.default === undefined || prop.default === null) return "";
  return Array.isArray(prop.default) ? prop.default.join(", ") : String(prop.default);
}

// How a control's text becomes the request's value.
function kindOf(prop, options) {
  if (options.file) return "file";
  if (options.list) return "list"; // one item a line
  if (prop.enum || options.choices) return "choice";
  if (prop.type === "array" && prop.items && (prop.items.type === "string" || prop.items.enum)) return "csv";
  if (prop.type === "text-or-json") return "text-or-json";
  if (["json", "object", "array"].includes(prop.type)) return "json";
  return prop.type || "json";
}

// One labelled control for schema property `prop`, reporting as `field`. Options: {label, hint, multiline,
// file, placeholder, choices: [[value, text]], value}.
export function field(prop, fieldName, options = {}) {
  const id = `f${++counter}-${fieldName.replace(/[^a-z0-9]+/gi, "-")}`;
  const wrap = document.createElement("div");
  wrap.className = "field";
  const lab = document.createElement("label");
  lab.htmlFor = id;
  lab.textContent = options.label || label(fieldName.split(".").pop());
  let input;
  const type = prop.type;
  if (options.file) {
    input = document.createElement("input");
    input.type = "file";
    if (options.accept) input.accept = options.accept;
  } else if (prop.enum || options.choices) {
    input = document.createElement("select");
    const choices = options.choices || prop.enum.map((v) => [v, v]);
    if (!options.noDefault) {
      const d = defaultText(prop) || options.placeholder;
      input.append(new Option(d ? `default (${d})` : "default", ""));
    }
    for (const [value, text] of choices) input.append(new Option(text, value));
  } else if (type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(prop.default);
    wrap.classList.add("check");
  } else if (type === "integer" || type === "number") {
    input = document.createElement("input");
    input.type = "number";
    input.step = type === "integer" ? "1" : "any";
    input.inputMode = type === "integer" ? "numeric" : "decimal";
    if (prop.minimum !== undefined) input.min = prop.minimum;
    if (prop.maximum !== undefined) input.max = prop.maximum;
  } else if (options.multiline) {
    input = document.createElement("textarea");
    input.rows = 3;
  } else {
    input = document.createElement("input");
    input.type = "text";
  }
  input.id = id;
  input.name = fieldName;
  input.dataset.field = fieldName;
  input.dataset.kind = kindOf(prop, options);
  if ("placeholder" in input && input.type !== "file" && input.type !== "checkbox") {
    const d = options.placeholder || defaultText(prop);
    input.placeholder = d ? `default ${d}` : input.dataset.kind === "json" ? "JSON" : "";
  }
  if (options.value !== undefined) input.value = options.value;
  if (options.required) input.required = true;
  const help = document.createElement("small");
  help.className = "hint";
  help.id = `${id}-hint`;
  help.textContent = options.hint !== undefined ? options.hint : prop.description || "";
  const error = document.createElement("small");
  error.className = "error";
  error.id = `${id}-error`;
  error.setAttribute("aria-live", "polite");
  input.setAttribute("aria-describedby", `${help.id} ${error.id}`);
  if (input.type === "checkbox") wrap.append(input, lab, help, error);
  else wrap.append(lab, input, help, error);
  if (!help.textContent) help.hidden = true;
  return wrap;
}

// The value of one control, or undefined when it is left at the server's default.
function valueOf(input, prop) {
  const kind = input.dataset.kind;
  if (kind === "boolean") return input.checked === Boolean(prop && prop.default) ? undefined : input.checked;
  if (kind === "file") return input.files[0];
  const raw = input.value.trim();
  if (raw === "") return undefined;
  if (kind === "integer" || kind === "number") return Number(raw);
  if (kind === "list") return raw.split("\n").map((line) => line.trim()).filter(Boolean);
  if (kind === "csv") return raw.split(",").map((item) => item.trim()).filter(Boolean);
  if (kind === "text-or-json" && !/^[[{]/.test(raw)) return raw;
  if (kind === "json" || kind === "text-or-json") {
    try { return JSON.parse(raw); } catch (e) { throw Object.assign(new Error("is not valid JSON"), { field: input.dataset.field }); }
  }
  return input.value;
}

// The values set in `container`'s fields as a (nested) request body; `skip(fieldName)` leaves some out.
export function read(container, props = {}, skip = () => false) {
  const body = {};
  for (const input of container.querySelectorAll("[data-field]")) {
    const name = input.dataset.field;
    if (skip(name) || input.matches(":disabled")) continue;
    const value = valueOf(input, props[name]);
    if (value === undefined) continue;
    const path = name.split(".");
    let target = body;
    for (const part of path.slice(0, -1)) target = target[part] = target[part] || {};
    target[path[path.length - 1]] = value;
  }
  return body;
}

export function clearErrors(form) {
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  for (const error of form.querySelectorAll(".error")) error.textContent = "";
}

// Show an API error at its field (the closest one named: "control.file" falls back to "control") and focus
// it; returns false when the form has no such field (the caller says it elsewhere).
export function showError(form, error) {
  let name = error.field;
  while (name) {
    const input = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      document.getElementById(`${input.id}-error`).textContent = error.message;
      input.focus();
      return true;
    }
    name = name.includes(".") ? name.slice(0, name.lastIndexOf(".")) : "";
  }
  return false;
}

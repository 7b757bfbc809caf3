// stillmoving studio: plain ES modules against the HTTP API (no build step). This one starts the page:
// the key, the forms from the server's schema, the customizations list, the jobs, and the #/ routes.
"use strict";

import { api, session } from "./api.js";
import { loadJobs } from "./jobs.js";
import { $, element, say } from "./page.js";
import { buildCustomizeForm, buildGenerateForm, setCustomizations } from "./requests.js";
import { closeCustomization, openCustomization } from "./studio.js";

const keyInput = $("api-key");
keyInput.value = localStorage.getItem("stillmoving-key") || "";
let spec = null;

async function refreshCustomizations() {
  if (!session.key) return;
  try {
    const page = await api("GET", "/customizations?limit=50");
    const ul = $("customization-list");
    ul.replaceChildren();
    for (const c of page.items) {
      const li = element("li", "customization");
      li.dataset.id = c.id;
      const link = element("a", "card");
      link.href = `#/customizations/${c.id}`;
      if (c.image_urls && c.image_urls.length) {
        const img = document.createElement("img");
        img.src = c.image_urls[0];
        img.alt = "";
        link.append(img);
      }
      const text = element("span", "card-text");
      text.append(element("strong", "", c.name || c.id),
                  element("span", `status status-${c.status === "ready" ? "succeeded" : c.status}`, c.status));
      link.append(text);
      li.append(link);
      ul.append(li);
    }
    if (!page.items.length) ul.append(element("li", "hint", "None yet: upload a checkpoint above."));
    setCustomizations(page.items);
  } catch (e) { say(`Could not list customizations: ${e.message}`); }
}

function route() {
  const match = location.hash.match(/^#\/customizations\/([\w-]+)/);
  if (match && session.key) openCustomization(match[1]);
  else closeCustomization();
}

let starting = Promise.resolve();

// (Re)start for the key in the field: one start at a time, the Customize form built once, the Generate form
// again with the key's view of the server's limits.
function start() {
  starting = starting.then(startOnce, startOnce);
  return starting;
}

let startedFor = null; // the key the page last started for

async function startOnce() {
  const key = keyInput.value.trim();
  if (spec && key === startedFor) return; // a second start for the same key (load and change raced)
  if (session.key !== key) $("job-list").replaceChildren(); // another key's jobs
  session.key = startedFor = key;
  say("");
  if (!spec) {
    try {
      spec = await fetch("/openapi.json").then((r) => r.json());
    } catch (e) {
      say(`Could not read the API's schema: ${e.message}`);
      return;
    }
    buildCustomizeForm(spec);
  }
  if (!session.key) {
    buildGenerateForm(spec, null);
    say("Paste your API key above to begin.");
    return;
  }
  let limits = null;
  try { limits = await api("GET", "/limits"); } catch (e) { say(`Could not read the server's limits: ${e.message}`); }
  buildGenerateForm(spec, limits);
  $("preset").textContent = limits ? `preset ${limits.preset}` : "";
  await refreshCustomizations();
  loadJobs();
  route();
}

keyInput.addEventListener("change", () => {
  localStorage.setItem("stillmoving-key", keyInput.value.trim());
  start();
});
$("refresh").addEventListener("click", () => { refreshCustomizations(); loadJobs(); });
$("studio-close").addEventListener("click", () => { location.hash = "#customizations"; });
window.addEventListener("hashchange", route);
document.addEventListener("customizations-changed", refreshCustomizations);
document.addEventListener("job-finished", (event) => {
  const job = event.detail;
  if (job.kind === "customize") refreshCustomizations();
});
// The jobs list stays live for jobs made elsewhere too (the CLI, another tab): a look every 15 s while shown.
setInterval(() => { if (session.key && document.visibilityState === "visible") loadJobs(); }, 15000);
start();

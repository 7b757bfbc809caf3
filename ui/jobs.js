// The jobs list: every job of the key, newest first, the active ones followed live (stage, progress bar,
// ETA, queue position, cancel) and each finished one's result inline: a video, a comparison, a customization.
"use strict";

import { api, follow, TERMINAL } from "./api.js";
import { renderComparison } from "./compare.js";
import { say } from "./page.js";

const followed = new Set();
const list = () => document.getElementById("job-list");

export function describe(job) {
  const p = job.params || {};
  if (job.kind === "customize") return `Train “${(p.config && p.config.name) || job.customization_id || job.id}”`;
  if (job.kind === "evaluate") return `Compare “${p.prompt || ""}”`;
  return `Generate “${p.prompt || ""}”`;
}

export function duration(seconds) {
  if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function statusText(job) {
  const parts = [job.status];
  if (job.stage && job.status === "running") {
    parts.push(job.steps ? `${job.stage} ${job.step || 0}/${job.steps}` : job.stage);
  } else if (job.stage === "waiting_for_customization") parts.push("waiting for its customization");
  if (job.queue_position) parts.push(`#${job.queue_position} in queue`);
  if (job.status === "running" && job.eta_s != null) parts.push(`about ${duration(job.eta_s)} left`);
  if (job.status === "failed" && job.error) parts.push(job.error.message);
  return parts.join(" · ");
}

// A job's progress line anywhere on the page (the list's row, a customization's training, a comparison).
export function progressLine(container, label) {
  container.replaceChildren();
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = 0;
  bar.setAttribute("aria-label", `Progress: ${label}`);
  const status = document.createElement("p");
  status.className = "status";
  container.append(bar, status);
  return (job) => {
    bar.value = job.progress || 0;
    status.textContent = statusText(job);
    status.className = `status status-${job.status}`;
  };
}

function row(job) {
  let li = list().querySelector(`[data-job="${job.id}"]`);
  if (li) return li;
  li = document.createElement("li");
  li.className = "job";
  li.dataset.job = job.id;
  li.dataset.kind = job.kind;
  const head = document.createElement("div");
  head.className = "job-head";
  const title = document.createElement("span");
  title.className = "label";
  title.textContent = describe(job);
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "small secondary cancel";
  cancel.textContent = "Cancel";
  cancel.setAttribute("aria-label", `Cancel: ${describe(job)}`);
  cancel.addEventListener("click", async () => {
    try { await api("POST", `/jobs/${job.id}/cancel`); } catch (e) { say(`Cancel failed: ${e.message}`); }
  });
  head.append(title, cancel);
  const progress = document.createElement("div");
  progress.className = "job-progress";
  const result = document.createElement("div");
  result.className = "job-result";
  li.append(head, progress, result);
  li.update = progressLine(progress, describe(job));
  const newer = [...list().children].find((other) => (other.dataset.created || "") < (job.created_at || "~"));
  li.dataset.created = job.created_at || new Date().toISOString();
  list().insertBefore(li, newer || null);
  return li;
}

function render(job) {
  const li = row(job);
  li.update(job);
  li.querySelector(".cancel").hidden = TERMINAL.includes(job.status);
  const result = li.querySelector(".job-result");
  if (job.status !== "succeeded" || !job.result || result.dataset.shown) return;
  result.dataset.shown = "1";
  if (job.kind === "generate") result.append(media(job.result, describe(job)));
  else if (job.kind === "evaluate") renderComparison(result, job.result);
  else if (job.result.customization_id) {
    const link = document.createElement("a");
    link.href = `#/customizations/${job.result.customization_id}`;
    link.textContent = "Open the customization";
    result.append(link);
  }
}

// A generated video as a looping player (a GIF as an image).
export function media(result, label) {
  if ((result.format || "mp4") === "gif") {
    const img = document.createElement("img");
    img.src = result.video_url;
    img.alt = `Generated GIF: ${label}`;
    img.className = "video";
    return img;
  }
  const video = document.createElement("video");
  Object.assign(video, { controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
  video.src = result.video_url;
  if (result.poster_url) video.poster = result.poster_url;
  video.className = "video";
  video.setAttribute("aria-label", `Generated video: ${label}`);
  return video;
}

// Follow a job to its end in the list (once); resolves with its final record.
export async function trackJob(job) {
  render({ status: "queued", progress: 0, ...job });
  if (followed.has(job.id) || TERMINAL.includes(job.status)) return job;
  followed.add(job.id);
  try {
    const final = await follow(job.id, (update) => render({ ...job, ...update }));
    if (final.status === "failed" && final.error) say(`${describe(final)} failed: ${final.error.message}`);
    document.dispatchEvent(new CustomEvent("job-finished", { detail: final }));
    return final;
  } catch (e) {
    say(`Lost track of job ${job.id}: ${e.message}`);
    return job;
  }
}

export async function loadJobs() {
  try {
    const page = await api("GET", "/jobs?limit=20");
    for (const job of page.items.slice().reverse()) trackJob(job);
  } catch (e) { say(`Could not list jobs: ${e.message}`); }
}

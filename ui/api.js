// The HTTP API as the page uses it: JSON calls with the bearer key, the error envelope as an ApiError that
// keeps its `field`, and a job followed live through its event stream (GET /jobs/{id}/events).
"use strict";

export const session = { key: "" };

export const TERMINAL = ["succeeded", "failed", "canceled"];

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.field = error.field || null;
  }
}

// An error for the status line: the server's message and the field it names.
export function explain(error) {
  return `${error.message}${error.field ? ` (field: ${error.field})` : ""}`;
}

function headers(extra) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

// `body`: undefined, a FormData (sent as multipart) or anything JSON.
export async function api(method, path, body) {
  const isForm = body instanceof FormData;
  const response = await fetch(path, {
    method,
    headers: headers(body === undefined || isForm ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : isForm ? body : JSON.stringify(body),
  });
  const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error || { message: response.statusText });
  return data;
}

// Browsers open at most six HTTP/1.1 connections per host: a few live streams, the other jobs are polled.
const MAX_STREAMS = 3;
let streams = 0;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const following = new Map(); // job id -> {listeners, last, promise}: one stream per job, however many follow it

// Follow a job until it ends: `onUpdate(job)` with each change (status, stage, progress, step, eta_s,
// queue_position), then once with the final record (GET /jobs/{id}), which the returned promise also gives.
export function follow(jobId, onUpdate) {
  let entry = following.get(jobId);
  if (entry) {
    entry.listeners.add(onUpdate);
    if (entry.last) onUpdate(entry.last);
    return entry.promise;
  }
  entry = { listeners: new Set([onUpdate]), last: null };
  following.set(jobId, entry);
  const notify = (job) => {
    entry.last = job;
    for (const listener of entry.listeners) listener(job);
  };
  entry.promise = watch(jobId, notify).finally(() => following.delete(jobId));
  return entry.promise;
}

async function watch(jobId, onUpdate) {
  const job = { id: jobId, status: "queued", progress: 0, stage: null };
  if (streams < MAX_STREAMS) {
    streams += 1;
    try {
      await stream(jobId, (event) => {
        for (const key of ["status", "stage", "progress", "step", "steps", "queue_position", "eta_s"]) {
          if (key in event) job[key] = event[key];
        }
        if (event.status && event.status !== "queued") job.queue_position = null;
        onUpdate({ ...job });
      });
    } catch (e) { /* the stream failed: polling from here */ } finally { streams -= 1; }
  }
  for (;;) {
    try {
      const record = await api("GET", `/jobs/${jobId}`);
      onUpdate(record);
      if (TERMINAL.includes(record.status)) return record;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) throw e;
    }
    await sleep(1000);
  }
}

// Read the job's Server-Sent Events (fetch: EventSource cannot send the key) until the stream ends.
async function stream(jobId, onEvent) {
  const response = await fetch(`/jobs/${jobId}/events`, { headers: headers({}) });
  if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const lines = buffer.slice(0, end).split("\n");
      buffer = buffer.slice(end + 2);
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue; // a keep-alive comment
      const event = JSON.parse(data);
      if (event.type !== "log") onEvent(event);
    }
  }
}

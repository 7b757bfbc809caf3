// A comparison's result (an evaluation job: POST /evaluations): the four rows side by side as looping
// videos, each with its measures under it, and the contact sheet.
"use strict";

import { element } from "./page.js";

const ROW_NAMES = {
  base: "Base model",
  naive: "Naive injection",
  "still-moving": "Still-Moving",
  "still-moving-no-motion-adapter": "Still-Moving without the Motion Adapter",
};

const MEASURES = {
  motion: "Motion",
  temporal_consistency: "Temporal consistency",
  fidelity_proxy: "Fidelity (proxy)",
  clip_i: "CLIP-I",
  clip_t: "CLIP-T",
  world_fidelity: "New look (frames)",
  world_shape_alignment: "Shape asked (frames)",
  world_colour_alignment: "Colour asked (frames)",
  world_displacement_px: "Centroid px/frame",
  world_direction_agreement: "Moves as named",
  world_one_object: "One object (frames)",
  world_area_cv: "Area CV",
  world_look_consistency: "Look consistent (frames)",
  world_artifacts: "Unreadable frames",
};

export function renderComparison(container, result) {
  const grid = element("div", "comparison");
  grid.setAttribute("role", "group");
  grid.setAttribute("aria-label", `Comparison of “${result.prompt}”, seed ${result.seed}`);
  for (const row of result.rows) {
    const figure = element("figure", "comparison-row");
    figure.dataset.row = row.name;
    const video = document.createElement("video");
    Object.assign(video, { loop: true, muted: true, autoplay: true, playsInline: true, controls: true });
    video.src = row.video_url;
    if (row.poster_url) video.poster = row.poster_url;
    video.setAttribute("aria-label", `${ROW_NAMES[row.name] || row.name}: “${result.prompt}”`);
    const caption = element("figcaption");
    caption.append(element("strong", "", ROW_NAMES[row.name] || row.name));
    const measures = element("dl", "measures");
    for (const [key, value] of Object.entries(row.measures || {})) {
      measures.append(element("dt", "", MEASURES[key] || key),
                      element("dd", "", typeof value === "number" ? value.toFixed(3) : String(value)));
    }
    caption.append(measures);
    figure.append(video, caption);
    grid.append(figure);
  }
  const note = element("p", "hint", `Seed ${result.seed}, ${result.num_frames} frames. Fidelity: ${result.fidelity || ""}. `);
  if (result.contact_sheet_url) {
    const link = element("a", "", "Contact sheet (PNG)");
    link.href = result.contact_sheet_url;
    link.target = "_blank";
    link.rel = "noopener";
    note.append(link);
  }
  container.replaceChildren(grid, note);
}

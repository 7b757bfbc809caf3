// Small page helpers shared by the modules: the status line and element lookup.
"use strict";

export const $ = (id) => document.getElementById(id);

// The page's status line (a polite live region) for what belongs to no field.
export function say(text) {
  $("message").textContent = text || "";
}

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * Small DOM helpers. Elements are built with createElement, never from HTML text:
 * nothing the API returns can become markup, and no inline style attribute is ever
 * written (the Content-Security-Policy forbids them; element.style from script is fine).
 */

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name === "className" ? "class" : name, value === true ? "" : value);
  }
  const present = (child) => child !== null && child !== undefined && child !== false;
  element.append(...children.flat(Infinity).filter(present));
  return element;
}

/** ``h("button", {type: "button", onclick}, "Text", child)`` */
export function h(tag, attributes, ...children) {
  return build(document.createElement(tag), attributes, children);
}

/** The same for SVG elements. */
export function svg(tag, attributes, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attributes, children);
}

export function byId(id) {
  return document.getElementById(id);
}

/** An AbortError from fetch: the view moved on, nothing to report. */
export function aborted(error) {
  return error?.name === "AbortError";
}

/** A bar behind a row's label, ``share`` percent wide (set through the CSSOM). */
export function bar(share) {
  const element = h("span", { class: "bar", "aria-hidden": "true" });
  element.style.width = `${Math.max(0, Math.min(100, share))}%`;
  return element;
}

/** A paragraph telling what went wrong in one part of the page. */
export function errorNote(error) {
  return h("p", { class: "error", role: "alert" }, error.message || String(error));
}

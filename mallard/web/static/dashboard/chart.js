/**
 * The time-series chart: clean SVG, one path per series, redrawn to the width of its
 * box (phone to desktop). Pointer and arrow keys move a marker with a tooltip; the
 * same numbers are in a table below for screen readers and copying.
 */

import { h, svg } from "./dom.js";
import { formatMetric, METRICS } from "./format.js";

const MARGIN = { top: 12, right: 16, bottom: 28, left: 64 };
const X_TICKS = 6;

/** A round upper bound for the y axis and the step between its grid lines; counts
 * (``whole``) step by 1 at least, or a top of 1 would read 0, 0, 1, 1, 1. */
function niceScale(max, whole, ticks = 4) {
  const highest = max > 0 ? max : 1;
  const raw = highest / ticks;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const nice = [1, 2, 2.5, 5, 10].map((factor) => factor * magnitude).find((s) => s >= raw);
  const step = whole ? Math.max(1, nice) : nice;
  return { step, top: Math.ceil(highest / step - 1e-9) * step };
}

const dayMonth = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  timeZone: "UTC",
});
const monthYear = new Intl.DateTimeFormat(undefined, {
  month: "short",
  year: "numeric",
  timeZone: "UTC",
});
const fullDay = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" });

function asDate(label) {
  return new Date(`${label.replace(" ", "T")}Z`);
}

/** Axis and tooltip texts for the API's bucket labels (``2026-11-21``, ``… 14:00:00``);
 * ``interval`` (week, month) when the query named one, else the labels' spacing tells. */
function labelFormats(labels, interval) {
  if (labels[0]?.includes(" ")) {
    const oneDay = labels[0].slice(0, 10) === labels.at(-1).slice(0, 10);
    const time = (label) => label.slice(11, 16);
    return {
      axis: oneDay ? time : (label) => `${dayMonth.format(asDate(label))} ${time(label)}`,
      full: (label) => `${fullDay.format(asDate(label))} ${time(label)}`,
    };
  }
  const spacing = labels.length > 1 ? (asDate(labels[1]) - asDate(labels[0])) / 86_400_000 : 1;
  const gap = { week: 7, month: 28 }[interval] ?? spacing;
  if (gap >= 28) {
    const month = (label) => monthYear.format(asDate(label));
    return { axis: month, full: month };
  }
  const full = (label) =>
    gap >= 7 ? `Week of ${fullDay.format(asDate(label))}` : fullDay.format(asDate(label));
  return { axis: (label) => dayMonth.format(asDate(label)), full };
}

export class Chart {
  constructor(box, tableBox) {
    this.box = box;
    this.tableBox = tableBox;
    this.data = null;
    this.index = null;
    this.frame = 0;
    this.width = 0;
    new ResizeObserver(() => {
      if (this.box.clientWidth === this.width) return;
      cancelAnimationFrame(this.frame);
      this.frame = requestAnimationFrame(() => this.draw());
    }).observe(box);
  }

  /** ``{metric, interval, labels, values, previousLabels, previous}``; ``previous`` may be
   * null, ``interval`` empty (the API chose). */
  show(data) {
    this.data = data;
    this.index = null;
    this.draw();
    this.drawTable();
  }

  draw() {
    if (!this.data) return;
    const { metric, labels, values, previous, interval } = this.data;
    this.width = this.box.clientWidth;
    const width = Math.max(280, this.width);
    const height = width < 600 ? 200 : 260;
    const plotWidth = width - MARGIN.left - MARGIN.right;
    const plotHeight = height - MARGIN.top - MARGIN.bottom;
    const count = values.length;
    let max = 0;
    for (const value of values) max = Math.max(max, value);
    for (const value of previous ?? []) max = Math.max(max, value);
    const { step, top } = niceScale(max, METRICS[metric].whole);
    const x = (i) => MARGIN.left + (count === 1 ? plotWidth / 2 : (i * plotWidth) / (count - 1));
    const y = (value) => MARGIN.top + plotHeight * (1 - value / top);
    const path = (series) =>
      series
        .map((value, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(value).toFixed(1)}`)
        .join("");
    const formats = labelFormats(labels, interval);
    const format = (value) => formatMetric(metric, value);

    const grid = [];
    for (let value = 0; value <= top + step / 2; value += step) {
      grid.push(
        svg("line", {
          class: "grid",
          x1: MARGIN.left,
          x2: width - MARGIN.right,
          y1: y(value),
          y2: y(value),
        }),
        svg(
          "text",
          { class: "y-label", x: MARGIN.left - 8, y: y(value), dy: "0.35em" },
          format(value),
        ),
      );
    }
    const every = Math.max(1, Math.ceil(count / (width < 600 ? X_TICKS / 2 : X_TICKS)));
    for (let i = 0; i < count; i += every) {
      grid.push(svg("text", { class: "x-label", x: x(i), y: height - 8 }, formats.axis(labels[i])));
    }
    const line = path(values);
    const bottom = y(0).toFixed(1);
    const area = count
      ? `${line}L${x(count - 1).toFixed(1)},${bottom}L${x(0).toFixed(1)},${bottom}Z`
      : "";
    const rule = svg("line", { class: "rule", y1: MARGIN.top, y2: MARGIN.top + plotHeight });
    const dot = svg("circle", { class: "dot", r: 4 });
    const previousDot = svg("circle", { class: "dot previous", r: 3.5 });
    const marker = svg(
      "g",
      { class: "marker", visibility: "hidden" },
      rule,
      previous ? previousDot : null,
      dot,
    );
    const highest = values.indexOf(Math.max(...values));
    const chart = svg(
      "svg",
      {
        class: "chart-svg",
        viewBox: `0 0 ${width} ${height}`,
        width,
        height,
        role: "img",
        tabindex: 0,
        "aria-label":
          `${METRICS[metric].label}: ${count} points from ${formats.full(labels[0] ?? "")} to ` +
          `${formats.full(labels.at(-1) ?? "")}, highest ${format(values[highest] ?? 0)}. ` +
          "Arrow keys move through the points.",
      },
      grid,
      svg("path", { class: "area", d: area }),
      previous ? svg("path", { class: "line previous", d: path(previous) }) : null,
      svg("path", { class: "line current", d: line, "data-points": count }),
      marker,
    );
    const tooltip = h("div", { class: "tooltip", hidden: true, "aria-live": "polite" });

    const mark = (index) => {
      this.index = index;
      if (index === null) {
        marker.setAttribute("visibility", "hidden");
        tooltip.hidden = true;
        return;
      }
      const left = x(index);
      for (const end of ["x1", "x2"]) rule.setAttribute(end, left);
      dot.setAttribute("cx", left);
      dot.setAttribute("cy", y(values[index]));
      if (previous) {
        previousDot.setAttribute("cx", left);
        previousDot.setAttribute("cy", y(previous[index]));
      }
      marker.setAttribute("visibility", "visible");
      tooltip.replaceChildren(h("strong", {}, formats.full(labels[index])));
      tooltip.append(h("span", {}, `${METRICS[metric].label}: ${format(values[index])}`));
      if (previous) {
        const then = formats.full(this.data.previousLabels[index]);
        tooltip.append(h("span", { class: "muted" }, `${then}: ${format(previous[index])}`));
      }
      tooltip.hidden = false;
      tooltip.style.left = `${(100 * left) / width}%`;
      tooltip.classList.toggle("flip", left > width / 2);
    };
    chart.addEventListener("pointermove", (event) => {
      const bounds = chart.getBoundingClientRect();
      const px = ((event.clientX - bounds.left) * width) / bounds.width;
      const index = Math.round(((px - MARGIN.left) / plotWidth) * (count - 1));
      mark(Math.min(count - 1, Math.max(0, index)));
    });
    chart.addEventListener("pointerleave", () => mark(null));
    chart.addEventListener("blur", () => mark(null));
    chart.addEventListener("keydown", (event) => {
      const moves = { ArrowLeft: -1, ArrowRight: 1, Home: -Infinity, End: Infinity };
      if (event.key === "Escape") return mark(null);
      if (!(event.key in moves) || !count) return;
      event.preventDefault();
      const from = this.index ?? (moves[event.key] > 0 ? -1 : count);
      mark(Math.min(count - 1, Math.max(0, from + moves[event.key])));
    });
    this.box.replaceChildren(chart, tooltip);
    if (this.index !== null && this.index < count) mark(this.index);
  }

  drawTable() {
    const { metric, labels, values, previousLabels, previous, interval } = this.data;
    const { full } = labelFormats(labels, interval);
    const name = METRICS[metric].label;
    this.tableBox.replaceChildren(
      h(
        "table",
        { class: "data-table" },
        h("caption", { class: "visually-hidden" }, `${name} per period`),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, "Period"),
            h("th", { scope: "col" }, name),
            previous ? h("th", { scope: "col" }, "Compared period") : null,
            previous ? h("th", { scope: "col" }, `${name} then`) : null,
          ),
        ),
        h(
          "tbody",
          {},
          labels.map((label, i) =>
            h(
              "tr",
              { "data-label": label },
              h("th", { scope: "row" }, full(label)),
              h("td", {}, formatMetric(metric, values[i])),
              previous ? h("td", {}, full(previousLabels[i])) : null,
              previous ? h("td", {}, formatMetric(metric, previous[i])) : null,
            ),
          ),
        ),
      ),
    );
  }
}

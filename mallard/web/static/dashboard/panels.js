/**
 * Breakdown panels: top pages, sources, devices, locations, goals, custom properties.
 * Each shows the API's rows for its active tab; a row is a button that filters the
 * whole dashboard by its value.
 */

import { apiUrl, getJSON } from "./api.js";
import { aborted, bar, errorNote, h } from "./dom.js";
import { dimensionLabel, dimensionValue, formatMetric, METRICS } from "./format.js";
import { makeTabs } from "./tabs.js";

const PAGE_SIZE = 10;
const NOT_PAGEVIEWS = ["is_not", "event:name", ["pageview"]];

export const PANELS = [
  {
    id: "pages",
    title: "Pages",
    tabs: [
      { name: "pages", label: "Top pages", dimension: "event:page" },
      { name: "entry_pages", label: "Entry pages", dimension: "visit:entry_page" },
      { name: "exit_pages", label: "Exit pages", dimension: "visit:exit_page" },
    ],
  },
  {
    id: "sources",
    title: "Sources",
    tabs: [
      { name: "sources", label: "Sources", dimension: "visit:source" },
      { name: "referrers", label: "Referrers", dimension: "visit:referrer" },
      { name: "utm_sources", label: "UTM sources", dimension: "visit:utm_source" },
      { name: "utm_mediums", label: "Mediums", dimension: "visit:utm_medium" },
      { name: "utm_campaigns", label: "Campaigns", dimension: "visit:utm_campaign" },
      { name: "utm_contents", label: "Contents", dimension: "visit:utm_content" },
      { name: "utm_terms", label: "Terms", dimension: "visit:utm_term" },
    ],
  },
  {
    id: "devices",
    title: "Devices",
    tabs: [
      { name: "devices", label: "Devices", dimension: "visit:device" },
      { name: "browsers", label: "Browsers", dimension: "visit:browser" },
      { name: "os", label: "Operating systems", dimension: "visit:os" },
    ],
  },
  {
    id: "locations",
    title: "Locations",
    tabs: [
      { name: "countries", label: "Countries", dimension: "visit:country" },
      { name: "regions", label: "Regions", dimension: "visit:region" },
      { name: "cities", label: "Cities", dimension: "visit:city" },
    ],
  },
  {
    id: "goals",
    title: "Goals and events",
    tabs: [
      {
        name: "events",
        label: "Goals",
        dimension: "event:goal",
        metrics: ["visitors", "events", "conversion_rate", "total_revenue"],
        filter: NOT_PAGEVIEWS, // custom events only; conversion rates stay of all visitors
      },
    ],
  },
  {
    id: "props",
    title: "Custom properties",
    property: true,
    tabs: [{ name: "props", label: "Property", metrics: ["visitors", "events"] }],
  },
];

/** The breakdown request of a tab: its route and the parameters beside the view's. */
function breakdownRequest(tab, params, property, page = 1) {
  const name = tab.name === "props" ? `props/${encodeURIComponent(property)}` : tab.name;
  const request = { ...params, limit: PAGE_SIZE, page };
  if (tab.metrics) request.metrics = tab.metrics.join(",");
  if (tab.filter) {
    const filters = params.filters ? JSON.parse(params.filters) : [];
    request.filters = JSON.stringify([...filters, tab.filter]);
  }
  return { path: `/api/stats/breakdown/${name}`, params: request };
}

/** One panel. ``actions``: ``filter(dimension, value)``, ``setProperty(key)``, ``canExport``. */
export class Panel {
  constructor(spec, actions) {
    this.spec = spec;
    this.actions = actions;
    this.tab = spec.tabs[0];
    this.params = null;
    this.property = "";
    this.controller = null;
    const tabs = spec.tabs.map((tab) => ({ id: tab.name, label: tab.label }));
    this.tabs = makeTabs(`${spec.title}: show`, tabs, this.tab.name, (name) => {
      this.tab = spec.tabs.find((tab) => tab.name === name);
      this.load(this.params, this.property);
    });
    this.exportLink = h("a", { class: "export-link", download: true }, "Export CSV");
    this.more = h("button", { type: "button", class: "quiet more", hidden: true }, "Show more");
    this.more.addEventListener("click", () => this.showMore());
    this.pager = null; // what "Show more" continues: {page, shown, total, tbody, metrics, max}
    this.body = this.tabs.panel;
    const head = h(
      "div",
      { class: "box-head" },
      h("h2", { id: `panel-${spec.id}-title` }, spec.title),
    );
    if (spec.tabs.length > 1) head.append(this.tabs.list);
    if (spec.property) head.append(this.propertyForm());
    this.element = h(
      "section",
      {
        class: "card-box panel",
        id: `panel-${spec.id}`,
        "aria-labelledby": `panel-${spec.id}-title`,
      },
      head,
      this.body,
      h("div", { class: "panel-foot" }, this.more, this.exportLink),
    );
  }

  propertyForm() {
    this.propertyInput = h("input", {
      id: "property-key",
      autocomplete: "off",
      spellcheck: "false",
      placeholder: "key in props",
    });
    return h(
      "form",
      {
        class: "property-form",
        onsubmit: (event) => {
          event.preventDefault();
          this.actions.setProperty(this.propertyInput.value.trim());
        },
      },
      h("label", { for: "property-key" }, "Property"),
      this.propertyInput,
      h("button", { type: "submit" }, "Show"),
    );
  }

  get dimension() {
    return this.tab.name === "props" ? `event:props:${this.property}` : this.tab.dimension;
  }

  /** Rows of the active tab for ``params`` (the view's site, period and filters). */
  async load(params, property = "") {
    this.params = params;
    this.property = property;
    this.controller?.abort();
    this.controller = new AbortController();
    const { signal } = this.controller;
    this.more.hidden = true;
    this.pager = null;
    this.updateExport();
    if (this.spec.property) {
      this.propertyInput.value = property;
      if (!property) {
        this.body.replaceChildren(
          h(
            "p",
            { class: "muted" },
            "Type the key of a custom property your events send in props.",
          ),
        );
        return;
      }
    }
    this.body.setAttribute("aria-busy", "true");
    try {
      const request = breakdownRequest(this.tab, params, property);
      const answer = await getJSON(request.path, request.params, signal);
      this.render(answer);
    } catch (error) {
      if (!aborted(error)) this.body.replaceChildren(errorNote(error));
    } finally {
      if (!signal.aborted) this.body.removeAttribute("aria-busy");
    }
  }

  updateExport(metrics) {
    const shown = this.actions.canExport && (!this.spec.property || this.property);
    this.exportLink.hidden = !shown;
    if (!shown) return;
    const { params } = breakdownRequest(this.tab, this.params, this.property);
    delete params.limit;
    delete params.page;
    this.exportLink.href = apiUrl("/api/stats/export", {
      ...params,
      format: "csv",
      dimension: this.dimension,
      metrics: metrics?.join(","),
    });
    this.exportLink.setAttribute("aria-label", `${this.spec.title}: export as CSV`);
  }

  render(answer) {
    const metrics = answer.query.metrics;
    const rows = answer.results;
    this.updateExport(metrics);
    if (!rows.length) {
      this.body.replaceChildren(h("p", { class: "muted" }, "Nothing in this period."));
      return;
    }
    const tbody = h("tbody");
    const table = h(
      "table",
      { class: "breakdown", "data-breakdown": this.tab.name },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, dimensionLabel(this.dimension)),
          metrics.map((metric, i) =>
            h("th", { scope: "col", class: i > 1 ? "extra" : null }, METRICS[metric].column),
          ),
        ),
      ),
      tbody,
    );
    const total = answer.meta.total_rows ?? rows.length;
    this.pager = {
      page: 1,
      shown: rows.length,
      total,
      tbody,
      metrics,
      max: rows[0].metrics[0] || 1,
    };
    this.appendRows(rows);
    this.more.hidden = rows.length >= total;
    this.body.replaceChildren(h("div", { class: "table-scroll" }, table));
  }

  /** The next page of rows, below the ones shown. */
  async showMore() {
    const pager = this.pager;
    this.more.disabled = true;
    try {
      const next = breakdownRequest(this.tab, this.params, this.property, pager.page + 1);
      const answer = await getJSON(next.path, next.params, this.controller.signal);
      if (pager !== this.pager) return;
      pager.page += 1;
      pager.shown += answer.results.length;
      this.appendRows(answer.results);
      this.more.hidden = pager.shown >= pager.total || !answer.results.length;
    } catch (error) {
      if (!aborted(error)) this.body.append(errorNote(error));
    } finally {
      this.more.disabled = false;
    }
  }

  appendRows(rows) {
    const { tbody, metrics, max } = this.pager;
    const dimension = this.dimension;
    for (const row of rows) {
      const value = row.dimensions[0];
      const shown = dimensionValue(dimension, value);
      const button = h(
        "button",
        {
          type: "button",
          class: "row-button",
          "data-value": value,
          title: `Filter: ${dimensionLabel(dimension)} is ${shown}`,
          onclick: () => this.actions.filter(dimension, value),
        },
        shown,
      );
      tbody.append(
        h(
          "tr",
          {},
          h("th", { scope: "row", class: "row-label" }, bar((100 * row.metrics[0]) / max), button),
          row.metrics.map((number, i) =>
            h(
              "td",
              { class: i > 1 ? "extra" : null, "data-metric": metrics[i] },
              formatMetric(metrics[i], number),
            ),
          ),
        ),
      );
    }
  }
}

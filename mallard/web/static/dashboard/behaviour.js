/**
 * Behaviour views: a funnel builder (steps, drop-off bars), retention cohorts
 * (a heat-coloured grid of percentages) and page flow (previous and next pages).
 * Only the chosen view asks the API.
 */

import { getJSON } from "./api.js";
import { aborted, bar, errorNote, h } from "./dom.js";
import { formatMetric, plainText } from "./format.js";
import { makeTabs } from "./tabs.js";

const VIEWS = [
  { id: "funnel", label: "Funnel" },
  { id: "retention", label: "Retention" },
  { id: "flow", label: "Page flow" },
];
const WINDOWS = [
  ["1800", "30 minutes"],
  ["3600", "1 hour"],
  ["86400", "1 day"],
  ["604800", "7 days"],
];
const PERIOD_NAMES = { day: "Day", week: "Week", month: "Month" };
const MAX_STEPS = 8;
const HEAT_LEVELS = 8;

/** ``page:/pricing,event:signup`` -> ``[{kind, value}]`` */
function parseSteps(text) {
  return text
    .split(",")
    .map((part) => /^(page|event):(.+)$/.exec(part.trim()))
    .filter(Boolean)
    .map((match) => ({ kind: match[1], value: match[2] }));
}

/** Retention percentages on a square-root scale: the small later periods stay visible. */
function heatLevel(percentage) {
  return Math.min(HEAT_LEVELS, Math.ceil(Math.sqrt(Math.max(0, percentage) / 100) * HEAT_LEVELS));
}

export class Behaviour {
  /** ``actions``: ``navigate(changes, parts)``; ``load`` gets the view's state and params. */
  constructor(section, actions) {
    this.actions = actions;
    this.controller = null;
    this.tabs = makeTabs("Behaviour view", VIEWS, "funnel", (view) =>
      this.actions.navigate({ behaviour: view }, ["behaviour"]),
    );
    section.querySelector(".box-head").append(this.tabs.list);
    section.append(this.tabs.panel);
  }

  async load(state, params) {
    this.controller?.abort();
    this.controller = new AbortController();
    const { signal } = this.controller;
    this.tabs.select(state.behaviour);
    this.controls = []; // what a view has built before asking: kept above an error
    const panel = this.tabs.panel;
    panel.setAttribute("aria-busy", "true");
    try {
      const view = { funnel: this.funnel, retention: this.retention, flow: this.flow }[
        state.behaviour
      ];
      panel.replaceChildren(...(await view.call(this, state, params, signal)));
    } catch (error) {
      if (!aborted(error)) panel.replaceChildren(...this.controls, errorNote(error));
    } finally {
      if (!signal.aborted) panel.removeAttribute("aria-busy");
    }
  }

  // --- funnel -------------------------------------------------------------------

  async funnel(state, params, signal) {
    const steps = parseSteps(state.funnel);
    const form = this.funnelForm(steps, state.window);
    if (steps.length < 2) {
      return [
        form,
        h(
          "p",
          { class: "muted" },
          "Add two or more steps: pages (a path, or a prefix ending in *) or events.",
        ),
      ];
    }
    this.controls = [form];
    const answer = await getJSON(
      "/api/stats/funnel",
      { ...params, steps: state.funnel, window: state.window },
      signal,
    );
    return [form, this.funnelChart(answer.steps)];
  }

  funnelForm(steps, windowSeconds) {
    const list = h("ol", { class: "funnel-steps" });
    const error = h("p", { class: "form-error", role: "alert" });
    const addStep = (step = { kind: "page", value: "" }) => {
      const number = list.children.length + 1;
      const kind = h(
        "select",
        { "aria-label": `Step ${number}: kind`, class: "step-kind" },
        h("option", { value: "page" }, "Page"),
        h("option", { value: "event" }, "Event"),
      );
      kind.value = step.kind;
      const value = h("input", {
        "aria-label": `Step ${number}: page path or event name`,
        class: "step-value",
        value: step.value,
        placeholder: "/pricing or signup",
        spellcheck: "false",
      });
      const remove = h(
        "button",
        { type: "button", class: "quiet", "aria-label": `Remove step ${number}` },
        "✕",
      );
      const item = h("li", {}, kind, value, remove);
      remove.addEventListener("click", () => {
        item.remove();
        add.disabled = false;
      });
      list.append(item);
      add.disabled = list.children.length >= MAX_STEPS;
    };
    const add = h(
      "button",
      { type: "button", class: "quiet", onclick: () => addStep() },
      "Add a step",
    );
    for (const step of steps) addStep(step);
    while (list.children.length < 2) addStep();
    const within = h(
      "select",
      { id: "funnel-window" },
      WINDOWS.map(([value, label]) => h("option", { value }, label)),
    );
    within.value = windowSeconds;
    const form = h(
      "form",
      { class: "funnel-form", "aria-label": "Funnel steps" },
      list,
      h(
        "div",
        { class: "form-row" },
        add,
        h("label", { for: "funnel-window" }, "All steps within"),
        within,
        h("button", { type: "submit" }, "Show the funnel"),
      ),
      error,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const chosen = [...list.children]
        .map((item) => [
          item.querySelector(".step-kind").value,
          item.querySelector(".step-value").value.trim(),
        ])
        .filter(([, value]) => value && !value.includes(","));
      if (chosen.length < 2) {
        error.textContent = "A funnel needs two or more steps (a comma cannot be part of a step).";
        return;
      }
      this.actions.navigate(
        {
          funnel: chosen.map(([kind, value]) => `${kind}:${value}`).join(","),
          window: within.value,
        },
        ["behaviour"],
      );
    });
    return form;
  }

  funnelChart(steps) {
    const first = steps[0]?.visitors || 1;
    return h(
      "ol",
      { class: "funnel", "aria-label": "Funnel" },
      steps.map((step, i) => {
        const [kind, ...rest] = step.name.split(":");
        const name = `${kind === "page" ? "Page" : "Event"} ${plainText(rest.join(":"))}`;
        return h(
          "li",
          { class: "funnel-step", "data-step": step.step },
          h(
            "div",
            { class: "funnel-head" },
            h("span", { class: "step-name" }, name),
            h(
              "span",
              { class: "step-visitors" },
              `${formatMetric("visitors", step.visitors)} visitors`,
            ),
          ),
          h("div", { class: "track" }, bar((100 * step.visitors) / first)),
          h(
            "p",
            { class: "funnel-meta" },
            h(
              "span",
              { class: "step-conversion" },
              `${formatMetric("conversion_rate", step.conversion_rate)} of step 1`,
            ),
            i
              ? h(
                  "span",
                  { class: "step-dropoff" },
                  `${formatMetric("visitors", step.dropoff)} dropped off`,
                )
              : null,
          ),
        );
      }),
    );
  }

  // --- retention ----------------------------------------------------------------

  async retention(state, params, signal) {
    const interval = h(
      "select",
      { id: "retention-interval" },
      Object.entries(PERIOD_NAMES).map(([value, label]) => h("option", { value }, `${label}s`)),
    );
    interval.value = state.retention;
    interval.addEventListener("change", () =>
      this.actions.navigate({ retention: interval.value }, ["behaviour"]),
    );
    const controls = h(
      "div",
      { class: "form-row" },
      h("label", { for: "retention-interval" }, "Cohorts by"),
      interval,
    );
    this.controls = [controls];
    const answer = await getJSON(
      "/api/stats/retention",
      { ...params, interval: state.retention },
      signal,
    );
    const note = h(
      "p",
      { class: "muted" },
      "Visitors by the period of their first visit, and the share of them seen again in " +
        "each later period. Visitor ids change every day, so only server-side events with " +
        "stable ids return across days.",
    );
    if (!answer.cohorts.length) {
      return [controls, note, h("p", { class: "muted" }, "Nothing in this period.")];
    }
    return [controls, note, this.retentionGrid(answer.cohorts, PERIOD_NAMES[state.retention])];
  }

  retentionGrid(cohorts, period) {
    const width = Math.max(...cohorts.map((cohort) => cohort.periods.length));
    const offsets = [...Array(width).keys()];
    return h(
      "div",
      { class: "table-scroll" },
      h(
        "table",
        { class: "retention" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, "Cohort"),
            h("th", { scope: "col" }, "Visitors"),
            offsets.map((offset) => h("th", { scope: "col" }, `${period} ${offset}`)),
          ),
        ),
        h(
          "tbody",
          {},
          cohorts.map((cohort) =>
            h(
              "tr",
              { "data-cohort": cohort.cohort },
              h("th", { scope: "row" }, cohort.cohort),
              h("td", {}, formatMetric("visitors", cohort.visitors)),
              offsets.map((offset) => {
                const cell = cohort.periods[offset];
                if (!cell) return h("td", { class: "heat-none" });
                const seen = formatMetric("visitors", cell.visitors);
                return h(
                  "td",
                  {
                    class: `heat heat-${heatLevel(cell.percentage)}`,
                    title: `${seen} of ${formatMetric("visitors", cohort.visitors)} visitors`,
                  },
                  formatMetric("percentage", cell.percentage),
                );
              }),
            ),
          ),
        ),
      ),
    );
  }

  // --- page flow ----------------------------------------------------------------

  async flow(state, params, signal) {
    const top = await getJSON(
      "/api/stats/breakdown/pages",
      { ...params, limit: 25, metrics: "visitors" },
      signal,
    );
    const pages = top.results.map((row) => row.dimensions[0]);
    const page = state.flow || pages[0];
    const input = h("input", {
      id: "flow-page",
      list: "flow-pages",
      value: page ?? "",
      spellcheck: "false",
    });
    const form = h(
      "form",
      { class: "form-row flow-form" },
      h("label", { for: "flow-page" }, "Page"),
      input,
      h(
        "datalist",
        { id: "flow-pages" },
        pages.map((path) => h("option", { value: path })),
      ),
      h("button", { type: "submit" }, "Show its flow"),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value.trim()) this.actions.navigate({ flow: input.value.trim() }, ["behaviour"]);
    });
    if (!page) return [form, h("p", { class: "muted" }, "No page views in this period.")];
    this.controls = [form];
    const answer = await getJSON("/api/stats/flow", { ...params, page }, signal);
    return [
      form,
      h(
        "div",
        { class: "flow" },
        this.flowColumn("previous", `Before ${plainText(page)}`, answer.previous),
        h("p", { class: "flow-page", "aria-hidden": "true" }, plainText(page)),
        this.flowColumn("next", `After ${plainText(page)}`, answer.next),
      ),
    ];
  }

  flowColumn(direction, title, rows) {
    const most = rows[0]?.views || 1;
    return h(
      "section",
      { class: `flow-column flow-${direction}`, "aria-label": title },
      h("h3", {}, title),
      rows.length
        ? h(
            "ol",
            {},
            rows.map((row) => {
              const special = row.page.startsWith("(");
              const label = special
                ? h(
                    "span",
                    { class: "flow-label" },
                    row.page === "(entrance)" ? "Entered the site" : "Left the site",
                  )
                : h(
                    "button",
                    {
                      type: "button",
                      class: "row-button flow-label",
                      title: `Show the flow of ${plainText(row.page)}`,
                      onclick: () => this.actions.navigate({ flow: row.page }, ["behaviour"]),
                    },
                    plainText(row.page),
                  );
              return h(
                "li",
                { "data-page": row.page },
                h("span", { class: "row-label" }, bar((100 * row.views) / most), label),
                h("span", { class: "flow-views" }, formatMetric("views", row.views)),
              );
            }),
          )
        : h("p", { class: "muted" }, "Nothing."),
    );
  }
}

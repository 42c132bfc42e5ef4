/** The top cards: one figure per metric with its change; choosing one charts it. */

import { h } from "./dom.js";
import { formatChange, formatMetric, METRICS } from "./format.js";
import { hasGoalFilter } from "./state.js";

const MAIN_METRICS = [
  "visitors",
  "visits",
  "pageviews",
  "views_per_visit",
  "bounce_rate",
  "visit_duration",
  "total_revenue",
];
const LONG = 9; // characters: a longer figure gets a smaller font, to fit a narrow card

/** The metrics of the cards: with a goal filter, its conversion rate too. */
export function cardMetrics(filters) {
  return hasGoalFilter(filters) ? [...MAIN_METRICS, "conversion_rate"] : MAIN_METRICS;
}

/** Revenue only when there is some (now or in the compared period). */
function shown(metric, value, before) {
  return metric !== "total_revenue" || Boolean(value) || Boolean(before);
}

/** ``answer``: the API's ``/api/stats/main`` answer; ``onChoose(metric)`` charts a metric. */
export function renderCards(list, answer, selected, onChoose) {
  const [row] = answer.results;
  const comparison = row.comparison;
  const cards = answer.query.metrics.map((metric, i) => {
    const value = row.metrics[i];
    const before = comparison?.metrics[i];
    if (!shown(metric, value, before)) return null;
    const text = formatMetric(metric, value);
    const change = comparison ? formatChange(metric, comparison.change[i]) : null;
    const quality =
      change?.good === null || change === null ? "neutral" : change.good ? "good" : "bad";
    return h(
      "li",
      {},
      h(
        "button",
        {
          type: "button",
          class: "card",
          "data-metric": metric,
          "aria-pressed": String(metric === selected),
          onclick: () => onChoose(metric),
        },
        h("span", { class: "card-label" }, METRICS[metric].label),
        h("span", { class: text.length > LONG ? "card-value long" : "card-value" }, text),
        change
          ? h(
              "span",
              { class: `card-change ${quality}` },
              h("span", { class: "change" }, change.text),
              h("span", { class: "card-before" }, ` from ${formatMetric(metric, before)}`),
            )
          : null,
      ),
    );
  });
  list.replaceChildren(...cards.filter(Boolean));
}

export function markChosen(list, metric) {
  for (const card of list.querySelectorAll(".card")) {
    card.setAttribute("aria-pressed", String(card.dataset.metric === metric));
  }
}

/**
 * The dashboard's state lives in the URL, so that a view can be bookmarked and shared:
 * ``/?site=example.com&period=30d&filters=[["is","visit:country",["DE"]]]&metric=visits``.
 * Parameters at their default value are left out.
 */

export const PERIODS = [
  ["today", "Today"],
  ["yesterday", "Yesterday"],
  ["7d", "Last 7 days"],
  ["30d", "Last 30 days"],
  ["month", "This month"],
  ["6mo", "Last 6 months"],
  ["12mo", "Last 12 months"],
  ["custom", "Custom range"],
];

const CHOICES = {
  period: PERIODS.map(([value]) => value),
  compare: ["", "previous_period", "year_over_year"],
  interval: ["", "hour", "day", "week", "month"],
  behaviour: ["funnel", "retention", "flow"],
  retention: ["day", "week", "month"],
  window: ["1800", "3600", "86400", "604800"],
};

const DEFAULTS = {
  site: "",
  period: "30d",
  from: "",
  to: "",
  compare: "",
  metric: "visitors",
  interval: "",
  behaviour: "funnel",
  funnel: "",
  window: "86400",
  retention: "week",
  flow: "",
  prop: "",
  auth: "",
};

const DATE = /^\d{4}-\d{2}-\d{2}$/;

/** The URL's filters: a list of lists (the API checks the rest and says what is wrong). */
function parseFilters(text) {
  if (!text) return [];
  try {
    const filters = JSON.parse(text);
    return Array.isArray(filters) ? filters.filter((filter) => Array.isArray(filter)) : [];
  } catch {
    return [];
  }
}

export function parseState(search) {
  const params = new URLSearchParams(search);
  const state = { ...DEFAULTS, filters: parseFilters(params.get("filters")) };
  for (const name of Object.keys(DEFAULTS)) {
    const value = params.get(name);
    if (value !== null && (!CHOICES[name] || CHOICES[name].includes(value))) state[name] = value;
  }
  if (state.period === "custom" && !(DATE.test(state.from) && DATE.test(state.to))) {
    state.period = DEFAULTS.period;
  }
  if (state.period !== "custom") state.from = state.to = "";
  else if (state.from > state.to) [state.from, state.to] = [state.to, state.from];
  return state;
}

/** The URL's query string for ``state`` (empty at the defaults); filters follow the dates. */
export function toSearch(state) {
  const params = new URLSearchParams();
  for (const [name, fallback] of Object.entries(DEFAULTS)) {
    if (state[name] && state[name] !== fallback) params.set(name, state[name]);
    if (name === "to" && state.filters.length) params.set("filters", JSON.stringify(state.filters));
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}

/** Today's date (``YYYY-MM-DD``) in ``timezone``, ``offset`` days later or earlier. */
export function dayIn(timezone, offset = 0) {
  const parts = new Intl.DateTimeFormat("en-CA", {
    timeZone: timezone,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
  }).format(new Date());
  const day = new Date(`${parts}T00:00:00Z`);
  day.setUTCDate(day.getUTCDate() + offset);
  return day.toISOString().slice(0, 10);
}

/** The stats API's parameters for the state: site, period, date, filters, timezone. */
export function queryParams(state, timezone) {
  const params = { site_id: state.site, timezone };
  if (state.period === "today") params.period = "day";
  else if (state.period === "yesterday") {
    params.period = "day";
    params.date = dayIn(timezone, -1);
  } else if (state.period === "custom") {
    params.period = "custom";
    params.date = `${state.from},${state.to}`;
  } else params.period = state.period;
  if (state.filters.length) params.filters = JSON.stringify(state.filters);
  return params;
}

/** The filters with ``dimension`` set to ``value`` (replacing a filter on it). */
export function withFilter(filters, dimension, value) {
  const others = filters.filter((filter) => filter[1] !== dimension);
  return [...others, ["is", dimension, [value]]];
}

export function hasGoalFilter(filters) {
  return filters.some((filter) => filter[1] === "event:goal" || filter[1] === "event:name");
}

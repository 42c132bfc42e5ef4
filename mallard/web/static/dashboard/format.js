/** Names and number formats of metrics and dimensions, in the browser's locale. */

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const money = new Intl.NumberFormat(undefined, {
  minimumFractionDigits: 2,
  maximumFractionDigits: 2,
});

function percent(value) {
  return `${decimal.format(value)}%`;
}

/** 76 -> "1m 16s"; 3725 -> "1h 2m 5s". */
function duration(seconds) {
  const total = Math.round(seconds);
  const parts = [];
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  if (hours) parts.push(`${hours}h`);
  if (minutes) parts.push(`${minutes}m`);
  if (total % 60 || !parts.length) parts.push(`${total % 60}s`);
  return parts.join(" ");
}

export const METRICS = {
  visitors: { label: "Unique visitors", column: "Visitors", format: integer.format, whole: true },
  visits: { label: "Total visits", column: "Visits", format: integer.format, whole: true },
  pageviews: { label: "Total pageviews", column: "Pageviews", format: integer.format, whole: true },
  views_per_visit: { label: "Views per visit", column: "Views/visit", format: decimal.format },
  bounce_rate: { label: "Bounce rate", column: "Bounce", format: percent, lowerIsBetter: true },
  visit_duration: { label: "Visit duration", column: "Duration", format: duration },
  total_revenue: { label: "Revenue", column: "Revenue", format: money.format },
  events: { label: "Total events", column: "Events", format: integer.format, whole: true },
  conversion_rate: { label: "Conversion rate", column: "CR", format: percent },
  percentage: { label: "Share of visitors", column: "%", format: percent },
  views: { label: "Views", column: "Views", format: integer.format, whole: true },
};

export function formatMetric(metric, value) {
  if (value === null || value === undefined) return "–";
  return METRICS[metric].format(value);
}

/**
 * The API's change against the comparison period: a percentage, except for the
 * bounce rate (percentage points). ``null`` means the earlier value was zero.
 */
export function formatChange(metric, change) {
  if (change === null || change === undefined) return { text: "new", trend: "up", good: true };
  const unit = metric === "bounce_rate" ? " pp" : "%";
  const trend = change > 0 ? "up" : change < 0 ? "down" : "flat";
  const arrow = { up: "↑", down: "↓", flat: "→" }[trend];
  const better = METRICS[metric].lowerIsBetter ? change < 0 : change > 0;
  return {
    text: `${arrow} ${integer.format(Math.abs(change))}${unit}`,
    trend,
    good: trend === "flat" ? null : better,
  };
}

let regionNames = null;
try {
  regionNames = new Intl.DisplayNames(undefined, { type: "region" });
} catch {
  regionNames = null;
}

/** ``DE`` -> ``Germany`` where the browser knows the code; the code otherwise. */
function countryName(code) {
  if (!/^[A-Z]{2}$/.test(code) || !regionNames) return code;
  try {
    return regionNames.of(code) ?? code;
  } catch {
    return code;
  }
}

const DIMENSIONS = {
  "event:page": { label: "Page" },
  "event:goal": { label: "Goal" },
  "event:name": { label: "Event" },
  "visit:entry_page": { label: "Entry page" },
  "visit:exit_page": { label: "Exit page" },
  "visit:source": { label: "Source", none: "Direct / None" },
  "visit:referrer": { label: "Referrer", none: "Direct / None" },
  "visit:utm_source": { label: "UTM source" },
  "visit:utm_medium": { label: "UTM medium" },
  "visit:utm_campaign": { label: "UTM campaign" },
  "visit:utm_content": { label: "UTM content" },
  "visit:utm_term": { label: "UTM term" },
  "visit:device": { label: "Device" },
  "visit:browser": { label: "Browser" },
  "visit:browser_version": { label: "Browser version" },
  "visit:os": { label: "Operating system" },
  "visit:os_version": { label: "OS version" },
  "visit:country": { label: "Country", name: countryName },
  "visit:region": { label: "Region" },
  "visit:city": { label: "City" },
  "visit:hostname": { label: "Host name" },
};

// Only the table's own entries: a dimension named "constructor" is not one.
function knownDimension(dimension) {
  return Object.hasOwn(DIMENSIONS, dimension) ? DIMENSIONS[dimension] : undefined;
}

/** What a dimension is called, ``event:props:plan`` included. */
export function dimensionLabel(dimension) {
  if (dimension.startsWith("event:props:")) return `Property ${dimension.slice(12)}`;
  return knownDimension(dimension)?.label ?? dimension;
}

// Characters that reorder the text around them without being seen: "/\u202e/gnp.exe"
// would read "/exe.png/".
const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** ``text`` with its bidirectional controls written out (``[U+202E]``), so it reads as it is. */
export function plainText(text) {
  return String(text).replace(
    BIDI_CONTROLS,
    (control) => `[U+${control.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}]`,
  );
}

/** A value of a dimension as people read it: country names, "Direct / None". */
export function dimensionValue(dimension, value) {
  const known = knownDimension(dimension);
  if (value === "(none)") return known?.none ?? "(none)";
  return plainText(known?.name ? known.name(value) : value);
}

const OPERATORS = {
  is: "is",
  is_not: "is not",
  contains: "contains",
  contains_not: "does not contain",
  matches: "matches",
  matches_not: "does not match",
};

/** ``["is", "visit:country", ["DE"]]`` -> ``Country is Germany`` */
export function describeFilter(filter) {
  const [operator, dimension, values] = filter;
  if (typeof dimension !== "string" || !Array.isArray(values)) return JSON.stringify(filter);
  const shown = (values ?? []).map((value) => dimensionValue(dimension, value)).join(" or ");
  const verb = Object.hasOwn(OPERATORS, operator) ? OPERATORS[operator] : operator;
  return `${dimensionLabel(dimension)} ${verb} ${shown}`;
}

/**
 * The dashboard: asks /api/auth/status which screen to show (setup, login, a shared
 * link's password, or the statistics), then keeps the view in step with the URL.
 *
 * ``<html data-state>`` is "loading" while answers are awaited and "ready" once every
 * part shows them; ``performance.mark("mallard:ready")`` marks the first time.
 */

import { ApiError, apiUrl, getJSON, postJSON, useCsrfToken, useShareToken } from "./api.js";
import { Behaviour } from "./behaviour.js";
import { cardMetrics, markChosen, renderCards } from "./cards.js";
import { Chart } from "./chart.js";
import { aborted, byId, errorNote, h } from "./dom.js";
import { describeFilter, METRICS } from "./format.js";
import { Panel, PANELS } from "./panels.js";
import { dayIn, PERIODS, parseState, queryParams, toSearch, withFilter } from "./state.js";

const REALTIME_SECONDS = 30;
const READY_MARK = "mallard:ready";
const SKIP_SETUP = "mallard.skip-setup"; // this tab only (sessionStorage)
const SCREENS = [
  "loading",
  "setup-screen",
  "setup-remote-screen",
  "login-screen",
  "unlock-screen",
  "error-screen",
  "dashboard-screen",
];
const ALL_PARTS = ["cards", "chart", "panels", "behaviour"];

let state = parseState(location.search);
let status = null;
let sites = [];
let view = null; // the dashboard's parts, built once
let renders = 0;
const inflight = new Map(); // part -> promise of its latest load
const controllers = new Map(); // part -> AbortController of its latest load
let realtime = { site: null, timer: 0 };

// --- screens ----------------------------------------------------------------------

function show(screen) {
  for (const id of SCREENS) byId(id).hidden = id !== screen;
  document.documentElement.dataset.screen = screen;
  document.documentElement.dataset.state = screen === "dashboard-screen" ? "loading" : "ready";
  if (screen === "dashboard-screen") return;
  const fields = [...byId(screen).querySelectorAll("input")];
  (fields.find((field) => !field.value) ?? fields[0])?.focus();
}

function fail(error) {
  byId("error-message").textContent = error.message;
  show("error-screen");
}

function route() {
  useCsrfToken(status.csrf_token);
  if (status.setup_required && status.access === "loopback") {
    if (sessionStorage.getItem(SKIP_SETUP) !== "1") return show("setup-screen");
  } else if (status.setup_required) {
    return show("setup-remote-screen");
  } else if (!status.access) {
    return show("login-screen");
  }
  return openDashboard();
}

async function start() {
  useShareToken(state.auth);
  wireForms();
  try {
    status = await getJSON("/api/auth/status");
  } catch (error) {
    if (error instanceof ApiError && error.body.password_required) return show("unlock-screen");
    return fail(error);
  }
  return route();
}

/** A form whose submit runs ``action``; its error (an API refusal) is shown in ``errorId``. */
function onSubmit(formId, errorId, action) {
  const form = byId(formId);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = byId(errorId);
    const button = form.querySelector("button[type=submit]");
    error.textContent = "";
    button.disabled = true;
    try {
      await action();
      form.reset();
    } catch (problem) {
      error.textContent = problem.message;
    } finally {
      button.disabled = false;
    }
  });
}

function loggedIn(answer) {
  status = {
    setup_required: false,
    access: "session",
    user: answer.user,
    csrf_token: answer.csrf_token,
  };
  route();
}

function wireForms() {
  onSubmit("setup-form", "setup-error", async () => {
    const password = byId("setup-password").value;
    if (password !== byId("setup-repeat").value) throw new Error("The two passwords differ.");
    loggedIn(await postJSON("/api/auth/setup", { password }));
  });
  onSubmit("login-form", "login-error", async () => {
    const username = byId("login-username").value.trim();
    loggedIn(
      await postJSON("/api/auth/login", { username, password: byId("login-password").value }),
    );
  });
  onSubmit("unlock-form", "unlock-error", async () => {
    await postJSON("/api/auth/shared-link", {
      token: state.auth,
      password: byId("unlock-password").value,
    });
    status = await getJSON("/api/auth/status");
    route();
  });
  byId("setup-skip").addEventListener("click", () => {
    sessionStorage.setItem(SKIP_SETUP, "1");
    route();
  });
  byId("logout").addEventListener("click", async () => {
    try {
      await postJSON("/api/auth/logout");
    } finally {
      location.reload();
    }
  });
}

// --- the dashboard ------------------------------------------------------------------

async function openDashboard() {
  show("dashboard-screen");
  byId("account").hidden = status.access !== "session";
  byId("account-name").textContent = status.user?.username ?? "";
  view ??= buildDashboard();
  try {
    sites = (await getJSON("/api/sites")).sites;
  } catch (error) {
    return fail(error);
  }
  if (!sites.some((site) => site.site_id === state.site)) {
    state = { ...state, site: sites[0]?.site_id ?? "" };
    history.replaceState(null, "", location.pathname + toSearch(state));
  }
  return render();
}

function buildDashboard() {
  const canExport = status.access !== "shared_link"; // shared links read stats, not exports
  const panelActions = {
    canExport,
    filter: (dimension, value) =>
      navigate({ filters: withFilter(state.filters, dimension, value) }),
    setProperty: (key) => navigate({ prop: key }, ["panels"]),
  };
  const panels = PANELS.map((spec) => new Panel(spec, panelActions));
  byId("panels").append(...panels.map((panel) => panel.element));
  byId("period").append(...PERIODS.map(([value, label]) => h("option", { value }, label)));
  wireControls();
  return {
    panels,
    chart: new Chart(byId("chart"), byId("chart-table")),
    behaviour: new Behaviour(byId("behaviour"), { navigate }),
    canExport,
  };
}

/** Apply ``changes`` to the state, push the URL, and reload ``parts`` of the view. */
function navigate(changes, parts = ALL_PARTS) {
  state = { ...state, ...changes };
  history.pushState(null, "", location.pathname + toSearch(state));
  render(parts);
}

function wireControls() {
  const period = byId("period");
  byId("site").addEventListener("change", (event) =>
    navigate({ site: event.target.value, filters: [], flow: "", prop: "" }),
  );
  period.addEventListener("change", () => {
    if (period.value !== "custom") return navigate({ period: period.value, from: "", to: "" });
    const timezone = currentSite()?.timezone ?? "UTC";
    byId("range-from").value ||= dayIn(timezone, -6);
    byId("range-to").value ||= dayIn(timezone);
    byId("custom-range").hidden = false;
    return byId("range-from").focus();
  });
  byId("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    const [from, to] = [byId("range-from").value, byId("range-to").value].sort();
    if (from && to) navigate({ period: "custom", from, to });
  });
  byId("compare").addEventListener("change", (event) =>
    navigate({ compare: event.target.value }, ["cards", "chart"]),
  );
  byId("interval").addEventListener("change", (event) =>
    navigate({ interval: event.target.value }, ["chart"]),
  );
  byId("copy-snippet").addEventListener("click", copySnippet);
  byId("check-again").addEventListener("click", () => openDashboard());
  byId("empty-domain").addEventListener("input", () => showEmpty(null));
  window.addEventListener("popstate", () => {
    state = parseState(location.search);
    render();
  });
}

function currentSite() {
  return sites.find((site) => site.site_id === state.site);
}

/** The controls and the filter bar as the state says. */
function syncControls(site) {
  const select = byId("site");
  select.replaceChildren(...sites.map((s) => h("option", { value: s.site_id }, s.site_id)));
  if (!sites.length) select.append(h("option", { value: "" }, "No sites yet"));
  select.value = state.site;
  select.disabled = sites.length < 2;
  byId("period").value = state.period;
  byId("custom-range").hidden = state.period !== "custom";
  if (state.period === "custom") {
    byId("range-from").value = state.from;
    byId("range-to").value = state.to;
  }
  byId("compare").value = state.compare;
  byId("interval").value = state.interval;
  byId("chart-title").textContent = METRICS[state.metric].label;
  const exportLink = byId("export");
  exportLink.hidden = !view.canExport || !site?.has_data;
  if (site) {
    const params = queryParams(state, site.timezone);
    exportLink.href = apiUrl("/api/stats/export", { ...params, format: "csv" });
  }
  const filters = byId("filters");
  filters.hidden = !state.filters.length;
  filters.replaceChildren(
    ...state.filters.map((filter, index) => {
      const text = describeFilter(filter);
      return h(
        "button",
        {
          type: "button",
          class: "chip",
          "aria-label": `Remove the filter ${text}`,
          onclick: () => navigate({ filters: state.filters.filter((_, i) => i !== index) }),
        },
        text,
        h("span", { "aria-hidden": "true" }, " ✕"),
      );
    }),
  );
  if (state.filters.length > 1) {
    filters.append(
      h(
        "button",
        { type: "button", class: "quiet", onclick: () => navigate({ filters: [] }) },
        "Clear all",
      ),
    );
  }
}

function render(parts = ALL_PARTS) {
  renders += 1;
  const mine = renders;
  const root = document.documentElement;
  root.dataset.renders = String(renders);
  root.dataset.state = "loading";
  const site = currentSite();
  const metrics = cardMetrics(state.filters);
  if (!metrics.includes(state.metric)) state = { ...state, metric: "visitors" };
  syncControls(site);
  const empty = !site?.has_data;
  byId("report").hidden = empty;
  byId("realtime").hidden = empty;
  byId("empty-state").hidden = !empty;
  if (empty) {
    showEmpty(site);
    stopRealtime();
    finish(mine);
    return;
  }
  const params = queryParams(state, site.timezone);
  const loaders = {
    cards: (signal) => loadCards(params, metrics, signal),
    chart: (signal) => loadChart(params, signal),
    panels: () => Promise.all(view.panels.map((panel) => panel.load(params, state.prop))),
    behaviour: () => view.behaviour.load(state, params),
  };
  for (const part of parts) {
    controllers.get(part)?.abort();
    const controller = new AbortController();
    controllers.set(part, controller);
    inflight.set(part, loaders[part](controller.signal));
  }
  if (realtime.site !== site.site_id) inflight.set("realtime", startRealtime(site.site_id));
  finish(mine);
}

/** "ready" once every part's latest load has settled, unless another render began. */
function finish(mine) {
  Promise.allSettled([...inflight.values()]).then(() => {
    if (mine !== renders) return;
    document.documentElement.dataset.state = "ready";
    if (!performance.getEntriesByName(READY_MARK).length) performance.mark(READY_MARK);
  });
}

async function loadCards(params, metrics, signal) {
  const list = byId("cards");
  try {
    const answer = await getJSON(
      "/api/stats/main",
      { ...params, metrics: metrics.join(","), compare: state.compare },
      signal,
    );
    renderCards(list, answer, state.metric, (metric) => {
      markChosen(list, metric);
      navigate({ metric }, ["chart"]);
    });
  } catch (error) {
    if (!aborted(error)) list.replaceChildren(h("li", {}, errorNote(error)));
  }
}

async function loadChart(params, signal) {
  const box = byId("chart");
  box.setAttribute("aria-busy", "true");
  try {
    const answer = await getJSON(
      "/api/stats/timeseries",
      { ...params, metrics: state.metric, interval: state.interval, compare: state.compare },
      signal,
    );
    const rows = answer.results;
    const compared = Boolean(answer.query.include.comparisons);
    view.chart.show({
      metric: state.metric,
      interval: answer.query.dimensions[0].split(":")[1] ?? "",
      labels: rows.map((row) => row.dimensions[0]),
      values: rows.map((row) => row.metrics[0]),
      previousLabels: compared ? rows.map((row) => row.comparison?.dimensions[0] ?? "") : null,
      previous: compared ? rows.map((row) => row.comparison?.metrics[0] ?? 0) : null,
    });
  } catch (error) {
    if (!aborted(error)) box.replaceChildren(errorNote(error));
  } finally {
    if (!signal.aborted) box.removeAttribute("aria-busy");
  }
}

// --- realtime -----------------------------------------------------------------------

function stopRealtime() {
  clearInterval(realtime.timer);
  realtime = { site: null, timer: 0 };
}

/** The current visitors of ``site`` now and every 30 seconds. */
function startRealtime(site) {
  stopRealtime();
  const refresh = async () => {
    try {
      const answer = await getJSON("/api/stats/realtime", { site_id: site });
      if (realtime.site !== site) return;
      byId("realtime-count").textContent = METRICS.visitors.format(answer.visitors);
      byId("realtime-label").textContent =
        answer.visitors === 1 ? "current visitor" : "current visitors";
    } catch {
      if (realtime.site === site) byId("realtime-count").textContent = "–";
    }
  };
  realtime = { site, timer: setInterval(refresh, REALTIME_SECONDS * 1000) };
  return refresh();
}

// --- a site without data --------------------------------------------------------------

function showEmpty(site) {
  const domainField = byId("empty-domain");
  byId("empty-domain-field").hidden = Boolean(site);
  const domain = site?.site_id ?? (domainField.value.trim() || "example.com");
  byId("empty-intro").textContent = site
    ? `${site.site_id} has not sent any events yet. Put this tag on every page of the site; ` +
      "visits show up here within a minute."
    : "No site has sent any events yet. Type your site's domain, then put this tag on every page.";
  byId("snippet").textContent =
    `<script defer data-domain="${domain}" src="${location.origin}/mallard.js"></script>`;
}

async function copySnippet() {
  const text = byId("snippet").textContent;
  const note = byId("copy-status");
  try {
    await navigator.clipboard.writeText(text);
    note.textContent = "Copied.";
  } catch {
    getSelection().selectAllChildren(byId("snippet"));
    note.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
}

start();

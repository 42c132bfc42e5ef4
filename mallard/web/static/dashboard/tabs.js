/**
 * A row of ARIA tabs controlling one tab panel: click, or arrow keys / Home / End
 * to move between tabs (the chosen tab is the only one in the Tab order).
 */

import { h } from "./dom.js";

let made = 0;

/**
 * ``tabs``: ``[{id, label}]``. Returns ``{list, panel, select(id)}``; ``onSelect(id)``
 * runs when the person chooses another tab.
 */
export function makeTabs(label, tabs, selected, onSelect) {
  const prefix = `tabs${++made}`;
  const panel = h("div", { role: "tabpanel", id: `${prefix}-panel`, class: "tab-panel" });
  const buttons = tabs.map((tab) =>
    h(
      "button",
      {
        type: "button",
        role: "tab",
        id: `${prefix}-${tab.id}`,
        "aria-controls": panel.id,
        "data-tab": tab.id,
        onclick: () => choose(tab.id),
      },
      tab.label,
    ),
  );
  const list = h("div", { role: "tablist", "aria-label": label, class: "tabs" }, buttons);

  function select(id) {
    for (const button of buttons) {
      const chosen = button.dataset.tab === id;
      button.setAttribute("aria-selected", String(chosen));
      button.tabIndex = chosen ? 0 : -1;
      if (chosen) panel.setAttribute("aria-labelledby", button.id);
    }
  }

  function choose(id) {
    select(id);
    onSelect(id);
  }

  list.addEventListener("keydown", (event) => {
    const current = buttons.findIndex((button) => button === document.activeElement);
    const moves = {
      ArrowLeft: current - 1,
      ArrowRight: current + 1,
      Home: 0,
      End: buttons.length - 1,
    };
    if (current < 0 || !(event.key in moves)) return;
    event.preventDefault();
    const next = buttons[(moves[event.key] + buttons.length) % buttons.length];
    next.focus();
    choose(next.dataset.tab);
  });

  select(selected);
  return { list, panel, select };
}

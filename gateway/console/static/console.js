// The console's only script: keeps the overview current from its server-sent events stream.
// Values are set with textContent, never innerHTML, so nothing the server sends is parsed as HTML.
"use strict";

function setText(element, value) {
  if (element && element.textContent !== String(value)) {
    element.textContent = String(value);
  }
}

function showOverview(data) {
  for (const queue of data.queues) {
    const row = document.querySelector(`tr[data-queue="${CSS.escape(queue.name)}"]`);
    if (!row) continue;
    setText(row.querySelector('[data-field="depth"]'), queue.depth);
    setText(row.querySelector('[data-field="oldest_age"]'), queue.oldest_age);
    setText(row.querySelector('[data-field="workers_alive"]'), queue.workers_alive);
  }
  setText(document.getElementById("scheduled"), data.scheduled);
  setText(document.getElementById("schedule-lag"), data.schedule_lag);
  setText(document.getElementById("dead-total"), data.dead_letters_total);
  const byKind = document.getElementById("dead-by-kind");
  if (byKind) {
    const items = Object.entries(data.dead_letters).map(([kind, count]) => {
      const item = document.createElement("li");
      item.textContent = `${kind}: ${count}`;
      return item;
    });
    byKind.replaceChildren(...items);
  }
  setText(document.getElementById("updated"), new Date(data.taken_at * 1000).toLocaleTimeString());
}

function follow(live) {
  const source = new EventSource(live.dataset.stream);
  source.addEventListener("open", () => setText(live, "live"));
  source.addEventListener("overview", (message) => {
    setText(live, "live");
    const data = JSON.parse(message.data);
    showOverview(data);
    // other scripts of the page (overview_chart.js) update from the same stream
    document.dispatchEvent(new CustomEvent("console:overview", { detail: data }));
  });
  source.addEventListener("unavailable", () => setText(live, "Redis unavailable"));
  source.addEventListener("signed-out", () => {
    source.close();
    window.location.assign(live.dataset.stream.replace(/\/stream\/.*$/, "/sign-in"));
  });
  // EventSource reconnects by itself after a dropped connection; say so meanwhile
  source.addEventListener("error", () => setText(live, "reconnecting…"));
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) follow(live);
});

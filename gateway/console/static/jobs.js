// The jobs page: rows follow their jobs live from the page's server-sent events stream, and new
// jobs the filters allow appear on top (first page only). textContent only, never innerHTML.
"use strict";

function jobText(element, value) {
  if (element && element.textContent !== String(value)) {
    element.textContent = String(value);
  }
}

function showStatus(cell, status) {
  let badge = cell.querySelector(".status");
  if (!badge) {
    badge = document.createElement("span");
    cell.replaceChildren(badge);
  }
  badge.className = `status status-${status}`;
  jobText(badge, status);
}

function jobRow(table, job) {
  const row = document.createElement("tr");
  row.dataset.jobId = job.id;
  const cells = {};
  for (const name of ["job-id", "job-kind", "job-status", "job-created", "job-attempts"]) {
    const cell = document.createElement("td");
    cell.className = name;
    row.appendChild(cell);
    cells[name] = cell;
  }
  cells["job-attempts"].classList.add("num");
  const link = document.createElement("a");
  link.href = table.dataset.jobBase + encodeURIComponent(job.id);
  link.textContent = job.id;
  cells["job-id"].appendChild(link);
  jobText(cells["job-kind"], job.kind);
  jobText(cells["job-created"], job.created_at || "");
  return row;
}

function showJob(table, job) {
  let row = table.querySelector(`tr[data-job-id="${CSS.escape(job.id)}"]`);
  if (!row) {
    const newest = Number(table.dataset.newest || 0);
    if (!job.match || table.dataset.insert !== "yes" || job.created_ms < newest) return;
    row = jobRow(table, job);
    table.tBodies[0].prepend(row);
    const empty = document.getElementById("no-jobs");
    if (empty) empty.hidden = true;
  }
  showStatus(row.querySelector(".job-status"), job.status);
  jobText(row.querySelector(".job-attempts"), job.attempts);
}

function followJobs(table) {
  const live = document.getElementById("jobs-live");
  const source = new EventSource(table.dataset.stream);
  source.addEventListener("ready", () => jobText(live, "live"));
  source.addEventListener("job", (message) => showJob(table, JSON.parse(message.data)));
  source.addEventListener("overflow", () => {
    document.getElementById("missed").hidden = false;
  });
  source.addEventListener("unavailable", () => jobText(live, "Redis unavailable"));
  source.addEventListener("signed-out", () => {
    source.close();
    window.location.assign(table.dataset.jobBase.replace(/\/jobs\/$/, "/sign-in"));
  });
  // EventSource reconnects by itself after a dropped connection; say so meanwhile
  source.addEventListener("error", () => jobText(live, "reconnecting…"));
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("jobs");
  if (table && table.dataset.stream) followJobs(table);
});

// The job page, live: follows /console/jobs/{id}/stream (server-sent events) until the job is
// final and puts each view into the page with textContent, never innerHTML, so nothing the job
// carries (its result, its error) is ever parsed as HTML.
"use strict";

function setJobText(id, value) {
  const element = document.getElementById(id);
  if (element && element.textContent !== String(value)) {
    element.textContent = String(value);
  }
}

// JSON as the server renders it (json.dumps(indent=2, sort_keys=True)): keys sorted at every level
function sortedJson(value) {
  const sortKeys = (_, item) =>
    item && typeof item === "object" && !Array.isArray(item)
      ? Object.fromEntries(Object.keys(item).sort().map((key) => [key, item[key]]))
      : item;
  return JSON.stringify(value, sortKeys, 2);
}

function showPart(name, value) {
  const part = document.getElementById(`${name}-part`);
  const present = value !== null && value !== undefined;
  if (part) part.hidden = !present;
  setJobText(name, present ? sortedJson(value) : "");
}

function showJob(job) {
  const status = document.getElementById("status");
  if (status && /^[a-z]+$/.test(job.status)) {
    status.className = `status status-${job.status}`;
  }
  setJobText("status", job.status);
  setJobText("attempts", job.attempts);
  const progress = document.getElementById("progress");
  if (progress) progress.value = job.progress;
  setJobText("progress-text", `${job.progress} %`);
  setJobText("started-at", job.started_at || "");
  setJobText("finished-at", job.finished_at || "");
  showPart("error", job.error);
  showPart("result", job.result);
}

// The parts an attempt's end changes (the timeline, the callback deliveries, the Replay button)
// are the server's own rendering: fetched again from this page's URL and swapped in as parsed
// nodes. DOMParser runs no script, and what it parses is the server's autoescaped HTML, as on a
// reload; the CSP still applies to anything inserted.
const RENDERED_PARTS = ["timeline", "job-actions", "job-deliveries"];
let renderedFor = "";
let refreshing = Promise.resolve();

function refreshRendered(job) {
  const marker = `${job.status}/${job.attempts}`;
  if (marker === renderedFor) return;
  renderedFor = marker;
  refreshing = refreshing
    .then(() => fetch(window.location.href, { credentials: "same-origin" }))
    .then((answer) => (answer.ok ? answer.text() : null))
    .then((html) => {
      if (html === null) return;
      const fresh = new DOMParser().parseFromString(html, "text/html");
      for (const id of RENDERED_PARTS) {
        const now = document.getElementById(id);
        const next = fresh.getElementById(id);
        if (now && next) now.replaceWith(document.importNode(next, true));
      }
    })
    .catch(() => {}); // the next change (or a reload) tries again
}

function followJob(live) {
  const source = new EventSource(live.dataset.stream);
  renderedFor = `${live.dataset.status}/${live.dataset.attempts}`;
  source.addEventListener("open", () => setJobText("job-live", "live"));
  source.addEventListener("job", (message) => {
    setJobText("job-live", "live");
    const job = JSON.parse(message.data);
    showJob(job);
    refreshRendered(job);
  });
  // final: the server closes the stream; close ours too, or EventSource would reconnect
  source.addEventListener("end", () => {
    source.close();
    setJobText("job-live", "final");
  });
  source.addEventListener("gone", () => {
    source.close();
    setJobText("job-live", "the job's record has expired");
  });
  source.addEventListener("signed-out", () => {
    source.close();
    window.location.assign(live.dataset.stream.replace(/\/jobs\/.*$/, "/sign-in"));
  });
  // Redis lost ("unavailable") or the connection dropped: EventSource reconnects by itself
  source.addEventListener("unavailable", () => setJobText("job-live", "Redis unavailable"));
  source.addEventListener("error", () => {
    const closed = source.readyState === EventSource.CLOSED;
    setJobText("job-live", closed ? "not live (reload to follow again)" : "reconnecting…");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("job-live");
  if (live) followJob(live);
});

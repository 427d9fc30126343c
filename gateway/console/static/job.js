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

function followJob(live) {
  const source = new EventSource(live.dataset.stream);
  source.addEventListener("open", () => setJobText("job-live", "live"));
  source.addEventListener("job", (message) => {
    setJobText("job-live", "live");
    showJob(JSON.parse(message.data));
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

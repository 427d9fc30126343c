// The overview's in-flight cells and last-hour chart, kept current from the overview stream
// (console.js passes each message on as a "console:overview" event). The server draws the chart
// (gateway/console/chart.py): this only copies its attributes and numbers into the page, with
// setAttribute and textContent, never innerHTML.
"use strict";

function setChartText(element, value) {
  if (element && element.textContent !== String(value)) {
    element.textContent = String(value);
  }
}

function showActivity(data) {
  for (const queue of data.queues) {
    const row = document.querySelector(`tr[data-queue="${CSS.escape(queue.name)}"]`);
    if (row) setChartText(row.querySelector('[data-field="in_flight"]'), queue.in_flight);
  }
  const chart = data.chart;
  const svg = document.getElementById("activity-chart");
  if (!chart || !svg) return;
  for (const [name, line] of Object.entries(chart.series)) {
    const polyline = svg.querySelector(`polyline[data-series="${CSS.escape(name)}"]`);
    if (polyline && polyline.getAttribute("points") !== line.points) {
      polyline.setAttribute("points", line.points);
    }
    setChartText(document.getElementById(`total-${name}`), line.total);
  }
  setChartText(document.getElementById("chart-max"), chart.max);
  setChartText(document.getElementById("chart-half"), chart.half);
  setChartText(document.getElementById("chart-start"), chart.start);
  setChartText(document.getElementById("chart-end"), chart.end);
}

document.addEventListener("console:overview", (event) => showActivity(event.detail));

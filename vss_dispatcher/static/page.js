// The status page: polls /status every second and /timeline every few
// seconds, and redraws.  Text from messages (image paths, ids) is only ever
// set as text, never as markup.
"use strict";

const STATUS_EVERY = 1000;
const TIMELINE_EVERY = 5000;
const SVG = "http://www.w3.org/2000/svg";

const page = {
  status: null,
  statusAt: 0,
  timeline: null,
  span: 3600,
  previewKey: null,
  lastCurrent: null,
};

function $(id) {
  return document.getElementById(id);
}

function text(id, value) {
  $(id).textContent = value;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "?";
  seconds = Math.max(0, Math.round(seconds));
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const rest = seconds % 60;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${rest} s`;
  return `${rest} s`;
}

function clockTime(date) {
  return date.toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hour12: false,
  });
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  return response.json();
}

function currentKey(current) {
  return current ? `${current.since} ${current.image}` : null;
}

function showHealth(status) {
  const badge = $("health");
  badge.className = "badge " + (status.healthy ? "healthy" : "unhealthy");
  badge.textContent = status.healthy ? "healthy" : "unhealthy";
  const problems = $("problems");
  problems.replaceChildren(
    ...status.problems.map((problem) => {
      const item = document.createElement("li");
      item.textContent = problem;
      return item;
    }),
  );
  problems.hidden = status.problems.length === 0;
  text("version", status.version);
  text("uptime", duration(status.uptime));
}

function showCurrent(status) {
  const current = status.current;
  const preview = $("preview");
  const noPreview = $("no-preview");
  const key = currentKey(current);

  if (!current) {
    text("current-image", "—");
    text("current-queue", "");
    text("current-state", "Waiting for jobs.");
    preview.hidden = true;
    preview.removeAttribute("src");
    noPreview.hidden = false;
    noPreview.textContent = "Nothing on screen.";
    page.previewKey = null;
    return;
  }

  text("current-image", current.image);
  const queue = $("current-queue");
  queue.textContent = current.queue;
  queue.className = "queue" + (current.priority ? " priority" : "");
  const id = current.message_id ? ` · id ${current.message_id}` : "";
  text(
    "current-state",
    (current.state === "showing" ? `on screen since ${clockTime(new Date(current.since))}` : "being sent to VSS") + id,
  );
  if (current.preview) {
    if (key !== page.previewKey) {
      page.previewKey = key;
      preview.src = "image/current?shown=" + encodeURIComponent(key);
      preview.hidden = false;
      noPreview.hidden = true;
    }
  } else {
    preview.hidden = true;
    preview.removeAttribute("src");
    page.previewKey = null;
    noPreview.hidden = false;
    noPreview.textContent = "No preview: only images inside IMAGE_ROOT are shown here.";
  }
}

function tick() {
  // Runs between polls, so the time left counts down smoothly.
  const status = page.status;
  const bar = $("progress-bar");
  if (!status || !status.current) {
    bar.style.width = "0";
    text("time-left", "");
    return;
  }
  const current = status.current;
  let remaining = current.remaining;
  if (current.state === "showing") {
    remaining = Math.max(0, remaining - (Date.now() - page.statusAt) / 1000);
  }
  const done = current.duration > 0 ? 1 - remaining / current.duration : 1;
  bar.style.width = `${Math.min(100, Math.max(0, done * 100)).toFixed(1)}%`;
  bar.className = current.priority ? "priority" : "";
  text("time-left", `${duration(remaining)} left of ${duration(current.duration)}`);
}

function showWaiting(status) {
  const list = $("waiting");
  list.replaceChildren(
    ...status.waiting.map((job) => {
      const item = document.createElement("li");
      const queue = document.createElement("span");
      queue.className = "queue" + (job.priority ? " priority" : "");
      queue.textContent = job.queue;
      const seconds = document.createElement("span");
      seconds.className = "seconds";
      seconds.textContent = ` ${duration(job.duration)}`;
      item.append(job.image + " ", queue, seconds);
      return item;
    }),
  );
  $("nothing-waiting").hidden = status.waiting.length > 0;
}

function showConnections(status) {
  const rows = Object.entries(status.queues).map(([name, count]) => {
    const row = document.createElement("tr");
    const label = document.createElement("td");
    label.textContent = name;
    const number = document.createElement("td");
    number.className = "count";
    number.textContent = count === null ? "unknown" : String(count);
    row.append(label, number);
    return row;
  });
  document.querySelector("#queues tbody").replaceChildren(...rows);

  const broker = status.broker;
  text(
    "broker",
    `${broker.state}${broker.consuming ? ", consuming" : ", not consuming"}` +
      `, ${broker.reconnects} reconnection${broker.reconnects === 1 ? "" : "s"}`,
  );
  text(
    "vss",
    status.vss.last_error === null
      ? "answering"
      : `failing (${status.vss.failures} in a row): ${status.vss.last_error}`,
  );
}

function svg(name, attributes, title) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  if (title) {
    const tooltip = document.createElementNS(SVG, "title");
    tooltip.textContent = title;
    element.append(tooltip);
  }
  return element;
}

function gridStep(span) {
  if (span <= 900) return 120;
  if (span <= 3600) return 600;
  return 1800;
}

function drawTimeline() {
  const timeline = page.timeline;
  const drawing = $("timeline");
  const axis = $("axis");
  if (!timeline) return;

  const now = Date.parse(timeline.time) / 1000;
  const start = now - page.span;
  const x = (seconds) => ((seconds - start) / page.span) * 1000;
  const shapes = [];
  const labels = [];

  const step = gridStep(page.span);
  for (let t = Math.ceil(start / step) * step; t <= now; t += step) {
    shapes.push(svg("line", { x1: x(t), x2: x(t), y1: 0, y2: 96, class: "grid" }));
    const label = document.createElement("span");
    label.style.left = `${(x(t) / 10).toFixed(2)}%`;
    label.textContent = new Date(t * 1000).toLocaleTimeString([], {
      hour: "2-digit",
      minute: "2-digit",
      hour12: false,
    });
    labels.push(label);
  }

  const events = [];
  for (const showing of timeline.showings) {
    const from = Date.parse(showing.started) / 1000;
    const to = showing.ended ? Date.parse(showing.ended) / 1000 : now;
    if (to < start) continue;
    const left = x(Math.max(from, start));
    const width = Math.max(1.5, x(to) - left);
    const title = `${showing.image} (${showing.queue}) ${clockTime(new Date(from * 1000))}` +
      ` for ${duration(to - from)}${showing.outcome ? ", " + showing.outcome : ", on screen"}`;
    shapes.push(svg("rect", { x: left, y: 22, width, height: 40, class: showing.priority ? "priority" : "normal" }, title));
    if (showing.outcome === "preempted") {
      const end = x(to);
      shapes.push(svg("polygon", { points: `${end - 6},4 ${end + 6},4 ${end},18`, class: "preempted" }, `preempted: ${title}`));
      events.push({ time: to, text: `${showing.image} was interrupted by a priority job after ${duration(to - from)}` });
    }
  }
  for (const mark of timeline.marks) {
    const time = Date.parse(mark.time) / 1000;
    if (time < start) continue;
    shapes.push(svg("rect", { x: x(time) - 1, y: 66, width: 2.5, height: 26, class: mark.kind }, mark.text));
    events.push({ time, text: mark.text });
  }
  shapes.push(svg("line", { x1: 999, x2: 999, y1: 0, y2: 96, class: "now" }));
  drawing.replaceChildren(...shapes);
  axis.replaceChildren(...labels);

  events.sort((a, b) => b.time - a.time);
  const shown = events.slice(0, 12).map((event) => {
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = clockTime(new Date(event.time * 1000));
    item.append(time, event.text);
    return item;
  });
  $("events").replaceChildren(...shown);
  $("no-events").hidden = shown.length > 0;
}

async function pollStatus() {
  try {
    const status = await getJSON("status");
    page.status = status;
    page.statusAt = Date.now();
    $("offline").hidden = true;
    showHealth(status);
    showCurrent(status);
    showWaiting(status);
    showConnections(status);
    tick();
    text("updated", clockTime(new Date()));
    const key = currentKey(status.current);
    if (key !== page.lastCurrent) {
      page.lastCurrent = key;
      pollTimeline();
    }
  } catch (error) {
    $("offline").hidden = false;
    const badge = $("health");
    badge.className = "badge unknown";
    badge.textContent = "not answering";
  }
  setTimeout(pollStatus, STATUS_EVERY);
}

async function pollTimeline() {
  try {
    page.timeline = await getJSON("timeline");
    drawTimeline();
  } catch (error) {
    // The status poll reports an unreachable dispatcher.
  }
}

function chooseSpan(event) {
  const button = event.target.closest("button");
  if (!button) return;
  page.span = Number(button.dataset.span);
  for (const other of document.querySelectorAll("#spans button")) {
    other.classList.toggle("chosen", other === button);
  }
  drawTimeline();
}

function previewFailed() {
  // The file was offered but could not be read (removed, or a link that
  // leads out of IMAGE_ROOT); the same image is not asked for again.
  $("preview").hidden = true;
  const noPreview = $("no-preview");
  noPreview.hidden = false;
  noPreview.textContent = "No preview: the image file could not be read.";
}

document.addEventListener("DOMContentLoaded", () => {
  $("spans").addEventListener("click", chooseSpan);
  $("preview").addEventListener("error", previewFailed);
  pollStatus();
  setInterval(pollTimeline, TIMELINE_EVERY);
  setInterval(tick, 250);
});

"use strict";
// The console: reads the admin API every few seconds, acts through it with the session's
// CSRF token. Data is put into the page as text only, never as HTML.

const REFRESH_MS = 3000;
const STALE_MS = 10000;
const PAGE = 20;
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const state = { lastOk: 0, failedOffset: 0, failedQueue: "", search: {}, instances: [] };

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "className") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function td(value, className) {
  return el("td", className ? { className } : {}, value === null || value === undefined ? "–" : value);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function since(iso) {
  if (!iso) return "";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  return `${age(Math.max(0, seconds))} ago`;
}

function say(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = isError ? "message error" : "message";
  box.hidden = false;
}

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") {
    options.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    window.location.replace("/console/");
    throw new Error("the session has ended");
  }
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

async function act(method, path, done, body) {
  try {
    await api(method, path, body);
    say(done, false);
  } catch (e) {
    say(`${done.split(":")[0]} failed: ${e.message}`, true);
  }
  await refresh();
}

function renderInstances(data) {
  state.instances = data.instances;
  fill("instances", data.instances.map((i) => {
    const up = el("span", { className: i.up ? "up" : "down" }, i.up ? "up" : "down");
    const stateCell = el("td", {}, up, i.draining ? el("span", { className: "draining" }, " draining") : null);
    const sessions = i.sessions ? `${i.active} (${i.sessions.total} held)` : `${i.active}`;
    const memory = i.memory ? `${i.memory.used} / ${i.memory.total} ${i.memory.unit || "MB"}` : "–";
    const error = i.last_failure ? `${i.last_failure} (${since(i.last_failure_at)})` : "none";
    const button = i.draining
      ? el("button", { className: "undrain", dataset: { index: i.index },
          onclick: () => act("POST", `/gateway/instances/${i.index}/undrain`, `undrained: ${i.url}`) }, "Undrain")
      : el("button", { className: "drain", dataset: { index: i.index },
          onclick: () => act("POST", `/gateway/instances/${i.index}/drain`, `drained: ${i.url}`) }, "Drain");
    return el("tr", { dataset: { url: i.url, up: i.up, draining: i.draining } },
      td(i.index), td(i.url, "mono"), stateCell, td(sessions, "num"), td(memory, "num"),
      td(error, i.last_error ? "error" : ""), el("td", {}, button));
  }));
  const select = document.getElementById("session-instance");
  if (select.options.length !== data.instances.length + 1) {
    select.replaceChildren(el("option", { value: "" }, "any instance"),
      ...data.instances.map((i) => el("option", { value: String(i.index) }, i.url)));
  }
}

function renderDistribution(data) {
  document.getElementById("mean").textContent = data.mean;
  document.getElementById("spread").textContent = `${(data.spread * 100).toFixed(1)} %`;
  document.getElementById("balanced").textContent = data.balanced ? "yes" : "no";
  document.getElementById("next-placement").textContent = data.next ? data.next.url : "none (all full, down or draining)";
  const most = Math.max(1, ...data.instances.map((r) => r.sessions));
  fill("distribution", data.instances.map((r) => {
    const deviation = r.against_mean;
    const bar = el("span", { className: Math.abs(deviation) >= 0.2 ? "bar over" : "bar" });
    bar.style.width = `${Math.round((r.sessions / most) * 120)}px`;
    const sign = deviation > 0 ? "+" : "";
    return el("tr", { dataset: { url: r.url } }, td(r.url, "mono"), td(r.sessions, "num"),
      td(r.pinned, "num"), td(`${sign}${(deviation * 100).toFixed(1)} %`, "num"), el("td", {}, bar));
  }));
}

function renderSessions(data) {
  fill("sessions", data.sessions.map((s) => el("tr", { dataset: { session: s.session_id } },
    td(s.session_id, "mono"), td(s.workspace_id), td(s.status), td(s.instance, "mono"), td(s.pinned, "mono"))));
  const missing = data.instances_unavailable.length ? ` · not answering: ${data.instances_unavailable.join(", ")}` : "";
  document.getElementById("sessions-total").textContent =
    `${data.sessions.length} shown of ${data.total}${missing}`;
}

function renderQueues(data) {
  const minutes = data.throughput_minutes;
  fill("queues", data.queues.map((q) => el("tr", { dataset: { queue: q.queue } },
    td(q.queue, "mono"), td(q.waiting, "num"), td(q.delayed, "num"), td(q.reserved, "num"),
    td(q.waiting ? age(q.oldest_age) : "–", "num"),
    td(`${q.done} (${(q.done / minutes).toFixed(1)}/min)`, "num"), td(q.failed, "num"), td(q.retried, "num"))));
  const failed = data.failed === null ? "unknown (the database does not answer)" : data.failed;
  const w = data.webhooks;
  document.getElementById("queues-summary").textContent =
    `jobs finished in the last ${minutes} min · failed jobs: ${failed}` +
    (data.failed_waiting ? ` (${data.failed_waiting} waiting for the database)` : "") +
    ` · webhooks: ${w.waiting} waiting, oldest ${age(w.oldest_age)}, ${w.dead} dead-lettered`;
}

async function showFailed(id) {
  const detail = document.getElementById("failed-detail");
  try {
    const answer = await api("GET", `/gateway/failed/${encodeURIComponent(id)}`);
    const { exception, payload, ...rest } = answer.job;
    let pretty = payload;
    try { pretty = JSON.stringify(JSON.parse(payload), null, 2); } catch (e) { /* shown as stored */ }
    detail.textContent = `${JSON.stringify(rest, null, 2)}\n\nexception:\n${exception}\n\npayload:\n${pretty}`;
  } catch (e) {
    detail.textContent = `could not show ${id}: ${e.message}`;
  }
  detail.hidden = false;
}

function renderFailed(data) {
  const last = Math.min(data.offset + data.jobs.length, data.total);
  if (!data.jobs.length && data.offset > 0) {  // past the end (jobs went meanwhile): back
    state.failedOffset = Math.max(0, Math.floor((data.total - 1) / PAGE) * PAGE);
  }
  document.getElementById("failed-page").textContent =
    data.total ? `${data.offset + 1}–${last} of ${data.total}` : "none";
  document.getElementById("failed-prev").disabled = data.offset === 0;
  document.getElementById("failed-next").disabled = data.offset + PAGE >= data.total;
  fill("failed", data.jobs.map((j) => {
    const path = `/gateway/failed/${encodeURIComponent(j.id)}`;
    return el("tr", { dataset: { id: j.id } }, td(j.id, "mono"), td(j.failed_at), td(j.queue, "mono"),
      td(j.job), td(j.exception + (j.waiting ? " (waiting for the database)" : "")),
      el("td", {},
        el("button", { className: "show", onclick: () => showFailed(j.id) }, "Show"), " ",
        el("button", { className: "retry", onclick: () => act("POST", `${path}/retry`, `retried: ${j.id}`) }, "Retry"), " ",
        el("button", { className: "forget", onclick: () => act("DELETE", path, `forgotten: ${j.id}`) }, "Forget")));
  }));
}

function renderLetters(data) {
  fill("letters", data.dead_letters.map((x) => {
    const path = `/gateway/dead-letters/${encodeURIComponent(x.id)}`;
    return el("tr", { dataset: { id: x.id } }, td(x.id, "mono"), td(x.event), td(x.lane, "mono"),
      td(since(x.dead_at)), td(x.attempts, "num"), td(`${x.status ? x.status + " " : ""}${x.error}`),
      el("td", {},
        el("button", { className: "retry", onclick: () => act("POST", `${path}/retry`, `sent again: ${x.id}`) }, "Retry"), " ",
        el("button", { className: "drop", onclick: () => act("DELETE", path, `dropped: ${x.id}`) }, "Drop")));
  }));
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== undefined) q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}

let refreshing = null;

async function refreshAll() {
  const failedQuery = query({ queue: state.failedQueue, limit: PAGE, offset: state.failedOffset });
  const calls = [
    ["/gateway/instances", renderInstances],
    ["/gateway/distribution", renderDistribution],
    [`/gateway/sessions${query({ ...state.search, limit: 100 })}`, renderSessions],
    ["/gateway/queues", renderQueues],
    [`/gateway/failed${failedQuery}`, renderFailed],
    ["/gateway/dead-letters", renderLetters],
  ];
  const results = await Promise.allSettled(calls.map(([path]) => api("GET", path)));
  let failures = 0;
  results.forEach((result, n) => {
    if (result.status === "fulfilled") calls[n][1](result.value);
    else failures += 1;
  });
  if (failures === 0) state.lastOk = Date.now();
  showFreshness(failures ? results.find((r) => r.status === "rejected").reason.message : "");
}

function refresh() {
  if (!refreshing) refreshing = refreshAll().finally(() => { refreshing = null; });
  return refreshing;
}

function showFreshness(problem) {
  const status = document.getElementById("status");
  const ageMs = Date.now() - state.lastOk;
  const stale = !state.lastOk || ageMs > STALE_MS;
  status.classList.toggle("stale", stale);
  status.dataset.stale = stale;
  if (!state.lastOk) status.textContent = `no data yet${problem ? `: ${problem}` : ""}`;
  else status.textContent = `${stale ? "STALE: " : ""}updated ${age(ageMs / 1000)} ago${problem ? ` (${problem})` : ""}`;
}

document.getElementById("session-search").addEventListener("submit", (event) => {
  event.preventDefault();
  state.search = {
    q: document.getElementById("session-q").value.trim(),
    workspace: document.getElementById("session-workspace").value.trim(),
    instance: document.getElementById("session-instance").value,
    status: document.getElementById("session-status").value.trim(),
  };
  refresh();
});

document.getElementById("failed-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  state.failedQueue = document.getElementById("failed-queue").value.trim();
  state.failedOffset = 0;
  refresh();
});
document.getElementById("failed-prev").addEventListener("click", () => {
  state.failedOffset = Math.max(0, state.failedOffset - PAGE);
  refresh();
});
document.getElementById("failed-next").addEventListener("click", () => {
  state.failedOffset += PAGE;
  refresh();
});

document.getElementById("logout").addEventListener("click", async () => {
  await fetch("/console/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
  window.location.replace("/console/");
});

refresh();
setInterval(refresh, REFRESH_MS);
setInterval(() => showFreshness(""), 1000);

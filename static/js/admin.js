// The teacher's dashboard: polls /admin/api/state, draws figures and charts, sends the teacher's actions.
import { drawLines } from "./charts.js";

const REFRESH_MS = 2000;
const figure = (name) => document.querySelector(`[data-figure="${name}"]`);
let policyShown = false;

async function refresh() {
  try {
    const response = await fetch("/admin/api/state", { headers: { Accept: "application/json" } });
    if (response.status === 401) { window.location.assign("/admin/login"); return; }
    render(await response.json());
    document.body.dataset.loaded = "true";
  } catch (error) {
    figure("model").textContent = `cannot reach the server (${error.message})`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value)} ms`;
}

function render(state) {
  const { summary, queue, model, memory } = state;
  figure("connected").textContent = summary.connected;
  figure("requests_per_minute").textContent = summary.requests_per_minute.toFixed(0);
  figure("queue").textContent = `${queue.running} · ${queue.waiting} / ${queue.limit}`;
  figure("first_delta").textContent = `${ms(summary.first_delta_ms.p50)} · ${ms(summary.first_delta_ms.p95)}`;
  figure("tokens_per_second").textContent = summary.tokens_per_second;
  figure("busy").textContent = summary.busy_last_minute;
  figure("model").textContent = model.ready
    ? `${model.model} · ${model.device} · ${model.dtype}` : `${model.model || "model"} loading…`;
  figure("memory").textContent = `${memory.rss_mb} MB` + (memory.gpu_mb !== undefined ? ` · GPU ${memory.gpu_mb} MB` : "");

  const h = state.history;
  chart("chart-requests", "Requests per minute", { "": h.map((p) => p.requests_per_minute) });
  chart("chart-wait", "Time to first words", { "p50 ms": h.map((p) => p.first_delta_p50),
    "p95 ms": h.map((p) => p.first_delta_p95) });
  chart("chart-tokens", "Tokens per second", { "": h.map((p) => p.tokens_per_second) });
  chart("chart-load", "Load", { "students connected": h.map((p) => p.connected), queue: h.map((p) => p.queue) });

  renderStudents(state.students);
  renderDocuments(state.documents);
  if (!policyShown) { showPolicy(state.policy); policyShown = true; }
}

// Draw a chart; its name (role=img) says the latest figures, for those who do not see the lines.
function chart(id, title, series) {
  const canvas = document.getElementById(id);
  drawLines(canvas, Object.values(series));
  const latest = Object.entries(series).map(([name, points]) => {
    const value = points.filter((v) => v !== null && v !== undefined).at(-1);
    return `${value === undefined ? "none yet" : Math.round(value * 10) / 10} ${name}`.trim();
  });
  canvas.setAttribute("aria-label", `${title}, last ten minutes; latest: ${latest.join(", ")}`);
}

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
  return td;
}

function ago(seconds) {
  if (!seconds) return "–";
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  return s < 60 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}

function renderStudents(students) {
  const body = document.getElementById("student-rows");
  body.replaceChildren();
  if (!students.length) { cell(body.insertRow(), "No one yet.").colSpan = 7; return; }
  for (const student of students) {
    const row = body.insertRow();
    row.dataset.student = student.id;
    cell(row, student.name);
    cell(row, student.left ? `left ${ago(student.left)}` : student.connections);
    cell(row, student.requests);
    cell(row, student.tokens);
    cell(row, student.refused);
    cell(row, ago(student.last_request));
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Disconnect";
    button.setAttribute("aria-label", `Disconnect ${student.name}`);
    button.addEventListener("click", () => post(`/admin/api/students/${encodeURIComponent(student.id)}/disconnect`, {}));
    row.insertCell().append(button);
  }
}

function renderDocuments(documents) {
  const list = document.getElementById("document-list");
  list.replaceChildren();
  if (!documents.length) { list.append(Object.assign(document.createElement("li"), { textContent: "None yet." })); return; }
  for (const doc of documents) {
    const item = document.createElement("li");
    const link = Object.assign(document.createElement("a"), { href: doc.url, textContent: doc.author });
    item.append(link, ` · ${doc.chars} characters · ${new Date(doc.created * 1000).toLocaleTimeString()}`);
    list.append(item);
  }
}

// ---- class settings ---------------------------------------------------------------------

const form = document.getElementById("policy-form");
// By name through a selector: form.elements.length is the number of fields, not the "length" input.
const field = (name) => form.querySelector(`[name="${name}"]`);

function showPolicy(policy) {
  for (const row of form.querySelectorAll(".policy-row")) {
    const name = row.dataset.setting;
    const value = policy.defaults[name];
    field(name).value = value === undefined ? "" : value;
    field(`lock-${name}`).checked = policy.locked.includes(name);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const defaults = {};
  const locked = [];
  for (const row of form.querySelectorAll(".policy-row")) {
    const name = row.dataset.setting;
    const input = field(name);
    if (input.value !== "") defaults[name] = input.type === "number" ? Number(input.value) : input.value;
    if (field(`lock-${name}`).checked) locked.push(name);
  }
  const answer = await post("/admin/api/policy", { defaults, locked });
  form.querySelector(".policy-message").textContent = answer.error ? answer.error : "Saved and sent to every student.";
});

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return response.json();
}

refresh();

// Wires the page: editor keys -> requests -> streamed options in the popup -> accepted text.
import { $, SELECTORS } from "./selectors.js";
import { Connection } from "./connection.js";
import { DistributionPanel } from "./distribution.js";
import { Editor } from "./editor.js";
import { exportDocument, importDocument } from "./files.js";
import { Lens } from "./lens.js";
import { Column, OptionSet } from "./optionsets.js";
import { SuggestionsPopup } from "./popup.js";
import { Provenance } from "./provenance.js";
import { Publisher } from "./publish.js";
import { SettingsPanel } from "./settings.js";
import { StatusBar } from "./status.js";
import { storage } from "./storage.js";

const SAVE_DELAY_MS = 300;
const PRIME_DELAY_MS = 300; // a pause in typing this long lets the server read the text before Tab
const MODIFIER_KEYS = new Set(["Shift", "Control", "Alt", "Meta", "CapsLock", "AltGraph"]);

const editor = new Editor($("editor"));
const statusBar = new StatusBar({
  root: $("status"), connection: $("statusConnection"), model: $("statusModel"), device: $("statusDevice"),
  loading: $("statusLoading"), timing: $("statusTiming"), perplexity: $("statusPerplexity"), warning: $("statusWarning"), message: $("statusMessage"),
});
const settings = new SettingsPanel({
  panel: $("settingsPanel"), inputs: document.querySelectorAll("#settings [name]"),
  toggle: $("settingsToggle"), reset: $("settingsReset"),
  presets: document.querySelectorAll(SELECTORS.presets), presetNote: $("presetNote"), compare: $("compareModel"),
  onChange: () => { // the chart follows every slider; the perplexity follows the chosen model
    requestDistribution();
    if (connection?.socket.connected) requestScore();
  },
});
const lens = new Lens(
  { lens: $("lens"), title: $("lensTitle"), legend: $("lensLegend"), text: $("lensText"), tip: $("lensTip"),
    close: $("lensClose") },
  { onClose: () => setView("write") },
);
const distribution = new DistributionPanel(
  { panel: $("distribution"), toggle: $("distributionToggle"), bars: $("distributionBars"),
    summary: $("distributionSummary") },
  { onOpen: () => requestDistribution() },
);
const popup = new SuggestionsPopup(
  { popup: $("popup"), options: $("popupOptions"), setLabel: $("popupSetLabel"),
    prev: $("popupPrev"), next: $("popupNext"), error: $("popupError") },
  {
    onPick: (i) => accept(i),
    onPrev: () => showSet(current - 1),
    onNext: () => showSet(current + 1),
    onSelect: (id) => editor.textarea.setAttribute("aria-activedescendant", id),
  },
);

// Option sets offered at the current caret position, oldest first (see optionsets.js).
let sets = [];
let current = -1;
let active = null; // the set whose requests are in flight
let primeTimer = null;
let lastPrimed = null; // the text the server last read ahead of Tab
let lastScored = null; // the document whose perplexity the status bar shows
let scoring = null; // the `score` request in flight: { id, text, offset }
let scored = null; // its answer: { text, offset, result }
let asked = null; // the `distribution` request whose answer the chart waits for: { id, text, settings }
let view = "write";
// the server's first model: what a request without one gets
let defaultModel = document.querySelector("#setting-model").dataset.default || $("statusModel").textContent;
let modelSizes = {}; // model name -> parameters
const saved = storage.loadDocument();
const provenance = new Provenance(saved.text, saved.spans ?? []);

const connection = new Connection({
  connect: () => {
    statusBar.connection("connected", "connected");
    lastPrimed = lastScored = asked = null; // a new connection (or a restarted server) has read nothing yet
    schedulePrime();
    requestDistribution();
  },
  disconnect: (reason) => {
    // Only the server's own disconnect (the teacher signing a student out) is final; the rest retry.
    if (reason === "io server disconnect") statusBar.connection("disconnected", "signed out: reload the page to join again");
    else statusBar.connection("disconnected", "reconnecting…");
    if (active) stopStreaming(active);
    active = null;
  },
  connect_error: (error) => {
    if (error.data?.code === "join") window.location.assign("/join"); // no (or an expired) class session
    else statusBar.connection("disconnected", "cannot reach the server, retrying…");
  },
  status: (status) => {
    statusBar.model(status);
    if (status.model) defaultModel = status.model;
    modelSizes = Object.fromEntries((status.models ?? []).map((m) => [m.model, m.parameters]));
    settings.showModels(status.models ?? []);
  },
  policy: (policy) => settings.applyPolicy(policy),
  score: onScore,
  distribution: (answer) => {
    if (asked && answer.id === asked.id) distribution.render(answer, asked.settings);
  },
  delta: onDelta,
  done: onDone,
  error: onError,
});

// ---- requests ------------------------------------------------------------------------

// The models a Tab asks: the chosen one, and in compare mode a second one beside it.
function modelsToAsk(values) {
  const chosen = values.model || defaultModel;
  const other = $("compareModel").value;
  return other && other !== chosen ? [chosen, other] : [chosen];
}

function requestSuggestions() {
  cancelActive();
  const values = settings.values();
  const columns = modelsToAsk(values).map((model) => {
    const id = connection.nextId();
    connection.send("suggest", { id, text: editor.textBeforeCaret(), settings: { ...values, model } });
    return new Column(id, model, { ...values, model }, values.n);
  });
  active = new OptionSet(columns);
  sets.push(active);
  current = sets.length - 1;
  openPopup();
}

function extendSet() {
  const set = sets[current];
  // an extend keeps the set's size, decoding mode, model and random stream
  const { n, seed, mode, model, ...overrides } = settings.values();
  for (const column of set.columns) {
    const parent = column.requestId;
    const id = connection.nextId();
    column.continueWith(id);
    connection.send("extend", { id, parent, settings: { ...overrides, model: column.model } });
  }
  active = set;
  popup.hideError();
  renderCurrent();
}

function cancelActive() {
  if (!active) return;
  for (const column of active.columns) {
    if (column.streaming) connection.send("cancel", { id: column.requestId });
  }
  stopStreaming(active);
  active = null;
}

function stopStreaming(set) {
  for (const column of set.columns) column.streaming = false;
  if (sets[current] === set) renderCurrent();
}

function renderCurrent() {
  popup.render(sets[current], current, sets.length, modelSizes);
}

// ---- server events ---------------------------------------------------------------------

function findColumn(id) {
  for (const set of sets) {
    const column = set.columnOf(id);
    if (column) return { set, column };
  }
  return {};
}

function onDelta({ id, deltas }) {
  const { set, column } = findColumn(id);
  if (!set) return;
  const waiting = column.firstMs === null;
  column.addDeltas(deltas);
  if (waiting && column.firstMs !== null && column === set.columns[0]) statusBar.timing(column.firstMs);
  if (sets[current] === set) popup.updateColumn(set, column, modelSizes);
}

function onDone(payload) {
  const { set, column } = findColumn(payload.id);
  if (!set) return;
  column.finishWith(payload.id, payload);
  if (active === set && !set.streaming) active = null;
  if (sets[current] === set) renderCurrent();
}

const ERROR_PREFIXES = { busy: "Server busy", rate_limited: "Slow down", signed_out: "Signed out" };

function onError({ id, code, message }) {
  const text = ERROR_PREFIXES[code] ? `${ERROR_PREFIXES[code]}: ${message}` : message;
  statusBar.message(text);
  const { set, column } = findColumn(id);
  if (!set || column.requestId !== id || !column.streaming) return;
  column.streaming = false;
  if (active === set && !set.streaming) active = null;
  if (sets[current] === set) {
    renderCurrent();
    if (popup.isOpen) popup.showError(text);
  }
}

// ---- the popup -----------------------------------------------------------------------

function openPopup() {
  renderCurrent();
  const wrap = $("editorWrap");
  popup.open(editor.caretPosition(), wrap.clientWidth, wrap.clientHeight);
  editor.textarea.setAttribute("aria-expanded", "true");
}

function closePopup() {
  cancelActive();
  popup.close();
  sets = [];
  current = -1;
  editor.textarea.setAttribute("aria-expanded", "false");
  editor.textarea.removeAttribute("aria-activedescendant");
}

function showSet(index) {
  if (index < 0 || index >= sets.length) return;
  current = index;
  renderCurrent();
}

function accept(i) {
  const chosen = sets[current]?.option(i);
  closePopup();
  if (chosen?.text) {
    const start = editor.textarea.selectionStart;
    editor.insertAtCaret(chosen.text); // its input event has moved the spans; now this text is the model's
    provenance.markModel(start, start + chosen.text.length, chosen.column.model);
  }
  saveDocument();
}

// ---- keys and edits --------------------------------------------------------------------

editor.textarea.addEventListener("keydown", (event) => {
  if (event.key === "Tab" && !event.ctrlKey && !event.altKey && !event.metaKey) {
    event.preventDefault(); // Tab writes with the model instead of leaving the editor
    if (event.shiftKey || !popup.isOpen) {
      if (!popup.isOpen) sets = [];
      requestSuggestions();
    } else {
      extendSet();
    }
    return;
  }
  if (!popup.isOpen || MODIFIER_KEYS.has(event.key)) return;
  const actions = {
    ArrowDown: () => popup.move(1),
    ArrowUp: () => popup.move(-1),
    Enter: () => accept(popup.selectedIndex),
    Escape: () => closePopup(),
    PageUp: () => showSet(current - 1),
    PageDown: () => showSet(current + 1),
  };
  if (actions[event.key]) {
    event.preventDefault();
    actions[event.key]();
  } else {
    closePopup(); // typing moves on: the options no longer fit the text
  }
});

editor.textarea.addEventListener("mousedown", () => { if (popup.isOpen) closePopup(); });
editor.textarea.addEventListener("scroll", () => { if (popup.isOpen) closePopup(); });
window.addEventListener("resize", () => { if (popup.isOpen) closePopup(); });

let saveTimer = null;
function saveDocument() {
  clearTimeout(saveTimer);
  provenance.update(editor.text);
  storage.saveDocument(editor.text, editor.caret, provenance.spans);
}
editor.textarea.addEventListener("input", () => {
  provenance.update(editor.text);
  if (popup.isOpen) closePopup(); // pasted or composed text: the options no longer fit
  clearTimeout(saveTimer);
  saveTimer = setTimeout(saveDocument, SAVE_DELAY_MS);
  schedulePrime();
});

// Priming: when the writer pauses, the server reads the text before the caret, so that
// Tab only has to pick the first words; and it scores the whole document, for the
// perplexity in the status bar. Nothing is sent for text it already has.
function schedulePrime() {
  clearTimeout(primeTimer);
  primeTimer = setTimeout(() => {
    if (popup.isOpen || !connection.socket.connected) return;
    const text = editor.textBeforeCaret();
    if (text !== lastPrimed && text.trim()) {
      lastPrimed = text;
      connection.send("prime", { id: connection.nextId(), text, settings: settings.values() });
    }
    requestScore();
    requestDistribution();
  }, PRIME_DELAY_MS);
}

// ---- the learning lens: scores, the surprise view, the next-token chart -------------------

// The document's perplexity under the chosen model (asked again when the text or the model changes).
function requestScore() {
  const whole = editor.tail(editor.text);
  const model = settings.values().model || defaultModel;
  const key = JSON.stringify([whole, model]);
  if (key === lastScored) return;
  lastScored = key;
  if (!whole.trim()) {
    statusBar.perplexity(null);
    return;
  }
  scoring = { id: connection.nextId(), text: whole, offset: editor.text.length - whole.length, model };
  connection.send("score", { id: scoring.id, text: whole, model });
}

function onScore(result) {
  statusBar.perplexity(result.perplexity, result.tokens.length);
  if (!scoring || result.id !== scoring.id) return;
  scored = { ...scoring, result };
  if (view === "surprise") showSurprise();
}

function showSurprise() {
  const whole = editor.tail(editor.text);
  const model = settings.values().model || defaultModel;
  if (scored && scored.text === whole && scored.offset === editor.text.length - whole.length && scored.model === model) {
    lens.showSurprise(editor.text, scored.offset, scored.result);
  } else {
    lens.waiting(editor.text);
    requestScore();
  }
}

// The chart follows the caret and the settings; the server reads each text once.
function requestDistribution() {
  if (!distribution.isOpen || !connection.socket.connected) return;
  const text = editor.textBeforeCaret();
  const values = settings.values();
  const key = JSON.stringify([text, values]);
  if (asked && asked.key === key) return;
  if (!asked || asked.text !== text) distribution.waiting(); // a settings change alone is answered at once
  asked = { id: connection.nextId(), key, text, settings: values };
  connection.send("distribution", { id: asked.id, text, settings: values });
}

function setView(next) {
  view = next;
  for (const button of document.querySelectorAll(SELECTORS.viewButtons)) {
    button.setAttribute("aria-pressed", String(button.dataset.view === next));
  }
  if (next === "write") {
    lens.close();
    editor.focus();
    return;
  }
  closePopup();
  if (next === "surprise") showSurprise();
  else lens.showProvenance(provenance.runs(), provenance.modelCharacters(), editor.text.length);
  $("lensText").focus();
}
for (const button of document.querySelectorAll(SELECTORS.viewButtons)) {
  button.addEventListener("click", () => setView(button.dataset.view));
}
document.addEventListener("selectionchange", () => {
  if (distribution.isOpen && document.activeElement === editor.textarea) schedulePrime();
});

// ---- examples, export and import ----------------------------------------------------------

// Replace the whole document as one undoable edit (Ctrl+Z brings the old text back).
function replaceDocument(text) {
  setView("write");
  editor.textarea.select();
  editor.insertAtCaret(text);
  provenance.update(editor.text);
  saveDocument();
}

for (const button of document.querySelectorAll(SELECTORS.examples)) {
  button.addEventListener("click", () => {
    replaceDocument(button.dataset.text);
    settings.apply(JSON.parse(button.dataset.settings));
    $("examplesMenu").open = false;
    statusBar.note(`Example loaded. ${button.dataset.note}`);
  });
}

for (const button of document.querySelectorAll(SELECTORS.exportButtons)) {
  button.addEventListener("click", () => {
    const kind = button.dataset.export;
    provenance.update(editor.text);
    const { body, type } = exportDocument(
      { text: editor.text, spans: provenance.spans, model: settings.values().model || defaultModel, settings: settings.values() }, kind);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([body], { type }));
    link.download = `tabwrite-document.${kind}`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    $("fileMenu").open = false;
  });
}

$("importFile").addEventListener("change", async (event) => {
  const [file] = event.target.files;
  event.target.value = ""; // the same file can be chosen again
  $("fileMenu").open = false;
  if (!file) return;
  try {
    const doc = importDocument(file.name, await file.text());
    replaceDocument(doc.text);
    provenance.spans = [];
    for (const span of doc.spans) provenance.markModel(span.start, span.end, span.model);
    saveDocument();
    statusBar.note(`Imported ${file.name}: ${doc.text.length} characters, ${provenance.modelCharacters()} written by a model.`);
  } catch (error) {
    statusBar.message(`Import failed: ${error.message}`); // the document is left as it was
  }
});
window.addEventListener("pagehide", saveDocument);

new Publisher({ button: $("publish"), result: $("publishResult") }, {
  text: () => editor.text, settings: () => settings.values(), onMessage: (text) => statusBar.message(text),
});

editor.restore(saved.text, saved.caret);
editor.focus();

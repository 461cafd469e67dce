// Wires the page: editor keys -> requests -> streamed options in the popup -> accepted text.
import { $, SELECTORS } from "./selectors.js";
import { Connection } from "./connection.js";
import { DistributionPanel } from "./distribution.js";
import { Editor } from "./editor.js";
import { wireDocumentMenus } from "./documentmenus.js";
import { LearningLens } from "./learning.js";
import { Lens } from "./lens.js";
import { Popover } from "./menus.js";
import { Column, OptionSet, nextWord } from "./optionsets.js";
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
  announcer: $("announcer"), action: $("statusAction"),
});
const settings = new SettingsPanel({
  panel: $("settingsPanel"), inputs: document.querySelectorAll("#settings [name]"),
  toggle: $("settingsToggle"), reset: $("settingsReset"), close: $("settingsClose"),
  presets: document.querySelectorAll(SELECTORS.presets), presetNote: $("presetNote"), compare: $("compareModel"),
  onChange: () => { // the chart follows every slider; the perplexity follows the chosen model
    learning?.requestDistribution();
    if (connection?.socket.connected) learning?.requestScore();
  },
});
const lens = new Lens(
  { lens: $("lens"), title: $("lensTitle"), legend: $("lensLegend"), text: $("lensText"), tip: $("lensTip"),
    close: $("lensClose"), note: $("lensNote") },
  { onClose: () => learning.setView("write") },
);
const distribution = new DistributionPanel(
  { panel: $("distribution"), toggle: $("distributionToggle"), bars: $("distributionBars"),
    summary: $("distributionSummary") },
  { onOpen: () => learning.requestDistribution() },
);
const popup = new SuggestionsPopup(
  { popup: $("popup"), options: $("popupOptions"), setLabel: $("popupSetLabel"),
    prev: $("popupPrev"), next: $("popupNext"), error: $("popupError") },
  {
    onPick: (i) => accept(i),
    onPrev: () => showSet(current - 1),
    onNext: () => showSet(current + 1),
    onSelect: (id) => {
      editor.textarea.setAttribute("aria-activedescendant", id);
      showGhost();
    },
  },
);

// Option sets offered at the current caret position, oldest first (see optionsets.js).
let sets = [];
let current = -1;
let active = null; // the set whose requests are in flight
let primeTimer = null;
let lastPrimed = null; // the text the server last read ahead of Tab
let learning = null; // the learning lens (below), once the connection exists
// the server's first model: what a request without one gets
let defaultModel = document.querySelector("#setting-model").dataset.default || $("statusModel").textContent;
let modelSizes = {}; // model name -> parameters
const currentModel = () => settings.values().model || defaultModel;
const saved = storage.loadDocument();
const provenance = new Provenance(saved.text, saved.spans ?? []);

const connection = new Connection({
  connect: () => {
    statusBar.connection("connected", "connected");
    lastPrimed = null; // a new connection (or a restarted server) has read nothing yet
    learning.forget();
    schedulePrime();
    learning.requestDistribution();
  },
  disconnect: (reason) => {
    // Only the server's own disconnect (the teacher signing a student out) is final; the rest retry.
    if (reason === "io server disconnect") statusBar.connection("disconnected", "signed out: reload the page to join again");
    else statusBar.connection("disconnected", "reconnecting…");
    // the server forgets a closed connection's requests: options still being written will never finish
    const lost = active?.streaming ? active : null;
    if (active) stopStreaming(active);
    active = null;
    if (lost) {
      statusBar.message(LOST_TEXT);
      if (sets[current] === lost && popup.isOpen) popup.showError(LOST_TEXT);
    }
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
  score: (result) => learning.onScore(result),
  distribution: (answer) => learning.onDistribution(answer),
  delta: onDelta,
  queued: onQueued,
  done: onDone,
  error: onError,
});

// ---- requests ------------------------------------------------------------------------

// The models a Tab asks: the chosen one, and in compare mode a second one beside it.
function modelsToAsk() {
  const chosen = currentModel();
  const other = $("compareModel").value;
  return other && other !== chosen ? [chosen, other] : [chosen];
}

const EMPTY_HINT = "Nothing before the caret yet: write a few words (or pick one of the Examples), "
  + "and the model goes on from there.";

function requestSuggestions() {
  if (!editor.textBeforeCaret().trim()) { // from nothing a model writes anything at all
    statusBar.note(EMPTY_HINT);
    statusBar.announce(EMPTY_HINT);
    return;
  }
  if (statusBar.el.message.textContent === EMPTY_HINT) statusBar.message(""); // there is text now
  cancelActive();
  const values = settings.values();
  const columns = modelsToAsk().map((model) => {
    const id = connection.nextId();
    connection.send("suggest", { id, text: editor.textBeforeCaret(), settings: { ...values, model } });
    return new Column(id, model, { ...values, model }, values.n);
  });
  active = new OptionSet(columns);
  sets.push(active);
  current = sets.length - 1;
  openPopup();
}

// Tab again: every column of the shown set writes on. A column whose request the server may not have
// started yet (no words, no `done`) would be refused as an unknown set: it waits for its first words.
function extendSet() {
  const set = sets[current];
  for (const column of set.columns) {
    if (column.waitingForServer) column.longerWanted += 1;
    else extendColumn(column);
  }
  active = set;
  popup.hideError();
  renderCurrent();
}

function extendColumn(column) {
  // an extend keeps the set's size, decoding mode, model and random stream
  const { n, seed, mode, model, ...overrides } = settings.values();
  const parent = column.requestId;
  const id = connection.nextId();
  column.continueWith(id);
  connection.send("extend", { id, parent, settings: { ...overrides, model: column.model } });
}

// A Tab again that waited for this column's set: the set exists now.
function extendIfWanted(column) {
  if (!column.longerWanted || column.waitingForServer) return;
  column.longerWanted -= 1;
  extendColumn(column);
}

// While a request waits for its first words, its options count the seconds.
const WAITING_TICK_MS = 1000;
setInterval(() => {
  const set = sets[current];
  if (!set || !popup.isOpen) return;
  for (const column of set.columns) if (column.waitingForServer) popup.updateColumn(set, column, modelSizes);
}, WAITING_TICK_MS);

function cancelActive() {
  if (!active) return;
  for (const column of active.columns) {
    if (column.streaming) connection.send("cancel", { id: column.requestId });
  }
  stopStreaming(active);
  active = null;
}

function stopStreaming(set) {
  for (const column of set.columns) {
    column.streaming = false;
    column.longerWanted = 0;
  }
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
  if (column.requestId === id) extendIfWanted(column);
  if (sets[current] === set) {
    popup.updateColumn(set, column, modelSizes);
    showGhost();
  }
}

// A busy server says where a waiting request stands in line; its options show it until the first words.
function onQueued({ id, position }) {
  const { set, column } = findColumn(id);
  if (!set || column.requestId !== id || !column.waitingForServer) return;
  column.ahead = position - 1;
  if (sets[current] === set) popup.updateColumn(set, column, modelSizes);
}

function onDone(payload) {
  const { set, column } = findColumn(payload.id);
  if (!set) return;
  column.finishWith(payload.id, payload);
  if (column.requestId === payload.id) extendIfWanted(column);
  if (active === set && !set.streaming) {
    active = null;
    if (sets[current] === set) announceSet(set);
  }
  if (sets[current] === set) renderCurrent();
}

// A screen reader hears one sentence when a set is ready, never the words as they stream in.
function announceSet(set) {
  const count = set.columns.reduce((sum, column) => sum + column.options.filter(Boolean).length, 0);
  const which = sets.length > 1 ? `Set ${current + 1} of ${sets.length}: ` : "";
  statusBar.announce(count ? `${which}${count} suggestion${count === 1 ? "" : "s"} ready` : "No suggestions");
}

const LOST_TEXT = "The connection dropped before these options were finished: press Tab to ask again.";
const ERROR_PREFIXES = { busy: "Server busy", rate_limited: "Slow down", signed_out: "Signed out" };
// the server's message names the set by its id, which means nothing to a writer
const ERROR_TEXTS = { unknown_parent: "The server no longer has these options: press Shift+Tab for new ones." };

function onError({ id, code, message }) {
  const text = ERROR_TEXTS[code] ?? (ERROR_PREFIXES[code] ? `${ERROR_PREFIXES[code]}: ${message}` : message);
  statusBar.message(text);
  const { set, column } = findColumn(id);
  if (!set || column.requestId !== id || !column.streaming) return;
  column.streaming = false;
  column.longerWanted = 0;
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
  popup.open(editor.caretPosition(), wrap.clientWidth, wrap.clientHeight, editor.textarea.offsetHeight);
  enableActions(true);
}

function closePopup() {
  cancelActive();
  popup.close();
  sets = [];
  current = -1;
  editor.textarea.removeAttribute("aria-activedescendant");
  editor.hideGhost();
  enableActions(false);
}

// The highlighted option's text still to come, as ghost text at the caret.
function showGhost() {
  const set = sets[current];
  const chosen = popup.isOpen && set ? set.option(popup.selectedIndex) : null;
  editor.showGhost(chosen ? set.rest(chosen.text) : "");
}

// Ctrl+→: the next word of the highlighted option goes into the text; the options that go on from it stay.
let takingWord = false;

function acceptWord() {
  const set = sets[current];
  const chosen = set?.option(popup.selectedIndex);
  const word = chosen ? nextWord(set.rest(chosen.text) ?? "") : "";
  if (!word) return;
  sets = [set]; // older sets were offered before this word was in the text
  current = 0;
  set.taken += word;
  const start = editor.textarea.selectionStart;
  takingWord = true;
  editor.insertAtCaret(word);
  takingWord = false;
  provenance.markModel(start, start + word.length, chosen.column.model);
  saveDocument();
  openPopup(); // under the caret, which has moved
}

// ---- buttons for what Tab and Shift+Tab do: phones have no Tab key --------------------------

function enableActions(optionsOpen) {
  $("actionLonger").disabled = !optionsOpen;
  $("actionNew").disabled = !optionsOpen;
}

function wireAction(button, action) {
  button.addEventListener("mousedown", (event) => event.preventDefault()); // the caret (and a phone's keyboard) stay
  button.addEventListener("click", (event) => {
    action();
    if (event.detail === 0) editor.focus(); // pressed from the keyboard: ↑ ↓ and Enter choose in the editor
  });
}

wireAction($("actionSuggest"), () => {
  if (popup.isOpen) closePopup();
  requestSuggestions();
});
wireAction($("actionLonger"), () => extendSet());
wireAction($("actionNew"), () => requestSuggestions());

function showSet(index) {
  if (index < 0 || index >= sets.length) return;
  current = index;
  renderCurrent();
  if (!sets[current].streaming) announceSet(sets[current]);
}

function accept(i) {
  const set = sets[current];
  const chosen = set?.option(i);
  const text = chosen ? set.rest(chosen.text) : null;
  closePopup();
  if (text) {
    const start = editor.textarea.selectionStart;
    editor.insertAtCaret(text); // its input event has moved the spans; now this text is the model's
    provenance.markModel(start, start + text.length, chosen.column.model);
  }
  saveDocument();
}

// ---- keys and edits --------------------------------------------------------------------

// With no options open, Esc then Tab (or Shift+Tab) leaves the editor for the next (or previous)
// control, as in code editors: Tab itself writes with the model. Esc with options open only closes
// them (Tab then asks again); any other key in between keeps Tab for the model.
let leaving = false;

editor.textarea.addEventListener("keydown", (event) => {
  if (MODIFIER_KEYS.has(event.key)) return;
  const wasLeaving = leaving;
  leaving = event.key === "Escape" && !popup.isOpen;
  if (event.key === "Tab" && !event.ctrlKey && !event.altKey && !event.metaKey) {
    if (wasLeaving) return; // the browser moves the focus on
    event.preventDefault(); // Tab writes with the model instead of leaving the editor
    if (event.shiftKey || !popup.isOpen) {
      if (!popup.isOpen) sets = [];
      requestSuggestions();
    } else {
      extendSet();
    }
    return;
  }
  if (!popup.isOpen) return;
  const word = event.key === "ArrowRight" && (event.ctrlKey || event.metaKey) && !event.shiftKey;
  const other = event.altKey && { BracketRight: 1, BracketLeft: -1 }[event.code]; // Alt+] and Alt+[
  if (word || other) {
    event.preventDefault();
    if (word) acceptWord();
    else popup.move(other);
    return;
  }
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
editor.textarea.addEventListener("blur", () => { leaving = false; });
editor.textarea.addEventListener("scroll", () => { if (popup.isOpen) closePopup(); });
// A new width moves the text under the options; a phone's keyboard coming and going changes only the height.
let width = window.innerWidth;
window.addEventListener("resize", () => {
  if (popup.isOpen && window.innerWidth !== width) closePopup();
  width = window.innerWidth;
});

// On small screens the top bar's tools fold into a Menu button.
const tools = new Popover($("toolsToggle"), $("tools"), (open) => $("tools").classList.toggle("open", open));
for (const button of document.querySelectorAll(SELECTORS.viewButtons)) {
  button.addEventListener("click", () => { if (tools.isOpen) tools.close(false); });
}

let saveTimer = null;
function saveDocument() {
  clearTimeout(saveTimer);
  provenance.update(editor.text);
  storage.saveDocument(editor.text, editor.caret, provenance.spans);
}
editor.textarea.addEventListener("input", () => {
  provenance.update(editor.text);
  if (popup.isOpen && !takingWord) closePopup(); // pasted or composed text: the options no longer fit
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
    learning.requestScore();
    learning.requestDistribution();
  }, PRIME_DELAY_MS);
}

// ---- the learning lens, examples, export and import -----------------------------------------

learning = new LearningLens({
  editor, settings, connection, statusBar, lens, distribution, provenance, currentModel, closePopup,
});
document.addEventListener("selectionchange", () => {
  if (distribution.isOpen && document.activeElement === editor.textarea) schedulePrime();
});

// Replace the whole document as one undoable edit (Ctrl+Z brings the old text back).
function replaceDocument(text) {
  learning.setView("write");
  editor.textarea.select();
  editor.insertAtCaret(text);
  provenance.update(editor.text);
  saveDocument();
}

wireDocumentMenus({
  settings, statusBar, provenance, currentModel, textarea: editor.textarea, documentText: () => editor.text,
  replaceDocument, save: saveDocument,
});

window.addEventListener("pagehide", saveDocument);

new Publisher({ button: $("publish"), result: $("publishResult") }, {
  text: () => editor.text, settings: () => settings.values(), onMessage: (text) => statusBar.message(text),
});

editor.restore(saved.text, saved.caret);
editor.focus();

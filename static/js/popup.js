// The suggestions popup: a listbox of options anchored at the caret. It owns its DOM.

// Why an option stopped: a short note beside it where it matters, and the whole story on hover.
export const FINISH_REASONS = {
  length: ["", "It reached the length set in the settings; Tab makes it longer."],
  sentence: ["", "It stopped at the end of a sentence (the Stop at setting); Tab writes on."],
  paragraph: ["", "It stopped at the end of a paragraph (the Stop at setting); Tab writes on."],
  time: ["out of time: Tab goes on", "The server gives each Tab a few seconds so that everyone gets a turn; this "
    + "option used them up. Tab goes on from here."],
  eos: ["the model ended the text here", "The model's likeliest next token was the end of the text: it thinks the "
    + "text is finished."],
  context: ["the model cannot read more", "Your text and this option fill everything the model can read at once "
    + "(its context window)."],
  cancelled: ["stopped", "Stopped because you typed, pressed Esc or asked again."],
};

// Which decoding wrote a set, in a few words for the popup's head.
export function describeMode(settings) {
  if (!settings) return "";
  if (settings.mode === "beam") return `beam search, ${settings.beams} beams`;
  if (settings.mode === "greedy" || settings.temperature === 0) return "greedy";
  const seed = settings.seed === null || settings.seed === undefined ? "" : ` · seed ${settings.seed}`;
  return `sampled · T ${settings.temperature} · top-k ${settings.top_k} · top-p ${settings.top_p}${seed}`;
}

// A compare column's head: the model, its size, and how soon its first words came.
function describeColumn(column, parameters) {
  const size = parameters ? ` · ${formatSize(parameters)} parameters` : "";
  const first = column.firstMs === null ? "" : ` · first words in ${Math.round(column.firstMs)} ms`;
  return `${column.model}${size}${first}`;
}

// While the first words are on their way (a busy server queues requests), how long it has been.
export function waitingNote(column) {
  if (column.firstMs !== null) return "writing…";
  const seconds = column.waitedSeconds();
  const line = column.ahead > 0 ? `, ${column.ahead} ahead in line` : "";
  return seconds < 1 && !line ? "waiting…" : `waiting ${seconds} s${line}…`;
}

export function formatSize(parameters) {
  return parameters >= 1e9 ? `${(parameters / 1e9).toFixed(1)}B` : `${Math.round(parameters / 1e6)}M`;
}

const MIN_POPUP_HEIGHT = 96; // px: however short the screen, an option and the popup's head show

export class SuggestionsPopup {
  constructor(elements, callbacks) {
    this.el = elements.popup;
    this.list = elements.options;
    this.label = elements.setLabel;
    this.error = elements.error;
    this.callbacks = callbacks;
    this.prev = elements.prev;
    this.next = elements.next;
    this.items = [];
    this.selectedIndex = 0;
    elements.prev.addEventListener("mousedown", (event) => event.preventDefault());
    elements.next.addEventListener("mousedown", (event) => event.preventDefault());
    elements.prev.addEventListener("click", () => callbacks.onPrev());
    elements.next.addEventListener("click", () => callbacks.onNext());
  }

  get isOpen() {
    return !this.el.hidden;
  }

  // Show the popup under the caret line, or above it when there is no room below.
  // `usableHeight`: how far down the popup may reach (above the buttons under the editor on a phone).
  open(position, containerWidth, containerHeight, usableHeight = containerHeight) {
    this.el.hidden = false;
    this.el.style.maxHeight = "";
    const left = Math.max(8, Math.min(position.left, containerWidth - this.el.offsetWidth - 8));
    const below = position.top + position.lineHeight + 4;
    const fitsBelow = below + this.el.offsetHeight <= usableHeight || position.top < usableHeight / 2;
    this.el.style.left = `${left}px`;
    this.el.style.top = fitsBelow ? `${below}px` : "";
    this.el.style.bottom = fitsBelow ? "" : `${containerHeight - position.top + 4}px`;
    // on a short screen (a phone with its keyboard up) the options scroll rather than cover the buttons
    const room = fitsBelow ? usableHeight - below - 8 : position.top - 8;
    this.el.style.maxHeight = `${Math.max(MIN_POPUP_HEIGHT, room)}px`;
  }

  close() {
    this.el.hidden = true;
    this.hideError();
  }

  // Draw every option of `set` (the set being shown is number `index` of `total`), one column per model.
  render(set, index, total, sizes = {}) {
    this.list.replaceChildren();
    this.items = [];
    this.el.classList.toggle("compare", set.columns.length > 1);
    for (const column of set.columns) {
      // the listbox holds only options, or in compare mode one labelled group of options per model
      let group = this.list;
      if (set.columns.length > 1) {
        group = document.createElement("div");
        group.className = "column";
        group.setAttribute("role", "group");
        const head = document.createElement("div");
        head.className = "column-head";
        head.setAttribute("aria-hidden", "true"); // the group's name says the same
        group.append(head);
        this.list.append(group);
      }
      column.options.forEach(() => {
        const item = this.createItem(this.items.length);
        this.items.push(item);
        group.append(item);
      });
    }
    set.columns.forEach((column) => this.updateColumn(set, column, sizes));
    const which = total > 1 ? `Set ${index + 1} of ${total}` : "Suggestions";
    this.label.textContent = `${which} · ${describeMode(set.columns[0].settings)}`;
    this.prev.hidden = index <= 0;
    this.next.hidden = index >= total - 1;
    this.select(Math.min(this.selectedIndex, this.items.length - 1));
  }

  // Show a column's latest text, notes and figures.
  updateColumn(set, column, sizes = {}) {
    const first = set.firstIndexOf(column);
    column.options.forEach((text, k) => this.updateOption(first + k, set.rest(text), column, k));
    const group = this.items[first]?.closest(".column");
    if (group) {
      const description = describeColumn(column, sizes[column.model]);
      group.querySelector(".column-head").textContent = description;
      group.setAttribute("aria-label", description);
    }
  }

  createItem(i) {
    const item = document.createElement("div");
    item.setAttribute("role", "option");
    item.id = `suggestion-${i}`;
    item.className = "option";
    const text = document.createElement("span");
    text.className = "option-text";
    const note = document.createElement("span");
    note.className = "option-note";
    const likelihood = document.createElement("span");
    likelihood.className = "option-likelihood";
    item.append(text, note, likelihood);
    item.addEventListener("mousedown", (event) => event.preventDefault()); // keep the caret in the editor
    item.addEventListener("click", () => this.callbacks.onPick(i));
    item.addEventListener("mousemove", () => this.select(i));
    return item;
  }

  // Model text only ever enters the page through textContent; line breaks are shown as ↵. `text` is what
  // is left of the option after the words already taken from the set (null: it does not go on from them).
  updateOption(i, text, column, k) {
    const item = this.items[i];
    if (!item) return;
    item.hidden = text === null;
    if (text === null) return;
    const { streaming } = column;
    const likelihood = column.likelihood?.[k];
    item.querySelector(".option-text").textContent = text.replace(/\n/g, "\u21b5\n");
    const [note, why] = streaming ? [waitingNote(column), ""] : FINISH_REASONS[column.finish?.[k]] ?? ["", ""];
    const noteElement = item.querySelector(".option-note");
    noteElement.textContent = note;
    noteElement.title = why;
    item.title = why;
    item.classList.toggle("streaming", Boolean(streaming));
    const badge = item.querySelector(".option-likelihood");
    const known = !streaming && likelihood && likelihood.perplexity !== null;
    badge.textContent = known ? `perplexity ${likelihood.perplexity.toFixed(1)}` : "";
    badge.title = known
      ? `On average the model gave each of these tokens log-probability ${likelihood.logprob.toFixed(2)} `
        + `(${(Math.exp(likelihood.logprob) * 100).toFixed(0)} % as a geometric mean). Lower perplexity: a likelier continuation.`
      : "";
  }

  select(i, step = 1) {
    if (!this.items.length) return;
    const count = this.items.length;
    let at = (i + count) % count;
    for (let tries = 0; this.items[at].hidden && tries < count; tries += 1) at = (at + step + count) % count;
    this.selectedIndex = at;
    this.items.forEach((item, k) => item.setAttribute("aria-selected", String(k === this.selectedIndex)));
    this.items[this.selectedIndex].scrollIntoView({ block: "nearest" });
    this.callbacks.onSelect?.(this.items[this.selectedIndex].id);
  }

  move(step) {
    this.select(this.selectedIndex + step, step);
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = false;
  }

  hideError() {
    this.error.hidden = true;
    this.error.textContent = "";
  }
}

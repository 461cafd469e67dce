// Read-only views of the document: every token tinted by how surprised the model was, or the model's own text marked.

// Rank buckets as in GLTR: was the token among the model's 10, 100, 1000 likeliest guesses, or beyond?
const BUCKETS = [
  { max: 10, name: "top10", label: "top 10" },
  { max: 100, name: "top100", label: "top 100" },
  { max: 1000, name: "top1000", label: "top 1000" },
  { max: Infinity, name: "beyond", label: "beyond" },
];

export function bucketOf(rank) {
  return BUCKETS.find((bucket) => rank <= bucket.max).name;
}

// A token's text with its spaces and line breaks made visible.
export function visible(piece) {
  return piece.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5");
}

export function percent(logprob) {
  const p = Math.exp(logprob) * 100;
  return p >= 10 ? `${p.toFixed(0)} %` : p >= 0.1 ? `${p.toFixed(1)} %` : `${p.toPrecision(1)} %`;
}

export class Lens {
  constructor(elements, callbacks) {
    this.el = elements.lens;
    this.title = elements.title;
    this.legend = elements.legend;
    this.body = elements.text;
    this.tip = elements.tip;
    this.note = elements.note;
    this.tokens = [];
    this.spans = []; // the surprise view's token spans: one of them is the view's one Tab stop
    elements.close.addEventListener("click", () => callbacks.onClose());
    this.body.addEventListener("keydown", (event) => this.onKey(event));
    this.el.addEventListener("keydown", (event) => {
      if (event.key === "Escape") { event.preventDefault(); callbacks.onClose(); }
    });
    const show = (event) => {
      const span = event.target.closest?.("[data-token]");
      if (span) this.showTip(span);
    };
    this.body.addEventListener("mouseover", show);
    this.body.addEventListener("focusin", show);
    this.body.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.body.addEventListener("focusout", () => { this.tip.hidden = true; });
  }

  get isOpen() {
    return !this.el.hidden;
  }

  close() {
    this.el.hidden = true;
    this.tip.hidden = true;
  }

  waiting(text) {
    this.open("Surprise: scoring…", []);
    this.spans = [];
    this.body.tabIndex = 0; // until the tokens come, the text itself is the view's Tab stop
    this.body.textContent = text;
  }

  // Into the view: the token that has the Tab stop (the first scored one at first), or the text.
  focus() {
    (this.spans.find((span) => span.tabIndex === 0) ?? this.body).focus();
  }

  // ← → (and ↑ ↓) move between the tokens, Home and End to the first and the last; Tab leaves the view.
  onKey(event) {
    const at = this.spans.indexOf(event.target);
    if (at < 0) return;
    const last = this.spans.length - 1;
    const to = { ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1, Home: 0, End: last }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    this.moveTo(Math.max(0, Math.min(last, to)));
  }

  moveTo(index) {
    this.spans.forEach((span, i) => { span.tabIndex = i === index ? 0 : -1; });
    this.spans[index].focus();
  }

  // `text` is the whole document; `offset` is where the scored text began in it; `score` the server's answer.
  showSurprise(text, offset, score) {
    const legend = BUCKETS.map((bucket) => ({ className: `swatch ${bucket.name}`, text: bucket.label }));
    const figure = score.perplexity === null ? "" : ` · perplexity ${score.perplexity.toFixed(1)}`;
    let at = offset + score.scored_from;
    if (at > 0) legend.push({ className: "swatch unscored", text: "not scored" });
    this.open(`Surprise: was each token among the model's likeliest guesses?${figure}`, legend);
    this.note.hidden = at === 0;
    this.note.textContent = `The grey start is not scored: the model reads at most its last ${tokenCount(score.tokens)} `
      + "tokens (its context window), so the view opens where that begins.";
    this.tokens = score.tokens;
    const parts = [];
    if (at > 0) parts.push(plain(text.slice(0, at), "unscored", "Beyond the model's window: not scored"));
    this.spans = score.tokens.map((token, i) => {
      const end = offset + token.end;
      const span = document.createElement("span");
      span.className = `token ${bucketOf(token.rank)}`;
      span.dataset.token = String(i);
      span.tabIndex = i === 0 ? 0 : -1;
      span.setAttribute("aria-describedby", "lens-tip");
      span.textContent = text.slice(at, end);
      parts.push(span);
      at = end;
      return span;
    });
    if (at < text.length) parts.push(plain(text.slice(at), "unscored", "Not scored yet"));
    const focused = this.el.contains(document.activeElement);
    this.body.tabIndex = this.spans.length ? -1 : 0;
    this.body.replaceChildren(...parts);
    this.spans[0]?.scrollIntoView({ block: "start" }); // where the scored part begins
    if (focused) this.focus();
  }

  // `runs` from Provenance.runs(): the model's text is marked with who wrote it.
  showProvenance(runs, modelCharacters, totalCharacters) {
    this.spans = [];
    this.body.tabIndex = 0;
    const share = totalCharacters ? Math.round((100 * modelCharacters) / totalCharacters) : 0;
    this.open(`Model-written: ${modelCharacters} of ${totalCharacters} characters (${share} %)`,
      [{ className: "swatch model-written", text: "written by the model" }]);
    this.tokens = [];
    this.body.replaceChildren(...runs.map((run) => {
      if (!run.model) return document.createTextNode(run.text);
      const mark = document.createElement("mark");
      mark.className = "model-written";
      mark.title = `written by ${run.model}`;
      mark.textContent = run.text;
      return mark;
    }));
  }

  open(title, legend) {
    this.el.hidden = false;
    this.tip.hidden = true;
    this.note.hidden = true;
    this.title.textContent = title;
    this.legend.replaceChildren(...legend.map(({ className, text }) => {
      const item = document.createElement("span");
      item.className = className;
      item.textContent = text;
      return item;
    }));
  }

  // The tooltip: the token's probability and rank, and the model's five likeliest tokens at that place.
  // A character the model writes in several tokens shows as one, with each token's own figures.
  showTip(span) {
    const token = this.tokens[Number(span.dataset.token)];
    if (!token) return;
    const head = paragraph("tip-head", `\u201c${visible(token.text)}\u201d ${percent(token.logprob)} · rank ${token.rank}`);
    const parts = token.parts ? [paragraph("tip-parts", `${token.parts.length} tokens, each part of a character: `
      + token.parts.map((part) => `${visible(part.text)} ${percent(part.logprob)} (rank ${part.rank})`).join(", "))] : [];
    const first = token.parts ? token.parts[0].text : token.text;
    const list = document.createElement("ol");
    for (const other of token.top) {
      const item = document.createElement("li");
      item.textContent = `\u201c${visible(other.text)}\u201d ${percent(other.logprob)}`;
      if (other.text === first) item.className = "actual";
      list.append(item);
    }
    const label = paragraph("", token.parts ? "The model's five likeliest first tokens here:" : "The model's five likeliest here:");
    this.tip.replaceChildren(head, ...parts, label, list);
    this.tip.hidden = false;
    const box = this.el.getBoundingClientRect();
    const rect = span.getBoundingClientRect();
    const left = Math.min(rect.left - box.left, box.width - this.tip.offsetWidth - 8);
    this.tip.style.left = `${Math.max(8, left)}px`;
    this.tip.style.top = `${rect.bottom - box.top + this.el.scrollTop + 4}px`;
  }
}

function paragraph(className, text) {
  const element = document.createElement("p");
  element.className = className;
  element.textContent = text;
  return element;
}

// Tokens a score covers: a character the model writes in several tokens is one entry with its parts.
export function tokenCount(tokens) {
  return tokens.reduce((count, token) => count + (token.parts?.length ?? 1), 0);
}

function plain(text, className, title) {
  const span = document.createElement("span");
  span.className = className;
  span.title = title;
  span.textContent = text;
  return span;
}

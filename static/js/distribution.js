// The next-token chart: the model's likeliest next tokens, and what the sampling settings leave of them.
import { visible } from "./lens.js";

export class DistributionPanel {
  constructor(elements, callbacks) {
    this.el = elements.panel;
    this.toggle = elements.toggle;
    this.bars = elements.bars;
    this.summary = elements.summary;
    this.callbacks = callbacks;
    this.toggle.addEventListener("click", () => this.setOpen(this.el.hidden));
  }

  get isOpen() {
    return !this.el.hidden;
  }

  setOpen(open) {
    this.el.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    this.toggle.textContent = open ? "Hide the next-token chart" : "Show the next-token chart";
    if (open) this.callbacks.onOpen();
  }

  // `answer` is the server's `distribution` event; `settings` the ones it was reshaped with.
  render(answer, settings) {
    const top = Math.max(...answer.tokens.map((token) => Math.max(token.prob, token.shaped)), 1e-9);
    this.bars.replaceChildren(...answer.tokens.map((token) => {
      const item = document.createElement("li");
      item.className = token.kept ? "candidate" : "candidate excluded";
      const label = document.createElement("span");
      label.className = "token-label";
      label.textContent = visible(token.text);
      const bars = document.createElement("span");
      bars.className = "bars";
      bars.append(bar("bar-model", token.prob / top), bar("bar-shaped", token.shaped / top));
      const figures = document.createElement("span");
      figures.className = "figures";
      figures.textContent = token.kept ? `${pct(token.prob)} → ${pct(token.shaped)}` : `${pct(token.prob)} → cut`;
      item.title = (token.kept
        ? `The model gives "${token.text}" ${pct(token.prob)}; sampling with these settings picks it ${pct(token.shaped)} of the time.`
        : `The model gives "${token.text}" ${pct(token.prob)}, but these settings never pick it.`)
        + (token.partial ? " It is part of a character (its UTF-8 bytes): the model writes that character in several tokens." : "");
      if (token.partial) item.classList.add("partial");
      item.append(label, bars, figures);
      return item;
    }));
    this.summary.textContent = describe(answer, settings);
  }

  waiting() {
    this.summary.textContent = "Reading the text…";
  }
}

function describe(answer, settings) {
  const pool = answer.candidates === answer.vocabulary
    ? `any of the model's ${answer.vocabulary.toLocaleString("en")} tokens`
    : `${answer.candidates.toLocaleString("en")} of ${answer.vocabulary.toLocaleString("en")} tokens`;
  const how = settings.mode === "greedy" || settings.temperature === 0
    ? "Greedy: the likeliest token, every time."
    : settings.mode === "beam" ? "Beam search ranks whole candidates by the model's own probabilities."
      : `Sampling can pick ${pool}.`;
  return `${how} These ${answer.tokens.length} hold ${pct(answer.shown_mass)} of the model's probability.`;
}

function bar(className, fraction) {
  const element = document.createElement("span");
  element.className = `bar ${className}`;
  element.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`; // CSSOM, allowed by the page's CSP
  return element;
}

function pct(p) {
  if (p >= 0.1) return `${(p * 100).toFixed(0)} %`;
  if (p >= 0.001) return `${(p * 100).toFixed(1)} %`;
  return p > 0 ? "<0.1 %" : "0 %";
}

import { formatSize } from "./popup.js";

const ANNOUNCE_DELAY_MS = 100; // screen readers miss a live region's text changed twice in one task

// The status bar: connection, model, device, loading state, and the last time to first option.
export class StatusBar {
  constructor(elements) {
    this.el = elements;
  }

  connection(state, text) {
    this.el.connection.dataset.state = state;
    this.el.connection.textContent = text;
  }

  model(status) {
    this.el.root.dataset.ready = String(Boolean(status.ready));
    const models = status.models ?? [];
    if (models.length > 1) {
      // every served model, the default first: "GPT is a family"
      this.el.model.textContent = models.map((m) => `${m.model}${m.parameters ? ` (${formatSize(m.parameters)})` : ""}`
        + (m.error ? " (not available)" : m.ready ? "" : " (loading…)")).join(" · ");
    } else if (status.model) {
      this.el.model.textContent = status.model;
    }
    this.el.device.textContent = `${status.device} · ${status.dtype}`;
    this.el.loading.hidden = Boolean(status.ready) || Boolean(status.error);
    this.warning(status.error || status.warning || "");
  }

  warning(text) {
    this.el.warning.textContent = text;
    this.el.warning.hidden = !text;
  }

  perplexity(value, tokens) {
    this.el.perplexity.textContent = value === null ? "" : `perplexity ${value.toFixed(1)} (${tokens} tokens)`;
  }

  timing(firstOptionMs) {
    this.el.timing.textContent = `first option in ${Math.round(firstOptionMs)} ms`;
  }

  message(text) {
    this.el.message.classList.remove("note");
    this.el.message.textContent = text;
    this.offer(null);
  }

  // One sentence for screen readers (a polite live region): emptied first, so that the same news is read again.
  announce(text) {
    const { announcer } = this.el;
    announcer.textContent = "";
    clearTimeout(this.announcing);
    this.announcing = setTimeout(() => { announcer.textContent = text; }, ANNOUNCE_DELAY_MS);
  }

  // Like message, but news rather than a problem; `offer` ({label, action}) adds a button that acts on it.
  note(text, offer = null) {
    this.el.message.classList.add("note");
    this.el.message.textContent = text;
    this.offer(offer);
  }

  offer(offer) {
    const button = this.el.action;
    button.hidden = !offer;
    button.textContent = offer?.label ?? "";
    button.onclick = offer && (() => {
      this.offer(null);
      offer.action();
    });
  }
}

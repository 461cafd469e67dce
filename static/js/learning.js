// The learning lens's requests and views: the document's score (perplexity, surprise view),
// the next-token chart, and switching between writing and the read-only views.
import { tokenCount } from "./lens.js";
import { $, SELECTORS } from "./selectors.js";

export class LearningLens {
  // `parts`: editor, settings, connection, statusBar, lens, distribution, provenance, currentModel(), closePopup().
  constructor(parts) {
    Object.assign(this, parts);
    this.view = "write";
    this.scoring = null; // the `score` request in flight: { id, text, offset, model }
    this.scored = null; // its answer: { text, offset, model, result }
    this.forget();
    for (const button of document.querySelectorAll(SELECTORS.viewButtons)) {
      button.addEventListener("click", () => this.setView(button.dataset.view));
    }
  }

  // A new connection (or a restarted server) has read nothing yet.
  forget() {
    this.lastScored = null; // [text, model] of the last `score` sent
    this.asked = null; // the `distribution` request whose answer the chart waits for
  }

  // The document's perplexity under the chosen model (asked again when the text or the model changes).
  requestScore() {
    const whole = this.editor.tail(this.editor.text);
    const model = this.currentModel();
    const key = JSON.stringify([whole, model]);
    if (key === this.lastScored) return;
    this.lastScored = key;
    if (!whole.trim()) {
      this.statusBar.perplexity(null);
      return;
    }
    this.scoring = { id: this.connection.nextId(), text: whole, offset: this.editor.text.length - whole.length, model };
    this.connection.send("score", { id: this.scoring.id, text: whole, model });
  }

  onScore(result) {
    this.statusBar.perplexity(result.perplexity, tokenCount(result.tokens));
    if (!this.scoring || result.id !== this.scoring.id) return;
    this.scored = { ...this.scoring, result };
    if (this.view === "surprise") this.showSurprise();
  }

  showSurprise() {
    const whole = this.editor.tail(this.editor.text);
    const offset = this.editor.text.length - whole.length;
    const scored = this.scored;
    if (scored && scored.text === whole && scored.offset === offset && scored.model === this.currentModel()) {
      this.lens.showSurprise(this.editor.text, scored.offset, scored.result);
    } else {
      this.lens.waiting(this.editor.text);
      this.requestScore();
    }
  }

  // The chart follows the caret and the settings; the server reads each text once.
  requestDistribution() {
    if (!this.distribution.isOpen || !this.connection.socket.connected) return;
    const text = this.editor.textBeforeCaret();
    const values = this.settings.values();
    const key = JSON.stringify([text, values]);
    if (this.asked && this.asked.key === key) return;
    if (!this.asked || this.asked.text !== text) this.distribution.waiting(); // a settings change is answered at once
    this.asked = { id: this.connection.nextId(), key, text, settings: values };
    this.connection.send("distribution", { id: this.asked.id, text, settings: values });
  }

  onDistribution(answer) {
    if (this.asked && answer.id === this.asked.id) this.distribution.render(answer, this.asked.settings);
  }

  setView(next) {
    this.view = next;
    for (const button of document.querySelectorAll(SELECTORS.viewButtons)) {
      button.setAttribute("aria-pressed", String(button.dataset.view === next));
    }
    // the editor and its buttons under a read-only view are out of reach, for the keyboard too
    this.editor.textarea.inert = next !== "write";
    $("writeActions").inert = next !== "write";
    if (next === "write") {
      this.lens.close();
      this.editor.focus();
      return;
    }
    this.closePopup();
    if (next === "surprise") this.showSurprise();
    else this.lens.showProvenance(this.provenance.runs(), this.provenance.modelCharacters(), this.editor.text.length);
    this.lens.focus();
  }
}

// The settings panel: sampling settings with their ranges, remembered in the browser.
import { storage } from "./storage.js";

const NUMBERS = ["n", "temperature", "top_k", "top_p", "length"];

export class SettingsPanel {
  constructor(elements) {
    this.panel = elements.panel;
    this.inputs = [...elements.inputs];
    this.toggle = elements.toggle;
    const saved = storage.loadSettings();
    for (const input of this.inputs) {
      if (saved[input.name] !== undefined && saved[input.name] !== null) input.value = saved[input.name];
      input.addEventListener("input", () => this.changed(input));
      this.show(input);
    }
    elements.reset.addEventListener("click", () => this.reset());
    this.toggle.addEventListener("click", () => this.setOpen(this.panel.hidden));
  }

  setOpen(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
  }

  changed(input) {
    this.show(input);
    storage.saveSettings(Object.fromEntries(this.inputs.map((i) => [i.name, i.value])));
  }

  show(input) {
    const output = document.getElementById(`out-${input.name}`);
    if (output) output.textContent = input.name === "temperature" && Number(input.value) === 0 ? "0 (greedy)" : input.value;
  }

  reset() {
    for (const input of this.inputs) {
      input.value = input.dataset.default;
      this.show(input);
    }
    storage.saveSettings({});
  }

  // The settings to send with a request, typed as the protocol expects.
  values() {
    const values = {};
    for (const input of this.inputs) {
      if (NUMBERS.includes(input.name)) values[input.name] = Number(input.value);
      else if (input.name === "seed") values.seed = input.value === "" ? null : Number(input.value);
      else values[input.name] = input.value;
    }
    return values;
  }
}

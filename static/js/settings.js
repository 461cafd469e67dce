// The settings panel: sampling settings with their ranges, remembered in the browser.
import { formatSize } from "./popup.js";
import { storage } from "./storage.js";

const NUMBERS = ["n", "temperature", "top_k", "top_p", "length", "beams", "no_repeat_ngram"];
// the settings each decoding mode leaves aside
const UNUSED = {
  greedy: ["temperature", "top_k", "top_p", "beams", "n"],
  beam: ["temperature", "top_k", "top_p"],
  sample: ["beams"],
};
const DRAWER_QUERY = "(max-width: 800px)"; // as in style.css
const MODE_NAMES = { greedy: "greedy decoding", beam: "beam search", sample: "sampling" };

function modelOption(model) {
  const size = model.parameters ? ` · ${formatSize(model.parameters)} parameters` : "";
  const state = model.error ? " (not available)" : model.ready ? "" : " (loading…)";
  const option = new Option(`${model.model}${size}${state}`, model.model);
  option.disabled = !model.ready;
  return option;
}

export class SettingsPanel {
  constructor(elements) {
    this.panel = elements.panel;
    this.inputs = [...elements.inputs];
    this.toggle = elements.toggle;
    this.presetNote = elements.presetNote;
    this.compare = elements.compare;
    this.onChange = elements.onChange ?? (() => {});
    this.locked = new Set();
    const saved = storage.loadSettings();
    for (const input of this.inputs) {
      input.dataset.initial = input.dataset.default; // the server's own default, for when a lock is lifted
      if (saved[input.name] !== undefined && saved[input.name] !== null) input.value = saved[input.name];
      input.addEventListener("input", () => this.changed(input));
      this.show(input);
    }
    elements.reset.addEventListener("click", () => this.reset());
    this.presets = [...elements.presets];
    for (const button of this.presets) {
      button.addEventListener("click", () => {
        this.apply(JSON.parse(button.dataset.settings));
        this.presetNote.textContent = button.dataset.note;
      });
    }
    this.showMode();
    this.wireDrawer(elements.close);
  }

  // Beside the editor on wide screens (open at first); a drawer over it on narrow ones (closed at first),
  // which Esc, Close or a tap outside closes, giving the focus back to the Settings button.
  wireDrawer(close) {
    const narrow = this.narrow = window.matchMedia(DRAWER_QUERY);
    this.setOpen(!narrow.matches);
    narrow.addEventListener("change", () => this.setOpen(!narrow.matches));
    this.toggle.addEventListener("click", () => {
      this.setOpen(this.panel.hidden);
      if (!this.panel.hidden && narrow.matches) close.focus();
    });
    const closeDrawer = () => {
      this.setOpen(false);
      this.toggle.focus();
    };
    close.addEventListener("click", closeDrawer);
    this.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && narrow.matches) closeDrawer();
      if (event.key === "Tab" && narrow.matches) this.wrapFocus(event);
    });
    document.addEventListener("pointerdown", (event) => {
      const inside = this.panel.contains(event.target) || this.toggle.contains(event.target);
      if (narrow.matches && !this.panel.hidden && !inside) this.setOpen(false);
    });
  }

  setOpen(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    // a drawer over the page holds the focus: while it is open, everything behind it is inert
    const hold = open && Boolean(this.narrow?.matches);
    for (const other of this.behind()) other.inert = hold;
  }

  // Tab past the drawer's last control comes back to its first (and Shift+Tab the other way), as in a dialog.
  wrapFocus(event) {
    const controls = [...this.panel.querySelectorAll("button, input, select, textarea, a[href], [tabindex='0']")]
      .filter((control) => !control.disabled && control.getClientRects().length > 0);
    const [first, last] = [controls[0], controls.at(-1)];
    const target = event.shiftKey ? (document.activeElement === first ? last : null)
      : (document.activeElement === last ? first : null);
    if (target) {
      event.preventDefault();
      target.focus();
    }
  }

  // What the drawer covers: the siblings of the panel and of each element around it, up to the body.
  behind() {
    const covered = [];
    for (let inner = this.panel; inner.parentElement && inner !== document.body; inner = inner.parentElement) {
      for (const sibling of inner.parentElement.children) {
        if (sibling !== inner && !["SCRIPT", "TEMPLATE"].includes(sibling.tagName)) covered.push(sibling);
      }
    }
    return covered;
  }

  changed(input) {
    this.show(input);
    this.showMode();
    const own = this.inputs.filter((i) => !this.locked.has(i.name)); // a locked value is the teacher's, not saved
    storage.saveSettings(Object.fromEntries(own.map((i) => [i.name, i.value])));
    this.onChange();
  }

  // Set several settings at once (a preset, an example), leaving the teacher's locked ones alone.
  apply(values) {
    for (const input of this.inputs) {
      if (values[input.name] === undefined || this.locked.has(input.name)) continue;
      input.value = values[input.name];
      this.show(input);
    }
    this.changed(this.inputs[0]);
  }

  // Every setting as it stands (as the inputs hold them), to put back later with apply().
  snapshot() {
    return Object.fromEntries(this.inputs.map((input) => [input.name, input.value]));
  }

  // The served models, for the model and compare choices (one still loading cannot be chosen yet).
  showModels(models) {
    const select = this.inputs.find((input) => input.name === "model");
    const wanted = select.value || storage.loadSettings().model;
    select.replaceChildren(...models.map((model) => modelOption(model)));
    const usable = models.filter((model) => model.ready).map((model) => model.model);
    select.value = usable.includes(wanted) ? wanted : usable[0] ?? models[0]?.model ?? "";
    const compare = this.compare;
    const other = compare.value;
    compare.replaceChildren(new Option("off: one model", ""), ...models.map((model) => modelOption(model)));
    compare.value = usable.includes(other) ? other : "";
    compare.disabled = models.length < 2; // and a note says how to serve a second model
    compare.closest(".setting").querySelector(".compare-note").hidden = models.length >= 2;
  }

  // Settings the chosen decoding mode does not use are dimmed and say so (greedy and beam search ignore
  // temperature…); a preset shows as pressed while the settings are its own.
  showMode() {
    const mode = this.inputs.find((input) => input.name === "mode")?.value ?? "sample";
    this.panel.dataset.mode = mode;
    for (const input of this.inputs) {
      const setting = input.closest(".setting");
      const unused = (UNUSED[mode] ?? []).includes(input.name);
      setting.classList.toggle("unused", unused);
      let note = setting.querySelector(".unused-note");
      if (unused && !note) {
        note = document.createElement("span");
        note.className = "unused-note";
        setting.querySelector(".setting-name").append(note);
      }
      if (note) note.textContent = unused ? `not used by ${MODE_NAMES[mode]}` : "";
    }
    const values = this.values();
    for (const button of this.presets) {
      const preset = Object.entries(JSON.parse(button.dataset.settings));
      const same = preset.every(([name, value]) => String(values[name]) === String(value));
      button.setAttribute("aria-pressed", String(same));
    }
  }

  // The teacher's class settings: defaults for students who chose nothing, locks, and size caps.
  applyPolicy({ defaults, locked, caps }) {
    this.locked = new Set(locked);
    const saved = storage.loadSettings();
    for (const input of this.inputs) {
      const name = input.name;
      if (caps[name] !== undefined) input.max = caps[name];
      input.dataset.default = defaults[name] ?? input.dataset.initial ?? input.dataset.default;
      const isLocked = this.locked.has(name);
      input.disabled = isLocked;
      const setting = input.closest(".setting");
      setting.classList.toggle("locked", isLocked);
      const note = setting.querySelector(".lock-note");
      if (note) note.hidden = !isLocked;
      if (isLocked) input.value = defaults[name];
      else if (saved[name] === undefined || saved[name] === null) input.value = input.dataset.default;
      if (caps[name] !== undefined && Number(input.value) > caps[name]) input.value = caps[name];
      this.show(input);
    }
    this.showMode();
  }

  show(input) {
    const output = document.getElementById(`out-${input.name}`);
    if (output) output.textContent = input.name === "temperature" && Number(input.value) === 0 ? "0 (greedy)" : input.value;
  }

  reset() {
    for (const input of this.inputs) {
      if (this.locked.has(input.name)) continue;
      input.value = input.dataset.default;
      this.show(input);
    }
    storage.saveSettings({});
    this.showMode();
    this.onChange();
  }

  // The settings to send with a request, typed as the protocol expects.
  values() {
    const values = {};
    for (const input of this.inputs) {
      if (NUMBERS.includes(input.name)) values[input.name] = Number(input.value);
      else if (input.name === "seed") values.seed = input.value === "" ? null : Number(input.value);
      else values[input.name] = input.value;
    }
    // greedy writes one text however often it is asked; beam search shows at most its beams
    if (values.mode === "greedy") values.n = 1;
    if (values.mode === "beam") values.n = Math.min(values.n, values.beams);
    return values;
  }
}

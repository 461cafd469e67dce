// The Examples and File menus: loading a lesson's prompt, exporting and importing the document.
import { exportDocument, importDocument } from "./files.js";
import { Menu } from "./menus.js";
import { $, SELECTORS } from "./selectors.js";

// How the status bar names the settings an example sets.
const SETTING_NAMES = {
  mode: "decoding", n: "options", temperature: "temperature", top_k: "top-k", top_p: "top-p", length: "length",
  stop_at: "stop at", beams: "beams", no_repeat_ngram: "no repeat",
};

// `parts`: settings, statusBar, provenance, currentModel(), textarea, documentText(), replaceDocument(text), save().
export function wireDocumentMenus(parts) {
  const { settings, statusBar, provenance } = parts;
  const examples = new Menu($("examplesMenu"));
  const file = new Menu($("fileMenu"));

  // The last example loaded: undoing it (Ctrl+Z) puts the writer's settings back with the text, redoing it
  // the example's; "Restore my settings" puts them back and keeps the example's text.
  let example = null;
  const restoreSettings = (values) => {
    settings.apply(values);
    statusBar.note("Your settings are back.");
  };
  parts.textarea.addEventListener("input", ({ inputType }) => {
    if (!example) return;
    const text = parts.documentText();
    if (inputType === "historyUndo" && text === example.textBefore) restoreSettings(example.settingsBefore);
    else if (inputType === "historyRedo" && text === example.textAfter) settings.apply(example.settingsAfter);
  });

  for (const button of document.querySelectorAll(SELECTORS.examples)) {
    button.addEventListener("click", () => {
      const textBefore = parts.documentText();
      const settingsBefore = settings.snapshot();
      parts.replaceDocument(button.dataset.text);
      const chosen = JSON.parse(button.dataset.settings);
      settings.apply(chosen);
      examples.close(false); // the focus is in the editor, with the example's text
      const named = Object.entries(chosen).map(([name, value]) => `${SETTING_NAMES[name] ?? name} ${value}`).join(", ");
      statusBar.note(`Example loaded, with its settings (${named}); Ctrl+Z brings back your text and settings. `
        + button.dataset.note, { label: "Restore my settings", action: () => restoreSettings(settingsBefore) });
      example = { textBefore, textAfter: parts.documentText(), settingsBefore, settingsAfter: settings.snapshot() };
    });
  }

  for (const button of document.querySelectorAll(SELECTORS.exportButtons)) {
    button.addEventListener("click", () => {
      const kind = button.dataset.export;
      const text = parts.documentText();
      provenance.update(text);
      const doc = { text, spans: provenance.spans, model: parts.currentModel(), settings: settings.values() };
      const { body, type } = exportDocument(doc, kind);
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([body], { type }));
      link.download = `tabwrite-document.${kind}`;
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
      file.close();
    });
  }

  $("importButton").addEventListener("click", () => {
    file.close();
    $("importFile").click();
  });

  $("importFile").addEventListener("change", async (event) => {
    const [file] = event.target.files;
    event.target.value = ""; // the same file can be chosen again
    if (!file) return;
    try {
      const doc = importDocument(file.name, await file.text());
      parts.replaceDocument(doc.text);
      provenance.spans = [];
      for (const span of doc.spans) provenance.markModel(span.start, span.end, span.model);
      parts.save();
      statusBar.note(`Imported ${file.name}: ${doc.text.length} characters, `
        + `${provenance.modelCharacters()} written by a model.`);
    } catch (error) {
      statusBar.message(`Import failed: ${error.message}`); // the document is left as it was
    }
  });
}

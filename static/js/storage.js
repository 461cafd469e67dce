// Keeps the document and the settings in the browser, so a reload loses nothing.
const DOCUMENT_KEY = "tabwrite.document";
const SETTINGS_KEY = "tabwrite.settings";

function read(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback; // storage disabled or a corrupt entry: start fresh
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // storage full or disabled: the page still works, it just will not remember
  }
}

export const storage = {
  loadDocument: () => read(DOCUMENT_KEY, { text: "", caret: 0, spans: [] }),
  saveDocument: (text, caret, spans = []) => write(DOCUMENT_KEY, { text, caret, spans }),
  loadSettings: () => read(SETTINGS_KEY, {}),
  saveSettings: (settings) => write(SETTINGS_KEY, settings),
};

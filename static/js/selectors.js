// Every DOM selector the page uses, in one place: the views look them up once.
export const SELECTORS = {
  editor: "#editor",
  editorWrap: "#editor-wrap",
  popup: "#suggestions",
  popupOptions: "#suggestions .options",
  popupSetLabel: "#suggestions .set-label",
  popupPrev: "#suggestions .set-prev",
  popupNext: "#suggestions .set-next",
  popupError: "#suggestions .popup-error",
  settingsPanel: "#settings",
  settingsToggle: "#settings-toggle",
  settingsReset: "#settings-reset",
  settingInputs: "#settings [name]",
  status: "#status",
  statusConnection: "#status .status-connection",
  statusModel: "#status .status-model",
  statusDevice: "#status .status-device",
  statusLoading: "#status .status-loading",
  statusTiming: "#status .status-timing",
  statusPerplexity: "#status .status-perplexity",
  statusWarning: "#status .status-warning",
  statusMessage: "#status .status-message",
  publish: "#publish",
  publishResult: "#publish-result",
};

export function $(name) {
  return document.querySelector(SELECTORS[name]);
}

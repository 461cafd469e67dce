// The writing area: text before the caret, inserting accepted text, and where the caret is on screen.

// Styles that decide where text wraps; copied onto a hidden mirror to find the caret.
const MIRRORED_STYLES = [
  "boxSizing", "width", "borderTopWidth", "borderRightWidth", "borderBottomWidth", "borderLeftWidth",
  "paddingTop", "paddingRight", "paddingBottom", "paddingLeft", "fontFamily", "fontSize", "fontWeight",
  "fontStyle", "letterSpacing", "lineHeight", "textTransform", "wordSpacing", "tabSize", "textIndent",
];

export class Editor {
  constructor(textarea) {
    this.textarea = textarea;
    this.ghost = null; // the highlighted option, shown at the caret (see showGhost)
  }

  get text() {
    return this.textarea.value;
  }

  get caret() {
    return this.textarea.selectionEnd;
  }

  // The text the model continues. A long document sends only its end: the model reads at most
  // its context window (about 4000 characters for GPT-2), and the server caps a request's text.
  textBeforeCaret() {
    return this.tail(this.textarea.value.slice(0, this.textarea.selectionStart));
  }

  // The end of `text` that the server accepts (data-max-chars), never starting with half an emoji.
  tail(text) {
    const limit = Number(this.textarea.dataset.maxChars) || text.length;
    if (text.length <= limit) return text;
    const end = text.slice(-limit);
    return /^[\uDC00-\uDFFF]/.test(end) ? end.slice(1) : end;
  }

  restore(text, caret) {
    this.textarea.value = text;
    const position = Math.min(caret ?? text.length, text.length);
    this.textarea.setSelectionRange(position, position);
  }

  focus() {
    this.textarea.focus();
  }

  // Insert plain text at the caret as one undoable edit (Ctrl+Z takes it back).
  insertAtCaret(text) {
    this.textarea.focus();
    // execCommand("insertText") puts the edit on the browser's undo stack; it inserts text, never HTML
    const inserted = document.execCommand && document.execCommand("insertText", false, text);
    if (!inserted) {
      this.textarea.setRangeText(text, this.textarea.selectionStart, this.textarea.selectionEnd, "end");
      this.textarea.dispatchEvent(new Event("input", { bubbles: true }));
    }
  }

  // A copy of the text's layout: the same font, padding and width, so that text wraps as it does in the editor.
  mirror() {
    const style = getComputedStyle(this.textarea);
    const mirror = document.createElement("div");
    for (const name of MIRRORED_STYLES) mirror.style[name] = style[name]; // CSSOM, allowed by the page's CSP
    Object.assign(mirror.style, { position: "absolute", whiteSpace: "pre-wrap", overflowWrap: "break-word", overflow: "hidden" });
    return { mirror, style };
  }

  // The highlighted option as ghost text after the caret, as code editors and Smart Compose show theirs:
  // only where nothing but spaces follows the caret, so that it never covers the writer's own text.
  showGhost(text) {
    const after = this.textarea.value.slice(this.textarea.selectionEnd);
    if (!text || after.trim()) {
      this.hideGhost();
      return;
    }
    this.hideGhost();
    const { mirror } = this.mirror();
    mirror.className = "ghost";
    mirror.setAttribute("aria-hidden", "true"); // the listbox says the same to screen readers
    Object.assign(mirror.style, {
      top: `${this.textarea.offsetTop}px`, left: `${this.textarea.offsetLeft}px`, borderWidth: "0",
      width: `${this.textarea.clientWidth}px`, height: `${this.textarea.clientHeight}px`,
    });
    const before = document.createElement("span");
    before.className = "ghost-before";
    before.textContent = this.textarea.value.slice(0, this.textarea.selectionEnd);
    const ghost = document.createElement("span");
    ghost.className = "ghost-text";
    ghost.textContent = text;
    mirror.append(before, ghost);
    this.textarea.parentElement.appendChild(mirror);
    mirror.scrollTop = this.textarea.scrollTop;
    this.ghost = mirror;
  }

  hideGhost() {
    this.ghost?.remove();
    this.ghost = null;
  }

  // Pixel position of the caret inside the editor's wrapper, measured with a hidden mirror.
  caretPosition() {
    const { mirror, style } = this.mirror();
    Object.assign(mirror.style, { visibility: "hidden", top: "0", left: "0", height: "auto" });
    mirror.textContent = this.textarea.value.slice(0, this.textarea.selectionStart);
    const marker = document.createElement("span");
    marker.textContent = "\u200b";
    mirror.appendChild(marker);
    this.textarea.parentElement.appendChild(mirror);
    const lineHeight = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.4;
    const position = {
      top: this.textarea.offsetTop + marker.offsetTop - this.textarea.scrollTop,
      left: this.textarea.offsetLeft + marker.offsetLeft - this.textarea.scrollLeft,
      lineHeight,
    };
    mirror.remove();
    return position;
  }
}

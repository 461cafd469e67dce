// Which parts of the document the model wrote: character spans that follow the text as it is edited.

export class Provenance {
  constructor(text = "", spans = []) {
    this.text = text;
    this.spans = clean(spans, text.length);
  }

  // The document changed from this.text to `text` (typing, pasting, undo): spans after the edit
  // move with it, and characters inside the edited region are the writer's own from now on.
  update(text) {
    const old = this.text;
    if (text === old) return;
    let start = 0;
    while (start < old.length && start < text.length && old[start] === text[start]) start += 1;
    let tail = 0;
    while (tail < old.length - start && tail < text.length - start
           && old[old.length - 1 - tail] === text[text.length - 1 - tail]) tail += 1;
    const oldEnd = old.length - tail;
    const shift = text.length - old.length;
    const moved = [];
    for (const span of this.spans) {
      // the part before the edit stays, the part after it moves; what the edit replaced is gone
      if (span.start < start) moved.push({ ...span, end: Math.min(span.end, start) });
      if (span.end > oldEnd) moved.push({ ...span, start: Math.max(span.start, oldEnd) + shift, end: span.end + shift });
    }
    this.text = text;
    this.spans = clean(moved, text.length);
  }

  // Characters start..end of the current text were written by `model` (an accepted option).
  markModel(start, end, model) {
    const others = this.spans.filter((span) => span.end <= start || span.start >= end);
    this.spans = clean([...others, { start, end, model }], this.text.length);
  }

  // The text cut into runs: { text, model } where model is null for the writer's own text.
  runs() {
    const runs = [];
    let at = 0;
    for (const span of this.spans) {
      if (span.start > at) runs.push({ text: this.text.slice(at, span.start), model: null });
      runs.push({ text: this.text.slice(span.start, span.end), model: span.model });
      at = span.end;
    }
    if (at < this.text.length) runs.push({ text: this.text.slice(at), model: null });
    return runs;
  }

  modelCharacters() {
    return this.spans.reduce((sum, span) => sum + span.end - span.start, 0);
  }
}

// Sorted, inside the text, non-empty, and neighbours by the same model joined.
function clean(spans, length) {
  const sorted = spans
    .map((span) => ({ start: Math.max(0, span.start), end: Math.min(length, span.end), model: span.model ?? "model" }))
    .filter((span) => Number.isInteger(span.start) && Number.isInteger(span.end) && span.end > span.start)
    .sort((a, b) => a.start - b.start);
  const joined = [];
  for (const span of sorted) {
    const last = joined[joined.length - 1];
    if (last && span.start <= last.end && span.model === last.model) last.end = Math.max(last.end, span.end);
    else if (last && span.start < last.end) joined.push({ ...span, start: last.end });
    else joined.push(span);
  }
  return joined.filter((span) => span.end > span.start);
}

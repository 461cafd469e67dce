// Option sets: what one Tab (and the Tabs after it) produced, in one column per model (two in compare mode).

// One model's options in a set. It keeps every request id that wrote into it (a suggest, then
// its extends), so that late deltas still land.
export class Column {
  constructor(id, model, settings, count) {
    this.ids = new Set([id]);
    this.requestId = id;
    this.model = model;
    this.settings = settings;
    this.options = Array(count).fill("");
    this.finish = null;
    this.likelihood = null;
    this.streaming = true;
    this.sentAt = performance.now();
    this.firstMs = null; // Tab to first words, for this request
    this.longerWanted = 0; // Tabs again before the server had this set: each extends it once it has
    this.ahead = 0; // new requests before this one in the server's line, as it last said (`queued`)
  }

  // The server has the set (it can be extended) once its first words or its `done` came.
  get waitingForServer() {
    return this.streaming && this.firstMs === null;
  }

  waitedSeconds() {
    return Math.floor((performance.now() - this.sentAt) / 1000);
  }

  // A new request (an extend) writes on into this column.
  continueWith(id) {
    this.ids.add(id);
    this.requestId = id;
    this.streaming = true;
    this.sentAt = performance.now();
    this.firstMs = null;
    this.ahead = 0;
  }

  addDeltas(deltas) {
    deltas.forEach((text, i) => { if (i < this.options.length) this.options[i] += text; });
    if (this.firstMs === null && deltas.some(Boolean)) this.firstMs = performance.now() - this.sentAt;
  }

  // `done` of request `id`: the server's text is the truth; the latest request also says why and how likely.
  finishWith(id, { options, finish, likelihood, stats }) {
    if (options.length === this.options.length) this.options = [...options];
    if (id !== this.requestId) return;
    this.streaming = false;
    this.finish = finish;
    this.likelihood = likelihood;
    if (stats?.settings) this.settings = stats.settings; // what really wrote them (the teacher may lock some)
  }
}

export class OptionSet {
  constructor(columns) {
    this.columns = columns;
    this.taken = ""; // words already inserted from the set's options (Ctrl+→): each option shows what is left
  }

  // What is left of an option once `taken` is in the text; null for an option that does not go on from it.
  rest(text) {
    return text.startsWith(this.taken) ? text.slice(this.taken.length) : null;
  }

  get streaming() {
    return this.columns.some((column) => column.streaming);
  }

  columnOf(id) {
    return this.columns.find((column) => column.ids.has(id));
  }

  // Options are numbered across the columns, left to right, for the keyboard and the listbox.
  option(index) {
    let at = index;
    for (const column of this.columns) {
      if (at < column.options.length) return { column, text: column.options[at] };
      at -= column.options.length;
    }
    return null;
  }

  firstIndexOf(column) {
    let index = 0;
    for (const other of this.columns) {
      if (other === column) return index;
      index += other.options.length;
    }
    return -1;
  }
}

const WORDS = new Intl.Segmenter(undefined, { granularity: "word" });

// The start of `text` up to the end of its first word, with the spaces before and the punctuation
// right after it (" going," of " going, the"); a word is what the browser's segmenter finds (今日 too).
export function nextWord(text) {
  let end = 0;
  let seen = false;
  for (const { segment, isWordLike } of WORDS.segment(text)) {
    if (seen && (isWordLike || /^\s/.test(segment))) break;
    end += segment.length;
    seen ||= isWordLike;
  }
  return text.slice(0, end);
}

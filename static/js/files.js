// Export and import of a document: plain text, Markdown with the model's text marked, or JSON with everything.

export const FORMAT = "tabwrite-document";
const MD_META = /\n*<!-- tabwrite (\{.*\}) -->\s*$/s;

// `doc` is { text, spans: [{start, end, model}], model, settings }.
export function exportDocument(doc, kind) {
  if (kind === "txt") return { body: doc.text, type: "text/plain" };
  if (kind === "md") return { body: toMarkdown(doc), type: "text/markdown" };
  const json = { format: FORMAT, version: 1, exported: new Date().toISOString(), ...doc };
  return { body: JSON.stringify(json, null, 2), type: "application/json" };
}

// The inverse: a document from a file's name and text; throws an Error with a plain message.
export function importDocument(name, body) {
  const kind = name.toLowerCase().split(".").pop();
  if (kind === "json") return fromJson(body);
  if (kind === "md") return fromMarkdown(body);
  if (kind === "txt") return { text: body, spans: [] };
  throw new Error(`cannot import ${name}: choose a .txt, .md or .json file`);
}

// Model-written spans become <mark> elements (Markdown keeps HTML); the writer's own < and & are escaped.
function toMarkdown(doc) {
  let out = "";
  let at = 0;
  for (const span of doc.spans) {
    out += escape(doc.text.slice(at, span.start));
    out += `<mark title="written by ${escape(span.model, true)}">${escape(doc.text.slice(span.start, span.end))}</mark>`;
    at = span.end;
  }
  out += escape(doc.text.slice(at));
  const meta = { model: doc.model, settings: doc.settings };
  return `${out}\n\n<!-- tabwrite ${JSON.stringify(meta).replace(/--/g, "\\u002d\\u002d")} -->\n`;
}

function fromMarkdown(body) {
  const found = body.match(MD_META);
  const meta = found ? JSON.parse(found[1]) : {};
  const marked = found ? body.slice(0, found.index) : body;
  const pattern = /<mark(?: title="written by ([^"]*)")?>([\s\S]*?)<\/mark>/g;
  let text = "";
  const spans = [];
  let at = 0;
  for (const match of marked.matchAll(pattern)) {
    text += unescape(marked.slice(at, match.index));
    const inner = unescape(match[2]);
    spans.push({ start: text.length, end: text.length + inner.length, model: unescape(match[1] ?? meta.model ?? "model") });
    text += inner;
    at = match.index + match[0].length;
  }
  text += unescape(marked.slice(at));
  return { text, spans, model: meta.model, settings: meta.settings };
}

function fromJson(body) {
  let doc;
  try {
    doc = JSON.parse(body);
  } catch {
    throw new Error("this .json file is not valid JSON");
  }
  if (doc?.format !== FORMAT || typeof doc.text !== "string") {
    throw new Error("this .json file is not a TabWrite document (no \"format\": \"tabwrite-document\")");
  }
  const spans = Array.isArray(doc.spans) ? doc.spans.filter((s) => Number.isInteger(s?.start) && Number.isInteger(s?.end)) : [];
  return { text: doc.text, spans, model: doc.model, settings: doc.settings };
}

// Only what HTML inside Markdown needs: & and < everywhere, " inside an attribute.
function escape(text, attribute = false) {
  const escaped = String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;");
  return attribute ? escaped.replace(/"/g, "&quot;") : escaped;
}

function unescape(text) {
  return text.replace(/&quot;/g, "\"").replace(/&gt;/g, ">").replace(/&lt;/g, "<").replace(/&amp;/g, "&");
}

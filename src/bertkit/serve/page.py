"""GET / : one self-contained HTML page (no external scripts, styles or fonts) to try the served model.

It asks /info what the model does and shows the matching form: nearest example sentences for an
embedding model, label scores (classify), entities highlighted in the text (tag), the answer
highlighted in its context (qa), choice scores (choice), or candidates for each [MASK] (fill-mask).
Text from the user or the model is set with textContent, never parsed as HTML.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bertkit</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; margin-bottom: .2rem; }
  #model { color: #666; margin-bottom: 1rem; }
  label { display: block; margin: .6rem 0 .2rem; font-weight: 600; }
  textarea, input[type=text], input[type=password] { width: 100%; box-sizing: border-box; font: inherit; padding: .4rem; }
  button { margin-top: .6rem; font: inherit; padding: .35rem 1.2rem; }
  #status { color: #a33; margin-top: .6rem; min-height: 1.2rem; }
  .row { display: flex; align-items: center; gap: .6rem; margin: .2rem 0; }
  .row .name { flex: 0 0 14rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .row .bar { height: .8rem; background: #4a7bd0; }
  .row .num { color: #555; font-variant-numeric: tabular-nums; }
  .text { white-space: pre-wrap; padding: .6rem; background: #f6f6f6; border-radius: 4px; }
  mark { background: #ffe27a; padding: 0 .1rem; border-radius: 3px; }
  mark small { color: #775; margin-left: .2rem; font-size: .7rem; }
  .hidden { display: none; }
</style>
</head>
<body>
<h1>bertkit</h1>
<div id="model">loading…</div>
<div id="keybox" class="hidden">
  <label for="apikey">API key</label>
  <input id="apikey" type="password" autocomplete="off">
</div>
<form id="form">
  <label id="label1" for="text">Text</label>
  <textarea id="text" rows="3"></textarea>
  <div id="second" class="hidden">
    <label id="label2" for="text2">Second text</label>
    <textarea id="text2" rows="5"></textarea>
  </div>
  <button id="run" type="submit">Run</button>
</form>
<div id="status"></div>
<div id="result"></div>
<script>
"use strict";
const EXAMPLES = [
  "A man is playing a guitar.",
  "Someone is strumming a guitar on stage.",
  "The stock market fell sharply today.",
  "Shares dropped as investors worried about inflation.",
  "The cat is sleeping on the sofa.",
  "A dog runs across the park chasing a ball.",
  "It will rain tomorrow in the north of the country.",
  "The weather forecast says sunny skies all week.",
  "She is cooking pasta for dinner.",
  "The recipe needs flour, eggs and butter.",
  "The team won the football match in the last minute.",
  "The new phone has a faster processor and a better camera.",
];
const FORMS = {
  "embed": ["Text", null, "A man plays the guitar."],
  "classify": ["Text", "Second text (optional, for pairs)", "What a wonderful day!"],
  "tag": ["Text", null, "John Smith lives in New York."],
  "qa": ["Question", "Context", "Where does John live?"],
  "choice": ["Context", "Choices, one per line", "The writer woke up early."],
  "fill-mask": ["Text with [MASK]", null, "The capital of France is [MASK]."],
};
const $ = (id) => document.getElementById(id);
let info = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

async function call(path, body) {
  const headers = {"Content-Type": "application/json"};
  const key = $("apikey").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  const response = await fetch(path, body === undefined ? {headers} : {method: "POST", headers, body: JSON.stringify(body)});
  const data = await response.json();
  if (!response.ok) {
    if (response.status === 401) $("keybox").classList.remove("hidden");
    throw new Error(data.error || response.statusText);
  }
  return data;
}

function bars(rows) {  // rows: [name, value in 0..1, shown number]
  const box = el("div");
  for (const [name, value, shown] of rows) {
    const row = el("div", null, "row");
    row.appendChild(el("span", name, "name"));
    const bar = el("span", null, "bar");
    bar.style.width = Math.max(0, Math.min(1, value)) * 16 + "rem";
    row.appendChild(bar);
    row.appendChild(el("span", shown.toFixed(3), "num"));
    box.appendChild(row);
  }
  return box;
}

function highlighted(text, spans) {  // spans: [start, end, label], sorted, not overlapping
  const box = el("div", null, "text");
  let at = 0;
  for (const [start, end, label] of spans) {
    box.appendChild(document.createTextNode(text.slice(at, start)));
    const mark = el("mark", text.slice(start, end));
    if (label) mark.appendChild(el("small", label));
    box.appendChild(mark);
    at = end;
  }
  box.appendChild(document.createTextNode(text.slice(at)));
  return box;
}

async function nearest(text) {
  const data = await call("/v1/embeddings", {input: [text, ...EXAMPLES], model: info.model, encoding_format: "float"});
  const [query, ...rest] = data.data.map((d) => d.embedding);
  const dot = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0);
  const scored = rest.map((v, i) => [EXAMPLES[i], dot(query, v)]).sort((a, b) => b[1] - a[1]);
  const out = el("div");
  out.appendChild(el("p", "Nearest example sentences (cosine similarity):"));
  out.appendChild(bars(scored.map(([s, c]) => [s, (c + 1) / 2, c])));
  return out;
}

async function predict(text, text2) {
  const task = info.task;
  let input = text;
  if (task === "classify" && text2.trim()) input = {text, text_pair: text2};
  if (task === "qa") input = {question: text, context: text2};
  if (task === "choice") input = {context: text, choices: text2.split("\\n").filter((c) => c.trim())};
  const p = await call("/predict", {inputs: input, truncate: true});
  const out = el("div");
  if (task === "classify") {
    const label = Array.isArray(p.label) ? (p.label.join(", ") || "(none)") : String(p.label);
    out.appendChild(el("p", "Label: " + label));
    if (p.scores) out.appendChild(bars(Object.entries(p.scores).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v, v])));
  } else if (task === "tag") {
    if (p.entities) {
      const spans = p.entities.filter((e) => e.start_char !== undefined).map((e) => [e.start_char, e.end_char, e.type]);
      out.appendChild(highlighted(text, spans));
      out.appendChild(el("p", p.entities.length + " entities"));
    } else {
      out.appendChild(el("div", p.tokens.map((w, i) => w + "/" + p.tags[i]).join(" "), "text"));
    }
  } else if (task === "qa") {
    out.appendChild(el("p", p.answer ? "Answer: " + p.answer + " (score " + p.score.toFixed(3) + ")" : "No answer"));
    out.appendChild(highlighted(text2, p.start === null ? [] : [[p.start, p.end, null]]));
  } else if (task === "choice") {
    out.appendChild(el("p", "Choice: " + p.choice));
    out.appendChild(bars(p.choices.map((c, i) => [c, p.scores[i], p.scores[i]])));
  }
  return out;
}

async function fill(text) {
  const masks = await call("/fill-mask", {inputs: text, truncate: true});
  const out = el("div");
  masks.forEach((candidates, i) => {
    out.appendChild(el("p", "[MASK] " + (i + 1) + ":"));
    out.appendChild(bars(candidates.map((c) => [c.token, c.score, c.score])));
  });
  return out;
}

async function run(event) {
  event.preventDefault();
  const text = $("text").value, text2 = $("text2").value;
  $("status").textContent = "";
  if (!text.trim()) { $("status").textContent = "Type some text first."; return; }
  $("run").disabled = true;
  try {
    const task = info ? info.task : "embed";
    const out = task === "embed" ? await nearest(text) : task === "fill-mask" ? await fill(text) : await predict(text, text2);
    out.id = "answer";
    $("result").replaceChildren(out);
  } catch (e) {
    $("status").textContent = e.message;
  } finally {
    $("run").disabled = false;
  }
}

async function load() {
  try {
    info = await call("/info");
  } catch (e) {
    $("status").textContent = e.message;
    return;
  }
  const [first, second, example] = FORMS[info.task] || FORMS.embed;
  $("model").textContent = info.model + " (" + info.task + (info.labels ? ": " + info.labels.join(", ") : "") +
    ") \\u2014 bertkit " + info.version;
  $("label1").textContent = first;
  $("text").placeholder = example;
  if (second) { $("label2").textContent = second; $("second").classList.remove("hidden"); }
  if (info.api_key) $("keybox").classList.remove("hidden");
}

$("form").addEventListener("submit", run);
$("apikey").addEventListener("change", () => { if (!info) load(); });
load();
</script>
</body>
</html>
"""

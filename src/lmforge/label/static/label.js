// Keyboard-first labelling. The page is rendered by the server; this script only sends answers
// and, for NER, edits the highlighted spans. A pairwise page sends the key pressed (A = left,
// B = right, tie, both_bad); the server knows which answer is on which side. Offsets sent to the server count Unicode code points
// (Python's str indices), not the UTF-16 units JavaScript strings use.
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("config").textContent);
  const status = document.getElementById("status");
  const comment = document.getElementById("comment");
  let spans = (cfg.spans || []).map((s) => s.slice());
  let busy = false;

  function say(message, isError) {
    if (!status) return;
    status.textContent = message;
    status.classList.toggle("error", !!isError);
  }

  async function post(url, body) {
    if (busy) return null;
    busy = true;
    say("saving…");
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body || {}),
      });
      const data = await res.json();
      if (!res.ok) throw new Error(data.detail || res.statusText);
      return data;
    } catch (err) {
      say("not saved: " + err.message, true);
      busy = false;
      return null;
    }
  }

  async function go(url, body) {
    const data = await post(url, body);
    if (data && data.next) window.location.assign(data.next);
  }

  function answer(extra) {
    return go("/api/answer", Object.assign({ item: cfg.item, comment: comment ? comment.value : "" }, extra));
  }

  // ---------------------------------------------------------------- NER spans
  const textBox = document.getElementById("text");
  const cpLen = (s) => Array.from(s).length;

  function render() {
    const chars = Array.from(cfg.text);
    const sorted = spans.slice().sort((a, b) => a[0] - b[0]);
    textBox.textContent = "";
    let pos = 0;
    const piece = (start, end, label) => {
      const el = document.createElement(label ? "mark" : "span");
      el.dataset.start = String(start);
      el.textContent = chars.slice(start, end).join("");
      if (label) {
        el.dataset.label = label;
        el.style.background = cfg.colours[label] || "#ffd166";
        el.title = label + " (click to remove)";
        const sup = document.createElement("sup");
        sup.textContent = label;
        el.appendChild(sup);
      }
      textBox.appendChild(el);
    };
    for (const [s, e, label] of sorted) {
      if (s > pos) piece(pos, s);
      piece(s, e, label);
      pos = e;
    }
    if (pos < chars.length || !sorted.length) piece(pos, chars.length);
  }

  function offsetOf(node, offset) {
    // a position inside the text box -> code point offset in the item's text
    const el = node.nodeType === Node.TEXT_NODE ? node.parentElement : node;
    const seg = el && el.closest("[data-start]");
    if (!seg || !textBox.contains(seg) || el.tagName === "SUP") return null;
    const text = node.nodeType === Node.TEXT_NODE ? node.data : "";
    return Number(seg.dataset.start) + cpLen(text.slice(0, offset));
  }

  function tagSelection(label) {
    const sel = window.getSelection();
    if (!sel || sel.rangeCount === 0 || sel.isCollapsed) {
      say("select some text first, then press the label's number", true);
      return;
    }
    const range = sel.getRangeAt(0);
    let start = offsetOf(range.startContainer, range.startOffset);
    let end = offsetOf(range.endContainer, range.endOffset);
    if (start === null || end === null) return say("select text inside the item", true);
    const chars = Array.from(cfg.text);
    while (start < end && /\s/.test(chars[start])) start++;
    while (end > start && /\s/.test(chars[end - 1])) end--;
    if (start >= end) return say("the selection is empty", true);
    if (spans.some(([s, e]) => start < e && s < end)) return say("that overlaps a highlighted span; remove it first", true);
    spans.push([start, end, label]);
    sel.removeAllRanges();
    render();
    say("tagged " + label + ": " + chars.slice(start, end).join(""));
  }

  if (cfg.kind === "ner" && textBox) {
    textBox.addEventListener("click", (e) => {
      const mark = e.target.closest("mark");
      if (!mark) return;
      const start = Number(mark.dataset.start);
      spans = spans.filter((s) => s[0] !== start);
      render();
    });
    const save = document.getElementById("save");
    if (save) save.addEventListener("click", () => answer({ spans: spans }));
  }

  // ---------------------------------------------------------------- buttons and keys
  const PAIR_KEYS = { a: "A", b: "B", t: "tie", x: "both_bad" };
  document.querySelectorAll("#choices button[data-choice]").forEach((button) => {
    button.addEventListener("click", () => answer({ choice: button.dataset.choice }));
  });

  document.querySelectorAll("#labels button[data-label]").forEach((button) => {
    button.addEventListener("click", () => {
      if (cfg.kind === "ner") tagSelection(button.dataset.label);
      else answer({ label: button.dataset.label });
    });
  });

  document.addEventListener("keydown", (e) => {
    // Never act while an input method is composing (Chinese pinyin, Japanese kana...).
    if (e.isComposing || e.keyCode === 229) return;
    if (e.target === comment) {
      if (e.key === "Escape" || e.key === "Enter") {
        e.preventDefault();
        comment.blur();
      }
      return; // typing in the comment box never triggers a shortcut
    }
    if (e.altKey || e.metaKey) return;
    if ((e.ctrlKey && e.key.toLowerCase() === "z") || (!e.ctrlKey && e.key === "u")) {
      e.preventDefault();
      go("/api/undo");
      return;
    }
    if (e.ctrlKey || !cfg.item) return;
    const pairChoice = cfg.kind === "pairwise" ? PAIR_KEYS[e.key.toLowerCase()] : undefined;
    if (pairChoice) {
      e.preventDefault();
      answer({ choice: pairChoice });
    } else if (/^[1-9]$/.test(e.key) && cfg.kind !== "pairwise") {
      const label = cfg.labels[Number(e.key) - 1];
      if (!label) return;
      e.preventDefault();
      if (cfg.kind === "ner") tagSelection(label);
      else answer({ label: label });
    } else if (e.key === "Enter" && cfg.kind !== "pairwise") {
      e.preventDefault();
      if (cfg.kind === "ner") answer({ spans: spans });
      else if (cfg.suggestion && cfg.suggestion.label) answer({ label: cfg.suggestion.label });
      else say("no suggestion to accept; press a number", true);
    } else if (e.key === "s") {
      e.preventDefault();
      go("/api/skip", { item: cfg.item });
    } else if (e.key === "c" && comment) {
      e.preventDefault();
      comment.focus();
    }
  });

  if (cfg.choice) {
    const chosen = document.querySelector('#choices button[data-choice="' + CSS.escape(cfg.choice) + '"]');
    if (chosen) chosen.classList.add("chosen");
  }
  if (cfg.answer && cfg.answer.label) {
    const chosen = document.querySelector('#labels button[data-label="' + CSS.escape(cfg.answer.label) + '"]');
    if (chosen) chosen.classList.add("chosen");
  }
  document.body.dataset.ready = "1";
})();

// The chat page of `expo-gguf serve`: plain JavaScript, no build step, no request to any other host.
// Text from the model or the user reaches the page only through textContent and createElement
// (the markdown renderer below builds nodes; it never parses HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_ITEM = "expo-gguf.api-key";
const SYSTEM_ITEM = "expo-gguf.system";
const TEMP_ITEM = "expo-gguf.temperature";
const MAX_ITEM = "expo-gguf.max-tokens";

const state = {
  info: { model: "", n_ctx: 0, auth: false, logging: true },
  conv: { id: null, messages: [] }, // messages: {role, content, cut?, stats?, error?}
  controller: null,
  keyWaiters: null,
};

// ---------- small DOM helpers ----------

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function button(label, cls, onClick, title) {
  const b = el("button", cls, label);
  b.type = "button";
  if (title) {
    b.title = title;
    b.setAttribute("aria-label", title);
  }
  b.addEventListener("click", onClick);
  return b;
}

// ---------- markdown: a small renderer that only ever creates nodes ----------

const INLINE = new RegExp(
  [
    "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)", // 1,2 code span
    "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*(?!\\*)", // 3 strong
    "__(?=\\S)([\\s\\S]*?\\S)__(?!\\w)", // 4 strong
    "\\*(?=[^\\s*])([\\s\\S]*?[^\\s*])\\*", // 5 em
    "(?<![\\w])_(?=[^\\s_])([\\s\\S]*?[^\\s_])_(?!\\w)", // 6 em
    "~~(?=\\S)([\\s\\S]*?\\S)~~", // 7 strike
    "\\[([^\\]\\n]+)\\]\\(\\s*<?([^\\s)>]+)>?(?:\\s+\"[^\"\\n]*\")?\\s*\\)", // 8,9 link
    "(https?:\\/\\/[^\\s<>\"'`]*[^\\s<>\"'`.,;:!?)\\]])", // 10 bare URL
    "<(https?:\\/\\/[^\\s<>]+)>", // 11 autolink
  ].join("|"),
  "g",
);

function safeUrl(href) {
  try {
    const url = new URL(href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function link(label, href, noLinks) {
  const url = safeUrl(href);
  if (!url || noLinks) return null;
  const a = el("a");
  a.href = url;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  if (label === null) a.textContent = href;
  else renderInline(label, a, true);
  return a;
}

function renderInline(text, parent, noLinks = false) {
  let last = 0;
  INLINE.lastIndex = 0;
  const matches = [...text.matchAll(INLINE)];
  for (const m of matches) {
    if (m.index < last) continue;
    if (m.index > last) parent.append(text.slice(last, m.index));
    let node = null;
    if (m[1] !== undefined) node = el("code", null, m[2].length > 2 && /^ .* $/.test(m[2]) ? m[2].slice(1, -1) : m[2]);
    else if (m[3] !== undefined || m[4] !== undefined) renderInline(m[3] ?? m[4], (node = el("strong")), noLinks);
    else if (m[5] !== undefined || m[6] !== undefined) renderInline(m[5] ?? m[6], (node = el("em")), noLinks);
    else if (m[7] !== undefined) renderInline(m[7], (node = el("del")), noLinks);
    else if (m[8] !== undefined) node = link(m[8], m[9], noLinks);
    else if (m[10] !== undefined) node = link(null, m[10], noLinks);
    else if (m[11] !== undefined) node = link(null, m[11], noLinks);
    parent.append(node ?? m[0]);
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function inlineWithBreaks(lines, parent) {
  // a line ending in two spaces or a backslash is a hard break; other newlines stay soft
  lines.forEach((line, i) => {
    const hard = / {2,}$|\\$/.test(line);
    renderInline(i < lines.length - 1 ? line.replace(/ {2,}$|\\$/, "") : line.trimEnd(), parent);
    if (i < lines.length - 1) parent.append(hard ? el("br") : "\n");
  });
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(\s+|$)(.*)$/;
const QUOTE = /^ {0,3}> ?/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || ITEM.test(line) || QUOTE.test(line);
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function copyText(text, b) {
  const done = () => {
    b.textContent = "Copied";
    setTimeout(() => (b.textContent = "Copy"), 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => (b.textContent = "Copy failed"));
  } else {
    // a page served to another machine over plain http has no clipboard API
    const area = el("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    try {
      document.execCommand("copy");
      done();
    } catch {
      b.textContent = "Copy failed";
    }
    area.remove();
  }
}

function codeBlock(lang, text) {
  const box = el("div", "code");
  const head = el("div", "code-head");
  head.append(el("span", "lang", lang || "text"));
  const copy = button("Copy", "copy", () => copyText(text, copy), "Copy the code");
  head.append(copy);
  const pre = el("pre");
  pre.append(el("code", null, text));
  box.append(head, pre);
  return box;
}

function renderBlocks(text, parent) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    let m;
    if ((m = line.match(FENCE))) {
      const fence = m[1];
      const body = [];
      i++;
      while (i < lines.length && !new RegExp(`^ {0,3}${fence[0]}{${fence.length},}\\s*$`).test(lines[i])) {
        body.push(lines[i++]);
      }
      i++; // the closing fence (or the end of a reply still streaming)
      parent.append(codeBlock(m[2], body.join("\n")));
    } else if ((m = line.match(HEADING))) {
      const h = el("h" + m[1].length);
      renderInline(m[2] || "", h);
      parent.append(h);
      i++;
    } else if (RULE.test(line)) {
      parent.append(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && lines[i].trim() && (QUOTE.test(lines[i]) || !startsBlock(lines[i]))) {
        body.push(lines[i++].replace(QUOTE, ""));
      }
      const q = el("blockquote");
      renderBlocks(body.join("\n"), q);
      parent.append(q);
    } else if ((m = line.match(ITEM))) {
      i = renderList(lines, i, parent);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const wrap = el("div", "table");
      const table = el("table");
      const head = el("tr");
      for (const c of splitRow(line)) renderInline(c, head.appendChild(el("th")));
      table.appendChild(el("thead")).append(head);
      const tbody = table.appendChild(el("tbody"));
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
        const tr = tbody.appendChild(el("tr"));
        for (const c of splitRow(lines[i++])) renderInline(c, tr.appendChild(el("td")));
      }
      wrap.append(table);
      parent.append(wrap);
    } else {
      const body = [];
      while (i < lines.length && lines[i].trim() && !(body.length && startsBlock(lines[i]))) {
        body.push(lines[i++].replace(/^\s+/, ""));
      }
      const p = el("p");
      inlineWithBreaks(body, p);
      parent.append(p);
    }
  }
}

function renderList(lines, i, parent) {
  const first = lines[i].match(ITEM);
  const ordered = /\d/.test(first[2]);
  const list = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let loose = false;
  const items = [];
  while (i < lines.length) {
    const m = lines[i].match(ITEM);
    if (!m || /\d/.test(m[2]) !== ordered) break;
    const indent = m[1].length + m[2].length + Math.min(m[3].length || 1, 4);
    const body = [m[4]];
    i++;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        // a blank line: the item goes on only if what follows is indented under it
        let j = i;
        while (j < lines.length && !lines[j].trim()) j++;
        if (j < lines.length && lines[j].search(/\S/) >= indent) {
          for (; i < j; i++) body.push("");
          loose = true;
          continue;
        }
        if (j < lines.length && ITEM.test(lines[j]) && lines[j].search(/\S/) < indent) loose = true;
        i = j;
        break;
      }
      const lead = line.search(/\S/);
      if (lead >= indent) body.push(line.slice(indent));
      else if (ITEM.test(line) || startsBlock(line)) break;
      else body.push(line.trim()); // a lazy continuation of the item's paragraph
      i++;
    }
    items.push(body.join("\n"));
    if (i < lines.length && !ITEM.test(lines[i])) break;
  }
  for (const body of items) {
    const li = el("li");
    renderBlocks(body, li);
    if (!loose && li.children.length && li.firstElementChild.tagName === "P") {
      // a tight list: the item's first paragraph without its margins
      const p = li.firstElementChild;
      p.replaceWith(...p.childNodes);
    }
    list.append(li);
  }
  parent.append(list);
  return i;
}

function renderMarkdown(text, parent) {
  parent.replaceChildren();
  renderBlocks(text, parent);
}

// ---------- the server's API ----------

function askKey(why) {
  const dialog = $("key-dialog");
  $("key-why").textContent = why;
  $("key-input").value = "";
  if (!state.keyWaiters) {
    state.keyWaiters = [];
    dialog.showModal();
  }
  return new Promise((resolve) => state.keyWaiters.push(resolve));
}

async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = sessionStorage.getItem(KEY_ITEM);
    if (key) headers.set("Authorization", "Bearer " + key);
    const res = await fetch(path, { ...options, headers });
    if (res.status !== 401) return res;
    sessionStorage.removeItem(KEY_ITEM);
    await askKey(
      key
        ? "That key was refused. Enter the API key this server was started with."
        : "This server asks for an API key (the one given to expo-gguf serve --api-key).",
    );
  }
}

async function errorText(res) {
  try {
    const body = await res.json();
    if (body && body.error) return body.error.message || JSON.stringify(body.error);
    return JSON.stringify(body);
  } catch {
    return `${res.status} ${res.statusText}`;
  }
}

// ---------- the thread ----------

function statsText(m) {
  const parts = [];
  const s = m.stats || {};
  if (s.tokens_per_s) parts.push(`${s.tokens_per_s.toFixed(1)} tokens/s`);
  if (s.context_used) parts.push(`context ${s.context_used}/${s.n_ctx || state.info.n_ctx}`);
  else if (s.tokens) parts.push(`${s.tokens} tokens`);
  if (s.ttft_s) parts.push(`first token ${s.ttft_s.toFixed(2)} s`);
  if (m.cut === "interrupted") parts.push("interrupted");
  else if (m.cut === "length") parts.push("cut: length");
  else if (m.cut) parts.push("cut: " + m.cut);
  return parts.join(" · ");
}

function busy() {
  return state.controller !== null;
}

function renderThread() {
  const list = $("messages");
  list.replaceChildren();
  const msgs = state.conv.messages;
  $("empty").hidden = msgs.length > 0;
  msgs.forEach((m, i) => list.append(messageNode(m, i, i === msgs.length - 1)));
}

function messageNode(m, i, isLast) {
  const li = el("li", "msg " + m.role + (m.error ? " error" : ""));
  li.dataset.index = i;
  const who = el("div", "who", m.role === "user" ? "You" : m.error ? "Error" : state.info.model || "Assistant");
  const body = el("div", "body");
  if (m.role === "user" || m.error) body.textContent = m.content;
  else renderMarkdown(m.content, body);
  if (m.pending && !m.content) body.append(el("span", "typing", "…"));
  li.append(who, body);
  m.node = body;
  const meta = el("div", "meta");
  meta.append(el("span", "stats", statsText(m)));
  const actions = el("span", "actions");
  if (!m.pending && !busy()) {
    if (m.role === "user") actions.append(button("Edit", "edit link-button", () => startEdit(li, i), "Edit and resend"));
    if (m.role === "assistant" && !m.error) {
      const copy = button("Copy", "copy-reply link-button", () => copyText(m.content, copy), "Copy the reply");
      actions.append(copy);
    }
    if (m.role === "assistant" && isLast) actions.append(button("Regenerate", "regen link-button", regenerate, "Answer again"));
  }
  meta.append(actions);
  li.append(meta);
  m.meta = meta;
  return li;
}

function startEdit(li, i) {
  if (busy()) return;
  const m = state.conv.messages[i];
  const box = el("div", "edit-box");
  const area = el("textarea", "edit-input");
  area.value = m.content;
  area.rows = Math.min(12, m.content.split("\n").length + 1);
  const row = el("div", "row end");
  const cancel = button("Cancel", null, renderThread);
  const save = button("Send", "primary save-edit", () => {
    const text = area.value.trim();
    if (!text) return;
    // what followed the edited message goes; the edited thread is a new conversation
    state.conv.messages = state.conv.messages.slice(0, i);
    state.conv.messages.push({ role: "user", content: text });
    state.conv.id = null;
    generate();
  });
  area.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      save.click();
    } else if (e.key === "Escape") renderThread();
  });
  row.append(cancel, save);
  box.append(area, row);
  li.querySelector(".body").replaceWith(box);
  li.querySelector(".meta").remove();
  area.focus();
}

function nearBottom() {
  const t = $("thread");
  return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
}

function scrollDown() {
  const t = $("thread");
  t.scrollTop = t.scrollHeight;
}

function setBusy(controller) {
  state.controller = controller;
  $("send").hidden = controller !== null;
  $("stop").hidden = controller === null;
  document.body.classList.toggle("busy", controller !== null);
}

async function send() {
  const input = $("input");
  const text = input.value.trim();
  if (!text || busy()) return;
  input.value = "";
  grow(input);
  state.conv.messages.push({ role: "user", content: text });
  await generate();
}

function regenerate() {
  const msgs = state.conv.messages;
  if (busy() || !msgs.length || msgs[msgs.length - 1].role !== "assistant") return;
  msgs.pop(); // the server keeps the old reply as an alternative
  generate();
}

function requestMessages() {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({ role: "system", content: system });
  for (const m of state.conv.messages) if (!m.error && !m.pending) out.push({ role: m.role, content: m.content });
  return out;
}

async function generate() {
  const body = {
    model: state.info.model,
    messages: requestMessages(),
    stream: true,
    temperature: parseFloat($("temperature").value),
  };
  const most = parseInt($("max-tokens").value, 10);
  if (most > 0) body.max_tokens = most;
  if (state.conv.id) body.conversation_id = state.conv.id;
  const reply = { role: "assistant", content: "", pending: true };
  const controller = new AbortController();
  setBusy(controller);
  state.conv.messages.push(reply);
  renderThread();
  scrollDown();
  let drawn = 0;
  const draw = () => {
    if (drawn === reply.content.length) return;
    const follow = nearBottom();
    drawn = reply.content.length;
    renderMarkdown(reply.content, reply.node);
    if (follow) scrollDown();
  };
  const timer = setInterval(draw, 60);
  try {
    const res = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!res.ok) throw new Error(await errorText(res));
    state.conv.id = res.headers.get("X-Conversation-Id") || state.conv.id;
    await readEvents(res, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      if (chunk.conversation_id) state.conv.id = chunk.conversation_id;
      const choice = (chunk.choices || [])[0];
      if (choice && choice.delta && choice.delta.content) reply.content += choice.delta.content;
      if (choice && choice.finish_reason && choice.finish_reason !== "stop") reply.cut = choice.finish_reason;
      if (chunk.timings) reply.stats = { ...chunk.timings, tokens: chunk.usage && chunk.usage.completion_tokens };
    });
  } catch (e) {
    if (controller.signal.aborted) reply.cut = "interrupted";
    else {
      if (!reply.content) {
        reply.error = true;
        reply.content = String(e.message || e);
      } else reply.cut = "error: " + String(e.message || e);
    }
  } finally {
    clearInterval(timer);
    delete reply.pending;
    setBusy(null);
    const follow = nearBottom();
    renderThread();
    if (follow) scrollDown();
    $("input").focus();
    loadList();
  }
}

async function readEvents(res, onChunk) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, "");
      buffer = buffer.slice(nl + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      if (data) onChunk(JSON.parse(data));
    }
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

// ---------- the conversations kept by the server ----------

function when(t) {
  const ms = typeof t === "number" ? t * 1000 : Date.parse(t);
  if (!ms) return "";
  const d = new Date(ms);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toLocaleDateString([], { month: "short", day: "numeric", year: d.getFullYear() === now.getFullYear() ? undefined : "numeric" });
}

let listSeq = 0;
async function loadList() {
  const seq = ++listSeq;
  const note = $("conv-note");
  if (!state.info.logging) {
    $("conv-list").replaceChildren();
    note.textContent = "This server keeps no conversations (started with --no-log).";
    note.hidden = false;
    return;
  }
  const q = $("search").value.trim();
  let items;
  try {
    const res = await api("/api/conversations?n=50" + (q ? "&q=" + encodeURIComponent(q) : ""));
    if (!res.ok) throw new Error(await errorText(res));
    items = await res.json();
  } catch (e) {
    note.textContent = "Cannot list the conversations: " + (e.message || e);
    note.hidden = false;
    return;
  }
  if (seq !== listSeq) return;
  note.hidden = items.length > 0;
  note.textContent = q ? "No conversation holds these words." : "No conversations yet.";
  const list = $("conv-list");
  list.replaceChildren(
    ...items.map((c) => {
      const li = el("li", "conv" + (c.id === state.conv.id ? " current" : ""));
      li.dataset.id = c.id;
      const open = el("button", "open");
      open.type = "button";
      open.append(el("span", "first", c.first_line || "(empty)"));
      const turns = c.turns === 1 ? "1 turn" : `${c.turns} turns`;
      open.append(el("span", "when dim", `${when(c.updated)} · ${turns}`));
      open.addEventListener("click", () => openConversation(c.id));
      const del = button("\u2715", "delete icon", () => deleteConversation(c.id, c.first_line), "Delete this conversation");
      li.append(open, del);
      return li;
    }),
  );
}

async function openConversation(id) {
  if (busy()) stop();
  const res = await api("/api/conversations/" + encodeURIComponent(id));
  if (!res.ok) {
    $("conv-note").textContent = await errorText(res);
    $("conv-note").hidden = false;
    return;
  }
  const conv = await res.json();
  state.conv = {
    id: conv.id,
    messages: (conv.messages || [])
      .filter((m) => !m.replaced && (m.role === "user" || m.role === "assistant"))
      .map((m) => ({
        role: m.role,
        content: m.content,
        cut: m.cut || undefined,
        stats: m.role === "assistant" ? { tokens: m.tokens, tokens_per_s: m.tokens_per_s, ttft_s: m.ttft_s } : undefined,
      })),
  };
  $("system").value = conv.system || "";
  renderThread();
  scrollDown();
  closeSide();
  for (const li of $("conv-list").children) li.classList.toggle("current", li.dataset.id === id);
}

async function deleteConversation(id, firstLine) {
  if (!confirm(`Delete the conversation "${(firstLine || "").slice(0, 60)}"?`)) return;
  const res = await api("/api/conversations/" + encodeURIComponent(id), { method: "DELETE" });
  if (!res.ok) alert(await errorText(res));
  if (state.conv.id === id) newChat();
  loadList();
}

function newChat() {
  if (busy()) stop();
  state.conv = { id: null, messages: [] };
  $("system").value = localStorage.getItem(SYSTEM_ITEM) || "";
  renderThread();
  for (const li of $("conv-list").children) li.classList.remove("current");
  closeSide();
  $("input").focus();
}

// ---------- layout and input ----------

function grow(area) {
  area.style.height = "auto";
  area.style.height = Math.min(area.scrollHeight + 2, 240) + "px";
  area.style.overflowY = area.scrollHeight + 2 > 240 ? "auto" : "hidden";
}

function openSide() {
  document.body.classList.add("side-open");
  $("scrim").hidden = false;
}

function closeSide() {
  document.body.classList.remove("side-open");
  $("scrim").hidden = true;
}

function showTemperature() {
  $("temperature-value").textContent = parseFloat($("temperature").value).toFixed(2);
}

async function start() {
  const input = $("input");
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  input.addEventListener("input", () => grow(input));
  if (matchMedia("(max-width: 760px)").matches) input.placeholder = "Message";
  $("stop").addEventListener("click", stop);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && busy()) stop();
  });
  $("new-chat").addEventListener("click", newChat);
  $("open-side").addEventListener("click", openSide);
  $("close-side").addEventListener("click", closeSide);
  $("scrim").addEventListener("click", closeSide);
  let searchTimer = null;
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(loadList, 250);
  });
  $("settings-toggle").addEventListener("click", () => {
    const open = $("settings").hidden;
    $("settings").hidden = !open;
    $("settings-toggle").setAttribute("aria-expanded", String(open));
  });
  $("system").value = localStorage.getItem(SYSTEM_ITEM) || "";
  $("system").addEventListener("input", () => localStorage.setItem(SYSTEM_ITEM, $("system").value));
  const temp = localStorage.getItem(TEMP_ITEM);
  if (temp !== null) $("temperature").value = temp;
  showTemperature();
  $("temperature").addEventListener("input", () => {
    localStorage.setItem(TEMP_ITEM, $("temperature").value);
    showTemperature();
  });
  $("max-tokens").value = localStorage.getItem(MAX_ITEM) || "";
  $("max-tokens").addEventListener("input", () => localStorage.setItem(MAX_ITEM, $("max-tokens").value));
  $("key-form").addEventListener("submit", () => {
    const key = $("key-input").value.trim();
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    const waiters = state.keyWaiters || [];
    state.keyWaiters = null;
    waiters.forEach((w) => w());
  });
  $("key-dialog").addEventListener("cancel", (e) => e.preventDefault());

  try {
    const res = await fetch("/api/info");
    if (res.ok) state.info = { ...state.info, ...(await res.json()) };
  } catch {
    // the page still works against any server with the OpenAI endpoints
  }
  $("model-name").textContent = state.info.model || "expo-gguf";
  $("model-ctx").textContent = state.info.n_ctx ? `context ${state.info.n_ctx}` : "";
  document.title = (state.info.model ? state.info.model + " · " : "") + "expo-gguf chat";
  if (state.info.auth && !sessionStorage.getItem(KEY_ITEM)) {
    await askKey("This server asks for an API key (the one given to expo-gguf serve --api-key).");
  }
  renderThread();
  loadList();
  grow(input);
  input.focus();
}

document.addEventListener("DOMContentLoaded", start);

// for tests of the renderer alone
window.expoMarkdown = renderMarkdown;

// RecThinker page: pick a user, stream one agent run from POST /v1/recommend/stream (Server-Sent Events over
// fetch, since EventSource cannot POST) and render each turn as it arrives. All model and dataset text goes
// through textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
let selectedUser = null;
let items = {}; // id -> {id, title, line}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = "status" + (isError ? " error" : "");
}

function itemNode(tag, it) {
  // the id in small print, unless the line already shows it (ML-1M item ids are "Title (year)")
  const node = el(tag, {}, it.line);
  if (it.id !== it.title && !it.line.startsWith(it.id)) node.append(el("span", { class: "id" }, it.id));
  return node;
}

async function loadHealth() {
  try {
    const r = await fetch("/healthz");
    const h = await r.json();
    $("health").textContent = `dataset ${h.dataset} · model ${h.model} · ${h.max_concurrency} slots`;
    if (!h.ready) {
      // 503: the model back end cannot be reached; runs are refused until it can
      $("health").textContent += ` · not ready: ${h.reason}`;
      $("health").classList.add("error");
    }
  } catch (e) {
    $("health").textContent = "server unreachable";
  }
}

async function loadSamples() {
  const box = $("samples");
  const r = await fetch("/v1/sample-users?n=6");
  const users = await r.json();
  box.textContent = "";
  for (const u of users) {
    const b = el(
      "button",
      { class: "sample", type: "button", "data-user": u.user_id },
      el("b", {}, `User ${u.user_id}`),
      el("small", {}, `${u.n_items} items · ${u.top_categories.join(", ")}`),
      el("small", {}, `latest: ${u.recent.join(" · ")}`),
    );
    b.addEventListener("click", () => selectUser(u.user_id, b));
    box.append(b);
  }
  if (users.length) selectUser(users[0].user_id, box.firstChild);
}

function selectUser(userId, button) {
  selectedUser = userId;
  document.querySelectorAll(".sample").forEach((b) => b.classList.remove("selected"));
  button.classList.add("selected");
  $("user-id").value = userId;
}

function ids(text) {
  return text.split("\n").map((s) => s.trim()).filter(Boolean); // ids may hold spaces and commas (ML-1M: titles)
}

function num(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function buildRequest() {
  const body = {};
  const user = $("user-id").value.trim() || selectedUser;
  if (user) body.user_id = user;
  const history = ids($("history").value);
  if (history.length) body.history = history;
  const candidates = ids($("candidates").value);
  if (candidates.length) body.candidates = candidates;
  else if (num("propose") !== null) body.propose = num("propose");
  if (num("max-steps") !== null) body.max_steps = num("max-steps");
  if (num("max-tool-calls") !== null) body.max_tool_calls = num("max-tool-calls");
  return body;
}

function resetView() {
  for (const id of ["history-list", "candidate-list", "steps", "summary", "verdict"]) $(id).textContent = "";
  $("ranking").querySelector("tbody").textContent = "";
  for (const id of ["context", "investigation", "result"]) $(id).classList.add("hidden");
  items = {};
}

function turnBox(index) {
  let box = document.getElementById(`turn-${index}`);
  if (!box) {
    box = el("div", { class: "turn", id: `turn-${index}` }, el("h3", {}, `Turn ${index + 1}`));
    $("steps").append(box);
  }
  return box;
}

function part(tag, text, cls = "") {
  return el("div", { class: "part " + cls }, el("span", { class: "tag" }, tag), text);
}

const handlers = {
  start(d) {
    for (const it of [...d.history, ...d.candidates]) items[it.id] = it;
    $("history-total").textContent = `(last ${d.history.length} of ${d.history_total})`;
    for (const it of d.history) $("history-list").append(itemNode("li", it));
    $("proposed").textContent = d.candidates_proposed ? "(proposed by the collaborative tools)" : "(given)";
    for (const it of d.candidates) $("candidate-list").append(itemNode("li", it));
    $("context").classList.remove("hidden");
    $("investigation").classList.remove("hidden");
    setStatus(`Running: up to ${d.max_steps} turns and ${d.max_tool_calls} tool calls with ${d.model}…`);
  },
  turn(d) {
    const box = turnBox(d.index);
    if (d.analyze) box.append(part("Analysis", d.analyze));
    if (d.plan) box.append(part("Plan", d.plan));
    if (!d.analyze && !d.plan) box.append(el("div", { class: "raw" }, d.content || "(empty turn)"));
    for (const p of d.problems) box.append(el("div", { class: "part problem" }, `Format problem: ${p}`));
    setStatus(`Turn ${d.index + 1} done…`);
  },
  tool_call(d) {
    const args = typeof d.arguments === "string" ? d.arguments : JSON.stringify(d.arguments);
    const tool = el("div", { class: "tool", "data-tool": d.name }, el("div", { class: "call" }, `→ ${d.name}(${args})`));
    turnBox(d.turn).append(tool);
  },
  tool_result(d) {
    const tools = turnBox(d.turn).querySelectorAll(".tool");
    const tool = tools[tools.length - 1];
    if (!d.ok) tool.classList.add("bad");
    tool.append(el("pre", {}, d.observation));
  },
  claims(d) {
    const box = turnBox(d.turn);
    box.classList.add("unsupported");
    for (const c of d.unsupported) {
      box.append(part("Unsupported", `“${c.text}”: ${c.why}; no observation or the prompt says so`, "problem claim"));
    }
  },
  answer(d) {
    turnBox(d.turn).append(part("Answer", d.raw, "answer"));
  },
  done(d) {
    Object.assign(items, d.items);
    showResult(d);
    setStatus(`Finished in ${d.latency_s.toFixed(1)} s.`);
  },
  error(d) {
    setStatus(`Error ${d.status}: ${d.error}`, true);
  },
};

function showResult(d) {
  $("result").classList.remove("hidden");
  const verdict = $("verdict");
  if (d.valid) {
    verdict.textContent = `A valid ranking of all ${d.candidates.length} candidates.`;
    verdict.className = "ok";
  } else {
    verdict.textContent = `No valid ranking: ${d.note || "the model did not rank every candidate"}.`;
    verdict.className = "bad";
  }
  const tbody = $("ranking").querySelector("tbody");
  d.ranking.forEach((id, r) => {
    const ev = d.evidence[id];
    const evText = ev ? Object.entries(ev).map(([k, v]) => `${k} ${v}`).join(" · ") : "";
    tbody.append(el("tr", {}, el("td", {}, r + 1), itemNode("td", items[id] || { id, title: id, line: id }), el("td", { class: "ev" }, evText)));
  });
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  $("summary").textContent = `${plural(d.tool_calls, "tool call")} · ${plural(d.trajectory.length, "turn")} · model ${d.model}`;
}

function dispatch(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length || !handlers[kind]) return;
  handlers[kind](JSON.parse(data.join("\n")));
}

async function run() {
  const button = $("run");
  button.disabled = true;
  resetView();
  setStatus("Starting…");
  try {
    const r = await fetch("/v1/recommend/stream", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(buildRequest()),
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({ error: r.statusText }));
      const retry = r.headers.get("Retry-After");
      setStatus(`Error ${r.status}: ${err.error}${retry ? ` (retry in ${retry} s)` : ""}`, true);
      return;
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (e) {
    setStatus(`Connection failed: ${e}`, true);
  } finally {
    button.disabled = false;
  }
}

$("run").addEventListener("click", run);
loadHealth();
loadSamples().catch((e) => setStatus(`Could not load sample users: ${e}`, true));

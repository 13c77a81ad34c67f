// The llm-fleet web console: a chat playground on the gateway's own
// /v1/chat/completions (streamed) and a live view of /fleet/status.
// Plain JavaScript, no build step, nothing fetched from elsewhere.
"use strict";

const KEY_STORAGE = "llm-fleet-api-key";
const FLEET_REFRESH_MS = 2000;

const $ = (id) => document.getElementById(id);
// One id per conversation, sent as X-Session-Id: with gateway.affinity on,
// every turn goes to the replica that holds the conversation's prefix cache.
// getRandomValues, unlike randomUUID, works on a plain-http LAN address too.
function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const state = {
  model: null,
  session: newSessionId(),
  history: [],          // {role, content} sent with the next request
  controller: null,     // AbortController of the answer being streamed
  fleetTimer: null,
};

// --- API key: asked for on a 401, kept in this tab's session storage only ----

function apiKey() { return sessionStorage.getItem(KEY_STORAGE); }

function headers(extra) {
  const all = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) all.Authorization = "Bearer " + key;
  return all;
}

function askForKey() {
  $("key-form").hidden = false;
  $("key-input").focus();
}

$("change-key").addEventListener("click", askForKey);

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("key-input").value.trim());
  $("key-input").value = "";
  $("key-form").hidden = true;
  $("change-key").hidden = false;
  hideError("chat-error");
  $("change-key").hidden = !apiKey();
loadModel();
  if (!$("view-fleet").hidden) refreshFleet();
});

// --- Errors: what a person can act on, never raw JSON -----------------------

async function readableError(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = (body.error && body.error.message) || body.detail || "";
  } catch (_) { /* not JSON: the status says enough */ }
  switch (response.status) {
    case 401:
      return apiKey()
        ? "The gateway refused this API key: it is unknown or was revoked. Enter another key."
        : "This gateway needs an API key. Enter one above.";
    case 429: {
      const wait = response.headers.get("Retry-After") || "a few";
      return `Too many requests for this key right now. Try again in ${wait} s.`;
    }
    case 503:
      return "No replica is available to answer right now (all are down, drained or busy). " +
        "Try again shortly.";
    case 504:
      return "A replica took too long to answer. Try a shorter request or try again.";
    default:
      return `The request failed (${response.status})${detail ? ": " + detail : "."}`;
  }
}

function showError(id, text) {
  const box = $(id);
  box.textContent = text;
  box.hidden = false;
}

function hideError(id) { $(id).hidden = true; }

// --- Tabs: arrow keys move between them, as the ARIA tabs pattern does ------

const tabs = [$("tab-chat"), $("tab-fleet")];

function select(tab) {
  for (const other of tabs) {
    const on = other === tab;
    other.setAttribute("aria-selected", String(on));
    other.tabIndex = on ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !on;
  }
  clearInterval(state.fleetTimer);
  if (tab === $("tab-fleet")) {
    refreshFleet();
    state.fleetTimer = setInterval(refreshFleet, FLEET_REFRESH_MS);
  }
}

tabs.forEach((tab, index) => {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    const next = tabs[(index + step + tabs.length) % tabs.length];
    next.focus();
    select(next);
  });
});

// --- Chat -------------------------------------------------------------------

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    // Say why only when a key was tried; a first visit just shows the form.
    if (apiKey()) showError("chat-error", await readableError(response));
    askForKey();
    return;
  }
  if (!response.ok) { $("model").textContent = ""; return; }
  const body = await response.json();
  state.model = body.data && body.data.length ? body.data[0].id : null;
  $("model").textContent = state.model ? "model: " + state.model : "";
}

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = "message " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("div");
  meta.className = "meta";
  item.append(label, body, meta);
  $("conversation").append(item);
  item.scrollIntoView({ block: "end" });
  return { item, body, meta };
}

function requestBody(prompt) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: prompt });
  const body = {
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
  };
  if (state.model) body.model = state.model;
  const stop = $("stop").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (stop.length) body.stop = stop;
  return body;
}

// Server-Sent Events from a fetch body: "data: {json}" events split by a blank line.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

function formatMeta(replica, ttftMs, tokens, seconds) {
  const parts = [`replica: ${replica || "?"}`];
  if (ttftMs !== null) parts.push(`TTFT ${Math.round(ttftMs)} ms`);
  if (tokens && seconds > 0) parts.push(`${(tokens / seconds).toFixed(1)} tokens/s`);
  if (tokens) parts.push(`${tokens} tokens`);
  return parts.join(" · ");
}

async function send(prompt) {
  hideError("chat-error");
  const body = requestBody(prompt);
  addMessage("user", prompt);
  const answer = addMessage("assistant", "");
  answer.item.setAttribute("aria-busy", "true");
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop-generation").disabled = false;
  const started = performance.now();
  let firstTokenAt = null;
  let chunks = 0;
  let usageTokens = null;
  let replica = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", "X-Session-Id": state.session }),
      body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    replica = response.headers.get("X-Fleet-Replica");
    if (!response.ok) {
      const text = await readableError(response);
      if (response.status === 401) askForKey();
      answer.item.classList.add("failed");
      answer.body.textContent = text;
      showError("chat-error", text);
      return;
    }
    answer.meta.textContent = formatMeta(replica, null, 0, 0);
    for await (const event of sseEvents(response)) {
      if (event.usage) usageTokens = event.usage.completion_tokens;
      const choice = event.choices && event.choices[0];
      const piece = choice && choice.delta && choice.delta.content;
      if (!piece) continue;
      if (firstTokenAt === null) firstTokenAt = performance.now();
      chunks += 1;
      answer.body.textContent += piece;
      const seconds = (performance.now() - firstTokenAt) / 1000;
      answer.meta.textContent = formatMeta(replica, firstTokenAt - started, chunks, seconds);
    }
    const tokens = usageTokens || chunks;
    const seconds = firstTokenAt === null ? 0 : (performance.now() - firstTokenAt) / 1000;
    answer.meta.textContent = formatMeta(
      replica, firstTokenAt === null ? null : firstTokenAt - started, tokens, seconds);
    state.history.push({ role: "user", content: prompt },
                       { role: "assistant", content: answer.body.textContent });
  } catch (error) {
    if (error.name === "AbortError") {
      answer.meta.textContent += " · stopped";
      state.history.push({ role: "user", content: prompt },
                         { role: "assistant", content: answer.body.textContent });
    } else {
      const text = "The gateway could not be reached or the stream broke off: " + error.message;
      answer.item.classList.add("failed");
      showError("chat-error", text);
    }
  } finally {
    answer.item.setAttribute("aria-busy", "false");
    answer.item.dataset.done = "true";
    state.controller = null;
    $("send").disabled = false;
    $("stop-generation").disabled = true;
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = $("message").value.trim();
  if (!prompt || state.controller) return;
  $("message").value = "";
  send(prompt);
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop-generation").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
});

$("clear").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.history = [];
  state.session = newSessionId();
  $("conversation").replaceChildren();
  hideError("chat-error");
  $("message").focus();
});

// --- Fleet ------------------------------------------------------------------

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
}

function count(value) {
  return value === null || value === undefined ? "–" : String(Math.round(value));
}

function cell(label, text, className) {
  const td = document.createElement("td");
  td.dataset.label = label;
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function rotation(replica) {
  if (replica.drained) return ["Drained", "state-warn"];
  if (replica.in_rotation === null) return ["Starting", "state-warn"];
  return replica.in_rotation ? ["In rotation", "state-ok"] : ["Out", "state-bad"];
}

function weight(replica) {
  if (replica.weight === null) return "–";
  let text = String(replica.weight);
  if (replica.desired_weight !== null && replica.desired_weight !== replica.weight) {
    text += ` → ${replica.desired_weight}`;
  }
  if (replica.pinned_weight !== null) text += " (pinned)";
  return text;
}

function renderFleet(status) {
  const rows = status.replicas.map((replica) => {
    const tr = document.createElement("tr");
    tr.dataset.replica = replica.name;
    const [rotationText, rotationClass] = rotation(replica);
    tr.append(
      cell("Replica", replica.name),
      cell("Device", replica.device),
      cell("Health", replica.healthy ? "Healthy" : "Failing",
           replica.healthy ? "state-ok" : "state-bad"),
      cell("Rotation", rotationText, rotationClass),
      cell("Weight", weight(replica), "num"),
      cell("Queue", count(replica.waiting), "num"),
      cell("Running", count(replica.running), "num"),
      cell("P99 TTFT", seconds(replica.ttft_p99_s), "num"),
      cell("P99 E2E", seconds(replica.e2e_p99_s), "num"),
      cell("Spec", replica.generation || "–"),
      cell("Controller's reason", replica.reason || "–"),
    );
    return tr;
  });
  $("replicas").tBodies[0].replaceChildren(...rows);

  const serving = status.replicas.filter((r) => r.in_rotation && !r.drained).length;
  const parts = [`${serving} of ${status.replicas.length} replicas in rotation`];
  if (status.rollout) {
    const done = status.rollout.done.length ? ` (done: ${status.rollout.done.join(", ")})` : "";
    parts.push(`fleet apply to spec ${status.rollout.generation || "?"} under way: ` +
               `${status.rollout.step}${done}`);
  }
  const admission = status.admission;
  if (admission) {
    const wait = admission.queue_wait_s === null ? "unknown" : `${admission.queue_wait_s} s`;
    const shed = admission.classes.filter((c) => c.shed).map((c) => c.name);
    parts.push(`queue wait ${wait}` +
               (shed.length ? `; shedding ${shed.join(", ")} (503)` : ""));
    const share = admission.fair_share;
    if (share && share.per_key !== null) {
      parts.push(`fair share: ${share.per_key} in flight per key (${share.keys_in_use} keys)`);
    }
  }
  if (status.keys_over_budget) {
    parts.push(`${status.keys_over_budget} API key(s) over their token budget (429)`);
  }
  if (status.last_decision) {
    const at = new Date(status.last_decision.at * 1000).toLocaleTimeString();
    parts.push(`last decision ${at}: ${status.last_decision.why}`);
  }
  if (!status.prometheus_ok) parts.push("Prometheus is not answering: weights are held");
  parts.push(`updated ${new Date().toLocaleTimeString()}`);
  $("fleet-summary").textContent = parts.join(" · ");

  const nav = $("dashboards");
  nav.hidden = status.dashboards.length === 0;
  nav.querySelector("ul").replaceChildren(...status.dashboards.map((d) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = d.url;
    a.textContent = d.title;
    a.rel = "noopener";
    a.target = "_blank";
    li.append(a);
    return li;
  }));
}

async function refreshFleet() {
  try {
    const response = await fetch("/fleet/status", { headers: headers() });
    if (!response.ok) {
      if (response.status === 401) askForKey();
      showError("fleet-error", response.status === 503
        ? "Fleet status is unavailable: the controller is not answering. Requests are still served."
        : await readableError(response));
      return;
    }
    hideError("fleet-error");
    renderFleet(await response.json());
  } catch (error) {
    showError("fleet-error", "The gateway could not be reached: " + error.message);
  }
}

$("change-key").hidden = !apiKey();
loadModel();

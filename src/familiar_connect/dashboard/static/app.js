// Familiar dashboard: one page, no framework, no build step.
// Everything the server sends is data: it is put into the page with
// textContent / createElement only (never innerHTML), and SVG charts are parsed
// with DOMParser as XML, so nothing from a conversation can run as code. The
// page's CSP forbids inline scripts and styles anyway.
"use strict";

(() => {
  const state = {
    csrf: null,
    tab: "live",
    memoryPath: "",
    notePath: null,
    latencyTimer: null,
    events: null,
    refreshTimer: null,
  };

  const COUNTER_LABELS = {
    messages_in: "Messages in",
    replies_out: "Replies out",
    turns: "Turns",
    cancelled: "Cancelled",
    failed: "Failed",
    inbox_overflow: "Inbox overflow",
    twitch_chat_dropped: "Twitch chat dropped",
    twitch_chat_sampled: "Twitch chat sampled",
    stt_reconnects: "STT reconnects",
    dave_decrypt_failures: "DAVE decrypt failures",
  };

  // --- small helpers -----------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  const fmtInt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));

  function fmtUsd(v) {
    if (v === null || v === undefined) return "—";
    const n = Number(v);
    if (n === 0) return "$0";
    if (n < 0.01) return "$" + n.toFixed(4);
    return "$" + n.toFixed(2);
  }

  function fmtMs(v) {
    if (v === null || v === undefined) return "";
    return v >= 10000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms";
  }

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function fmtWhen(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    return d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function fmtBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1024 / 1024).toFixed(1) + " MiB";
  }

  function pill(text, kind) {
    return h("span", { class: "pill " + (kind || "") }, text);
  }

  function stateKind(value) {
    if (["running", "ok", "replied", "listening", "idle"].includes(value)) return "good";
    if (["thinking", "speaking", "waiting", "starting", "silent", "cancelled"].includes(value)) return "info";
    if (["restarting", "failing", "failed"].includes(value)) return "bad";
    return "muted";
  }

  function showBanner(id, text) {
    const el = $(id);
    if (text) {
      el.textContent = text;
      el.hidden = false;
    } else {
      el.hidden = true;
    }
  }

  // --- talking to the server -----------------------------------------------------------

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function readJson(response) {
    if (response.status === 401) {
      loggedOut();
      throw new HttpError(401, "login required");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = {};
    }
    if (!response.ok) throw new HttpError(response.status, (data && data.error) || response.statusText);
    return data;
  }

  async function api(path) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    return readJson(response);
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf || "" },
      body: JSON.stringify(body || {}),
    });
    return readJson(response);
  }

  async function loadSvg(path, target) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) return loggedOut();
    if (!response.ok) return;
    const text = await response.text();
    const doc = new DOMParser().parseFromString(text, "image/svg+xml");
    const root = doc.documentElement;
    if (!root || root.nodeName !== "svg") return;
    clear(target).append(document.importNode(root, true));
  }

  function loggedOut() {
    showBanner("error-banner", "Your session has ended. Open the login link the familiar printed at start.");
    $("conn").textContent = "logged out";
    $("conn").className = "pill bad";
    if (state.events) state.events.close();
  }

  // --- live view ------------------------------------------------------------------------

  function renderCounters(counters) {
    const box = clear($("counters"));
    for (const [name, label] of Object.entries(COUNTER_LABELS)) {
      const value = counters[name] || 0;
      const warn = ["failed", "inbox_overflow", "twitch_chat_dropped", "dave_decrypt_failures"].includes(name) && value > 0;
      box.append(
        h("div", { class: "card" + (warn ? " warn" : ""), "data-counter": name },
          h("div", { class: "value" }, fmtInt(value)),
          h("div", { class: "label" }, label)),
      );
    }
  }

  function renderConversations(rows) {
    const body = clear($("conversations").tBodies[0]);
    $("conversations-empty").hidden = rows.length > 0;
    for (const row of rows) {
      const [platform, ...rest] = row.conversation.split(":");
      // "thinking" arrives a moment before the turn task exists; cancelling then is harmless.
      const cancel = row.replying || row.activity === "thinking"
        ? h("button", {
            type: "button",
            class: "btn small",
            "data-cancel": row.conversation,
            onclick: () => control("cancel", { conversation: row.conversation }),
          }, "Cancel turn")
        : null;
      body.append(
        h("tr", { "data-conversation": row.conversation },
          h("td", {}, pill(platform, "platform"), " ", h("code", {}, rest.join(":")),
            row.modality ? h("span", { class: "sub" }, " " + row.modality) : null),
          h("td", {}, row.speaker || "—"),
          h("td", {}, pill(row.activity, stateKind(row.activity))),
          h("td", { class: "num" }, fmtInt(row.turns)),
          h("td", { class: "actions" }, cancel)),
      );
    }
  }

  function renderTurns(turns) {
    const list = clear($("turns"));
    $("turns-empty").hidden = turns.length > 0;
    for (const turn of turns) {
      list.append(
        h("li", { class: "turn " + turn.outcome, "data-turn-id": turn.turn_id },
          h("div", { class: "meta" },
            h("time", { datetime: turn.at }, fmtTime(turn.at)),
            h("code", {}, turn.conversation),
            pill(turn.outcome, stateKind(turn.outcome)),
            turn.modality ? h("span", { class: "sub" }, turn.modality) : null,
            turn.model ? h("span", { class: "sub" }, turn.model) : null,
            turn.total_ms !== null ? h("span", { class: "ms" }, fmtMs(turn.total_ms)) : null),
          turn.text ? h("p", { class: "text" }, turn.text) : h("p", { class: "text muted" }, "(nothing said)"),
          turn.error ? h("p", { class: "error" }, turn.error) : null),
      );
    }
  }

  function renderControls(controls) {
    $("pause-btn").hidden = controls.paused;
    $("resume-btn").hidden = !controls.paused;
    $("paused-badge").hidden = !controls.paused;
    const leave = $("leave-voice-btn");
    leave.hidden = !controls.voice_available;
    leave.disabled = controls.voice_channels.length === 0;
    leave.textContent = controls.voice_channels.length ? "Leave voice (" + controls.voice_channels.join(", ") + ")" : "Leave voice";
    const muted = clear($("muted"));
    for (const user of controls.muted) {
      muted.append(
        h("li", { class: "chip", "data-muted": user }, h("code", {}, user),
          h("button", { type: "button", class: "chip-x", title: "Unmute " + user, "aria-label": "Unmute " + user,
            onclick: () => control("unmute", { user }) }, "×")),
      );
    }
    const actions = clear($("actions"));
    for (const action of controls.recent_actions) {
      actions.append(
        h("li", {}, h("time", { datetime: action.timestamp }, fmtTime(action.timestamp)), " ",
          h("strong", {}, action.action), action.target ? [" ", h("code", {}, action.target)] : null,
          " → ", action.result),
      );
    }
    if (!controls.recent_actions.length) actions.append(h("li", { class: "muted none" }, "None yet."));
  }

  function renderAudit(audit) {
    if (audit && !audit.ok) {
      const first = audit.problems && audit.problems.length ? audit.problems[0] : "unknown problem";
      showBanner("audit-banner", "Memory audit verification FAILED (" + fmtInt(audit.problem_count) + " problems): " + first);
    } else {
      showBanner("audit-banner", null);
    }
  }

  function renderLive(snapshot) {
    $("familiar-name").textContent = snapshot.familiar;
    document.title = snapshot.familiar + " · dashboard";
    const health = $("health");
    health.textContent = snapshot.healthy ? "healthy" : "degraded";
    health.className = "pill " + (snapshot.healthy ? "good" : "bad");
    renderCounters(snapshot.counters);
    renderConversations(snapshot.conversations);
    renderTurns(snapshot.turns);
    renderControls(snapshot.controls);
    renderAudit(snapshot.audit);
  }

  function connectEvents() {
    const events = new EventSource("/api/events");
    state.events = events;
    events.addEventListener("open", () => {
      $("conn").textContent = "live";
      $("conn").className = "pill good";
    });
    events.addEventListener("error", () => {
      $("conn").textContent = "reconnecting…";
      $("conn").className = "pill warn";
    });
    events.addEventListener("live", (event) => renderLive(JSON.parse(event.data)));
    events.addEventListener("turn", () => {
      if (state.tab === "latency") scheduleLatency();
    });
  }

  async function control(action, body) {
    const result = $("control-result");
    try {
      const outcome = await post("/api/control/" + action, body);
      result.textContent = action + (outcome.target ? " " + outcome.target : "") + ": " + outcome.result;
      result.className = "hint good";
      renderLive(await api("/api/live"));
    } catch (err) {
      result.textContent = action + " failed: " + err.message;
      result.className = "hint bad";
    }
  }

  // --- latency --------------------------------------------------------------------------

  function scheduleLatency() {
    if (state.latencyTimer) return;
    state.latencyTimer = setTimeout(() => {
      state.latencyTimer = null;
      loadLatency();
    }, 500);
  }

  async function loadLatency() {
    await Promise.all([
      loadSvg("/api/charts/latency.svg?modality=text", $("chart-text")),
      loadSvg("/api/charts/stages.svg?modality=text", $("stages-text")),
      loadSvg("/api/charts/latency.svg?modality=voice", $("chart-voice")),
      loadSvg("/api/charts/stages.svg?modality=voice", $("stages-voice")),
    ]);
  }

  // --- providers ------------------------------------------------------------------------

  function providerDetails(row) {
    const d = row.details || {};
    const parts = [];
    if (d.model_used) parts.push(h("span", {}, "model ", h("code", {}, d.model_used)));
    if (d.turns !== undefined) parts.push(fmtInt(d.turns) + " turns, " + fmtInt(d.failures) + " failed");
    if (d.fallbacks) parts.push(fmtInt(d.fallbacks) + " fallbacks (last " + d.last_fallback + ")");
    const out = [];
    parts.forEach((part, i) => {
      if (i) out.push(" · ");
      out.push(part);
    });
    return out.length ? out : "—";
  }

  async function loadProviders() {
    const data = await api("/api/providers");
    const body = clear($("providers").tBodies[0]);
    for (const row of data.providers) {
      body.append(
        h("tr", { "data-provider": row.provider, class: row.configured ? "" : "dim" },
          h("td", {}, row.name),
          h("td", {}, pill(row.state, stateKind(row.state))),
          h("td", { class: "num" }, fmtInt(row.restarts)),
          h("td", { class: "num" }, fmtInt(row.reconnects)),
          h("td", {}, providerDetails(row)),
          h("td", { class: "error-cell" }, row.last_error
            ? [h("span", { class: "error" }, row.last_error), row.last_error_at ? h("span", { class: "sub" }, " " + fmtWhen(row.last_error_at)) : null]
            : "—")),
      );
    }
    const services = clear($("services").tBodies[0]);
    for (const row of data.services) {
      services.append(
        h("tr", { "data-service": row.service },
          h("td", {}, h("code", {}, row.service)),
          h("td", {}, pill(row.state, stateKind(row.state))),
          h("td", { class: "num" }, fmtInt(row.restarts)),
          h("td", { class: "error-cell" }, row.last_error ? h("span", { class: "error" }, row.last_error) : "—")),
      );
    }
  }

  // --- usage ----------------------------------------------------------------------------

  function budgetMeter(share) {
    if (share === null || share === undefined) return h("span", { class: "sub" }, "no budget");
    const pct = Math.round(share * 100);
    return h("span", { class: "budget" },
      h("meter", { min: "0", max: "1", low: "0.7", high: "0.9", optimum: "0", value: String(Math.min(share, 1)) }),
      " " + pct + "%");
  }

  function usageCard(label, value, share, note) {
    return h("div", { class: "card wide" },
      h("div", { class: "value" }, value),
      h("div", { class: "label" }, label),
      share !== undefined ? budgetMeter(share) : null,
      note ? h("div", { class: "sub" }, note) : null);
  }

  async function loadUsage() {
    const data = await api("/api/usage");
    const today = data.today;
    const cards = clear($("usage-cards"));
    cards.append(
      usageCard("Tokens today", fmtInt(today.tokens), today.tokens_budget_share,
        today.tokens_budget ? "budget " + fmtInt(today.tokens_budget) : null),
      usageCard("Cost today", fmtUsd(today.cost_usd), today.cost_budget_share,
        today.cost_budget_usd ? "budget " + fmtUsd(today.cost_budget_usd) : null),
      usageCard("Tokens, " + data.period.days + " days", fmtInt(data.period.tokens)),
      usageCard("Cost, " + data.period.days + " days", fmtUsd(data.period.cost_usd)),
      usageCard("Calls, " + data.period.days + " days", fmtInt(data.period.calls)),
    );
    const ub = data.user_budget;
    $("user-budget").textContent = ub.tokens || ub.cost_usd
      ? "daily budget per user: " + [ub.tokens ? fmtInt(ub.tokens) + " tokens" : null, ub.cost_usd ? fmtUsd(ub.cost_usd) : null].filter(Boolean).join(" / ")
      : "";
    const users = clear($("usage-users").tBodies[0]);
    $("usage-users-empty").hidden = data.users.length > 0;
    for (const row of data.users) {
      const share = Math.max(row.tokens_budget_share || 0, row.cost_budget_share || 0);
      users.append(
        h("tr", { "data-user": row.user },
          h("td", {}, h("code", {}, row.user)),
          h("td", { class: "num" }, fmtInt(row.today_tokens), h("span", { class: "sub" }, " · " + fmtUsd(row.today_cost_usd))),
          h("td", {}, row.tokens_budget_share === null && row.cost_budget_share === null ? h("span", { class: "sub" }, "no budget") : budgetMeter(share)),
          h("td", { class: "num" }, fmtInt(row.period_tokens), h("span", { class: "sub" }, " · " + fmtUsd(row.period_cost_usd))),
          h("td", { class: "actions" }, row.mutable
            ? h("button", { type: "button", class: "btn small", onclick: () => control("mute", { user: row.user }) }, "Mute")
            : null)),
      );
    }
    const sites = clear($("usage-sites").tBodies[0]);
    $("usage-sites-empty").hidden = data.call_sites.length > 0;
    for (const row of data.call_sites) {
      sites.append(
        h("tr", { "data-call-site": row.call_site },
          h("td", {}, h("code", {}, row.call_site)),
          h("td", { class: "num" }, fmtInt(row.today_tokens), h("span", { class: "sub" }, " · " + fmtUsd(row.today_cost_usd))),
          h("td", { class: "num" }, fmtInt(row.period_tokens), h("span", { class: "sub" }, " · " + fmtUsd(row.period_cost_usd))),
          h("td", { class: "num" }, fmtInt(row.calls))),
      );
    }
    await loadSvg("/api/charts/usage.svg", $("chart-usage"));
  }

  // --- memory ---------------------------------------------------------------------------

  function renderAuditStatus(status) {
    const box = clear($("audit-status"));
    box.classList.toggle("bad", !status.ok);
    box.classList.toggle("good", status.ok);
    const verify = h("button", { type: "button", class: "btn small", id: "verify-btn", onclick: () => loadAudit(true) }, "Verify now");
    if (status.ok) {
      box.append(h("p", {}, h("strong", {}, "✓ Audit chain verified"), " — " + fmtInt(status.records_checked) +
        " records; every note matches its last record. Checked " + fmtWhen(status.checked_at) + ". ", verify));
    } else {
      box.append(h("p", {}, h("strong", {}, "✗ Audit verification failed"), " — " + fmtInt(status.problem_count) +
        " problems after " + fmtInt(status.records_checked) + " records. Checked " + fmtWhen(status.checked_at) + ". ", verify));
      box.append(h("ul", { class: "problems" }, status.problems.map((p) => h("li", {}, p))));
    }
    renderAudit(status);
  }

  async function loadAudit(refresh) {
    const data = await api("/api/memory/audit" + (refresh ? "?refresh=1" : ""));
    renderAuditStatus(data.status);
    const body = clear($("recent-writes").tBodies[0]);
    $("recent-writes-empty").hidden = data.recent.length > 0;
    for (const row of data.recent.slice(0, 15)) {
      body.append(
        h("tr", {},
          h("td", { class: "num" }, row.seq),
          h("td", {}, fmtWhen(row.timestamp)),
          h("td", {}, h("a", { href: "#memory", onclick: (e) => { e.preventDefault(); openNote(row.path); } }, row.path)),
          h("td", {}, row.operation),
          h("td", { class: "num" }, fmtInt(row.bytes_written)),
          h("td", {}, row.source)),
      );
    }
  }

  async function loadDir(path) {
    let data;
    try {
      data = await api("/api/memory/list?path=" + encodeURIComponent(path));
    } catch (err) {
      showBanner("error-banner", "Memory: " + err.message);
      return;
    }
    state.memoryPath = data.path;
    const crumbs = clear($("crumbs"));
    crumbs.append(h("a", { href: "#memory", onclick: (e) => { e.preventDefault(); loadDir(""); } }, "memory"));
    let acc = "";
    for (const part of data.path ? data.path.split("/") : []) {
      acc = acc ? acc + "/" + part : part;
      const target = acc;
      crumbs.append(" / ", h("a", { href: "#memory", onclick: (e) => { e.preventDefault(); loadDir(target); } }, part));
    }
    const files = clear($("files"));
    const entries = data.entries.slice().sort((a, b) => (b.is_dir - a.is_dir) || a.name.localeCompare(b.name));
    $("files-empty").hidden = entries.length > 0;
    for (const entry of entries) {
      const open = entry.is_dir ? () => loadDir(entry.path) : () => openNote(entry.path);
      files.append(
        h("li", { class: entry.is_dir ? "dir" : "file", "data-path": entry.path },
          h("button", { type: "button", class: "link", onclick: open },
            h("span", { class: "icon", "aria-hidden": "true" }, entry.is_dir ? "▸" : "•"), entry.name + (entry.is_dir ? "/" : "")),
          entry.is_dir ? null : h("span", { class: "sub" }, fmtBytes(entry.size_bytes) + (entry.last_source ? " · " + entry.last_source : ""))),
      );
    }
  }

  async function openNote(path) {
    let data;
    try {
      data = await api("/api/memory/note?path=" + encodeURIComponent(path));
    } catch (err) {
      $("note-title").textContent = path;
      $("note-meta").textContent = err.message;
      $("note-meta").className = "hint bad";
      $("note-text").hidden = true;
      return;
    }
    state.notePath = data.path;
    $("note-title").textContent = data.path;
    const meta = $("note-meta");
    meta.className = "hint";
    meta.textContent = fmtInt(data.chars) + " characters (read-only)";
    if (data.truncated) {
      meta.textContent += " — showing the first " + fmtInt(data.shown_chars) + "; the rest is not shown here";
      meta.className = "hint warn";
    }
    const pre = $("note-text");
    pre.textContent = data.text + (data.truncated ? "\n\n[… truncated …]" : "");
    pre.hidden = false;
    pre.classList.toggle("truncated", data.truncated);
    const table = $("note-audit");
    const body = clear(table.tBodies[0]);
    for (const row of data.audit) {
      const context = Object.entries(row.context).map(([k, v]) => k + "=" + v).join(", ");
      body.append(
        h("tr", {},
          h("td", { class: "num" }, row.seq),
          h("td", {}, fmtWhen(row.timestamp)),
          h("td", {}, row.operation),
          h("td", { class: "num" }, fmtInt(row.bytes_written)),
          h("td", {}, row.source),
          h("td", {}, context ? h("code", {}, context) : "—"),
          h("td", {}, h("code", {}, row.hash))),
      );
    }
    table.hidden = data.audit.length === 0;
    $("note-audit-title").hidden = data.audit.length === 0;
  }

  async function loadMemory() {
    await Promise.all([loadAudit(false), loadDir(state.memoryPath)]);
  }

  // --- tabs -----------------------------------------------------------------------------

  const LOADERS = { latency: loadLatency, providers: loadProviders, usage: loadUsage, memory: loadMemory };

  async function loadTab(tab) {
    const loader = LOADERS[tab];
    if (!loader) return;
    try {
      await loader();
    } catch (err) {
      if (err.status !== 401) showBanner("error-banner", "Could not load " + tab + ": " + err.message);
    }
  }

  function showTab() {
    const wanted = (location.hash || "#live").slice(1);
    const tab = document.querySelector('section.tab[data-tab="' + wanted + '"]') ? wanted : "live";
    state.tab = tab;
    for (const section of document.querySelectorAll("section.tab")) section.hidden = section.dataset.tab !== tab;
    for (const link of document.querySelectorAll("nav.tabs a")) {
      if (link.dataset.tab === tab) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.body.dataset.tab = tab;
    loadTab(tab);
  }

  async function start() {
    $("pause-btn").addEventListener("click", () => control("pause"));
    $("resume-btn").addEventListener("click", () => control("resume"));
    $("leave-voice-btn").addEventListener("click", () => control("leave_voice", {}));
    $("mute-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("mute-user");
      control("mute", { user: input.value.trim() }).then(() => { input.value = ""; });
    });
    window.addEventListener("hashchange", showTab);
    try {
      const session = await api("/api/session");
      state.csrf = session.csrf;
      document.body.dataset.ready = "true";
    } catch (err) {
      return;
    }
    showTab();
    connectEvents();
    // Pages without a live stream refresh themselves while they are open.
    state.refreshTimer = setInterval(() => {
      if (state.tab === "providers" || state.tab === "usage") loadTab(state.tab);
    }, 10000);
  }

  document.addEventListener("DOMContentLoaded", start);
})();

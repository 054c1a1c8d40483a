// mcpwarden's dashboard: every figure comes from the daemon's API with the
// token the user signs in with (kept for this tab only). Nothing is fetched
// from elsewhere, and no record is ever inserted as HTML: paths, commands
// and messages from tool servers are untrusted text.
"use strict";

const $ = (sel) => document.querySelector(sel);
let token = sessionStorage.getItem("mcpwarden-token") || "";
let streaming = null;
const calls = new Map(); // "session request" -> {box, list}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

async function api(path, init = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token }, init.headers || {});
  const res = await fetch(path, Object.assign({}, init, { headers }));
  if (res.status === 401 || res.status === 403) {
    throw new Error(res.status === 401 ? "the token was refused" : "the token has no API scope");
  }
  if (!res.ok) throw new Error(path + ": HTTP " + res.status);
  return res.json();
}

function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleTimeString() : "";
}

function describe(r) {
  const what = r.path || r.addr || (r.argv ? r.argv.join(" ") : "") || r.rule || r.point || "";
  const tool = r.tool ? " " + r.tool : "";
  return [r.action || "", r.kind || "", what, tool, "(" + (r.session || "") + ")"]
    .filter((s) => s !== "")
    .join(" ");
}

function isAlert(r) {
  return r.action && r.action !== "allow";
}

function addAlert(r) {
  const li = el("li", describe(r), r.action);
  const list = $("#alerts");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function addToTimeline(r) {
  const request = r.request_id ?? r.request;
  if (request === undefined || request === null) return;
  const key = (r.session || "") + " " + JSON.stringify(request);
  let call = calls.get(key);
  if (!call) {
    const box = el("div", undefined, "call");
    const title = el("div", (r.tool || r.method || "request") + " #" + JSON.stringify(request) + " in " + (r.session || ""));
    const list = el("ul");
    box.append(title, list);
    $("#timeline").prepend(box);
    const more = el("div", "", "muted");
    box.append(more);
    call = { box, list, more, hidden: 0 };
    calls.set(key, call);
    while ($("#timeline").children.length > 100) $("#timeline").lastChild.remove();
  }
  // A call's first events, and every verdict; the rest are counted.
  if (call.list.children.length < 40 || isAlert(r)) {
    call.list.append(el("li", describe(r), r.action));
  } else {
    call.hidden += 1;
    call.more.textContent = "and " + call.hidden + " more allowed events";
  }
  if (isAlert(r)) call.box.classList.add("bad");
}

function onRecord(r) {
  if (isAlert(r)) addAlert(r);
  addToTimeline(r);
}

// Server-sent events over fetch: EventSource cannot send the token.
async function follow() {
  const controller = new AbortController();
  streaming = controller;
  try {
    const res = await fetch("/api/v1/events/stream", {
      headers: { Authorization: "Bearer " + token },
      signal: controller.signal,
    });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = chunk
          .split("\n")
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart())
          .join("\n");
        if (data) {
          try {
            onRecord(JSON.parse(data));
          } catch (e) {
            console.warn("a record that is not JSON", e);
          }
        }
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
  }
  // The daemon restarted or the connection dropped: try again shortly.
  if (streaming === controller) setTimeout(follow, 2000);
}

async function refresh() {
  const health = await api("/api/v1/health");
  $("#status").textContent =
    "daemon " + health.version + " up " + health.uptime_s + " s, " + health.sessions + " sessions running";
  const sessions = await api("/api/v1/sessions?last=50");
  const rows = $("#sessions tbody");
  rows.replaceChildren(
    ...sessions.map((s) => {
      const tr = el("tr");
      const state = s.outcome || "running";
      tr.append(
        el("td", s.session),
        el("td", String(s.uid)),
        el("td", (s.server || []).join(" ")),
        el("td", s.policy),
        el("td", when(s.started)),
        el("td", state, state === "running" ? "" : "muted"),
      );
      return tr;
    }),
  );
  const trust = await api("/api/v1/trust");
  $("#trust tbody").replaceChildren(
    ...trust.map((t) => {
      const tr = el("tr");
      tr.append(el("td", t.subject), el("td", String(t.overall)));
      return tr;
    }),
  );
  const audit = await api("/api/v1/audit?last=20");
  $("#audit").replaceChildren(
    ...audit.reverse().map((a) => el("li", "#" + a.seq + " " + when(a.time) + " " + a.action + " " + a.subject)),
  );
  const verdict = await api("/api/v1/audit/verify");
  $("#audit-verdict").textContent = verdict.intact
    ? "chain intact: " + verdict.records + " records verified"
    : "CHAIN BROKEN at record " + verdict.seq + ": " + verdict.why;
  $("#audit-verdict").className = verdict.intact ? "" : "error";
}

async function start() {
  try {
    await refresh();
  } catch (e) {
    $("#login-error").textContent = e.message;
    signOut(false);
    return;
  }
  sessionStorage.setItem("mcpwarden-token", token);
  $("#signin").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  const recent = await api("/api/v1/alerts?last=50");
  recent.forEach(onRecord);
  follow();
  setInterval(() => refresh().catch((e) => ($("#status").textContent = e.message)), 5000);
}

function signOut(clear = true) {
  if (streaming) streaming.abort();
  streaming = null;
  if (clear) {
    sessionStorage.removeItem("mcpwarden-token");
    location.reload();
  }
}

async function checkPolicy() {
  const out = $("#policy-result");
  try {
    const verdict = await api("/api/v1/policies/check", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ op: "check_policy", text: $("#policy-text").value }),
    });
    out.textContent = verdict.valid
      ? "valid" + (verdict.warnings.length ? "\n" + verdict.warnings.join("\n") : "")
      : verdict.error;
    out.className = verdict.valid ? "" : "error";
  } catch (e) {
    out.textContent = e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("#token").value.trim();
    $("#login-error").textContent = "";
    start();
  });
  $("#logout").addEventListener("click", () => signOut());
  $("#policy-check").addEventListener("click", checkPolicy);
  if (token) start();
});

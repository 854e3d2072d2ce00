// The reviewer page: lists pending approvals through the reviewer API and
// approves or denies them. Every value from the API is inserted as text,
// never as HTML: parameters and reasons come from agents.
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("veil-token") || "";

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  row.appendChild(td);
  return td;
}

async function decide(id, verb, reason) {
  let message, error = false;
  try {
    await api("POST", "/v1/approvals/" + encodeURIComponent(id) + "/" + verb, { reason });
    message = (verb === "approve" ? "Approved " : "Denied ") + id + ".";
  } catch (e) {
    message = e.message;
    error = true;
  }
  await refresh();
  status(message, error);
}

async function refresh() {
  if (!token) return;
  let data;
  try {
    data = await api("GET", "/v1/approvals");
  } catch (e) {
    status(e.message, true);
    return;
  }
  const body = $("pending");
  body.replaceChildren();
  for (const e of data.pending) {
    const row = document.createElement("tr");
    row.dataset.id = e.id;
    cell(row, e.id);
    cell(row, e.operation + (e.resource ? " " + e.resource : ""));
    cell(row, e.subject);
    cell(row, e.reasons.join("\n"));
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(e.params, null, 2);
    cell(row, pre);
    cell(row, new Date(e.expires_ms).toLocaleTimeString());
    const actions = cell(row, "");
    const reason = document.createElement("input");
    reason.placeholder = "reason";
    reason.className = "reason";
    const approve = document.createElement("button");
    approve.textContent = "Approve";
    approve.className = "approve";
    approve.onclick = () => decide(e.id, "approve", reason.value);
    const deny = document.createElement("button");
    deny.textContent = "Deny";
    deny.className = "deny";
    deny.onclick = () => reason.value.trim() ? decide(e.id, "deny", reason.value) : status("A denial needs a reason.", true);
    actions.append(reason, approve, deny);
    body.appendChild(row);
  }
  if (!$("status").classList.contains("error")) status(data.pending.length + " pending · refreshed " + new Date().toLocaleTimeString());
}

$("use").onclick = () => {
  token = $("token").value.trim();
  sessionStorage.setItem("veil-token", token);
  status("Loading…");
  refresh();
};
setInterval(refresh, 3000);
refresh();

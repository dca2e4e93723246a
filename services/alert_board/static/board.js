// The alert board page: two lists from /api/now, the feed from /api/feed, live updates from the
// Server-Sent Events stream /api/stream, and one account's history from /api/accounts/{id}.
"use strict";

const $ = (selector) => document.querySelector(selector);
const seen = new Set(); // alert ids already in the feed (a reconnect may send one again)
let latestId = 0;

function text(tag, value, className) {
  const el = document.createElement(tag);
  el.textContent = value ?? "";
  if (className) el.className = className;
  return el;
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "";
}

function accountLink(id) {
  const a = text("a", id, "account");
  a.href = "?account=" + encodeURIComponent(id);
  a.addEventListener("click", (event) => { event.preventDefault(); showAccount(id); });
  return a;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else { td.textContent = cell.value ?? ""; if (cell.num) td.className = "num"; }
    tr.append(td);
  }
  return tr;
}

const lists = { blocked: [], near_cap: [] };

const shownAt = new Map(); // list and account id -> when it first appeared there (Date.now(), for the tests)

function fill(table, items, cells, counter) {
  const body = $(table + " tbody");
  body.replaceChildren(...items.map((s) => {
    const tr = row(cells(s));
    const key = table + " " + s.account_id;
    if (!shownAt.has(key)) shownAt.set(key, Date.now());
    tr.dataset.account = s.account_id;
    tr.dataset.shownAt = shownAt.get(key);
    return tr;
  }));
  if (!items.length) body.append(row([{ value: "none" }]));
  $(counter).textContent = items.length;
}

function render() {
  fill("#blocked", lists.blocked, (s) => [
    accountLink(s.account_id), { value: s.accrued, num: true }, { value: s.cap, num: true },
    { value: s.cycle_start }, { value: when(s.blocked_since) },
  ], "#blocked-count");
  fill("#near-cap", lists.near_cap, (s) => [
    accountLink(s.account_id), { value: s.threshold_percent + " %" }, { value: s.accrued, num: true },
    { value: s.cap, num: true }, { value: s.cycle_start }, { value: when(s.since) },
  ], "#near-count");
}

async function refreshNow() {
  const now = await (await fetch("/api/now")).json();
  lists.blocked = now.blocked;
  lists.near_cap = now.near_cap;
  render();
}

function place(standing) { // an alert's account, as it stands now: into the list it belongs to
  const others = (list) => list.filter((s) => s.account_id !== standing.account_id);
  lists.blocked = others(lists.blocked);
  lists.near_cap = others(lists.near_cap);
  if (standing.blocked) lists.blocked.unshift(standing);
  else if ((standing.threshold_percent || 0) >= 80) lists.near_cap.unshift(standing);
  render();
}

let nowPending = null;
function refreshNowSoon() { // many alerts at once: one refresh of the lists
  if (nowPending) return;
  nowPending = setTimeout(() => { nowPending = null; refreshNow().catch(() => {}); }, 100);
}

function feedItem(alert, fresh) {
  const li = document.createElement("li");
  li.dataset.id = alert.id;
  li.dataset.account = alert.account_id;
  if (fresh) { li.className = "new"; li.dataset.receivedAt = Date.now(); }
  li.append(text("span", when(alert.occurred_at), "when"), text("span", alert.kind.replace(/_/g, " "), "kind " + alert.kind),
    accountLink(alert.account_id), text("span", " " + alert.text));
  return li;
}

function addToFeed(alert, fresh) {
  if (seen.has(alert.id)) return;
  seen.add(alert.id);
  latestId = Math.max(latestId, alert.id);
  const feed = $("#feed");
  const newer = [...feed.children].find((li) => Number(li.dataset.id) < alert.id);
  feed.insertBefore(feedItem(alert, fresh), newer || null); // newest first
  $("#feed .empty")?.remove();
}

async function loadFeed() {
  const { alerts } = await (await fetch("/api/feed?limit=100")).json();
  alerts.forEach((a) => addToFeed(a, false));
  if (!$("#feed").children.length) $("#feed").append(text("li", "no alert yet", "empty"));
}

function connect() {
  const live = $("#live");
  const source = new EventSource("/api/stream?after=" + latestId);
  source.addEventListener("open", () => {
    live.textContent = "live"; live.className = "live on";
    refreshNow().catch(() => {}); // after a restart of the board: the lists as they are now
  });
  source.addEventListener("alert", (event) => {
    const alert = JSON.parse(event.data);
    addToFeed(alert, true);
    if (alert.standing) place(alert.standing);
    else refreshNowSoon(); // a catch-up after a reconnect: ask for the lists
    if ($("#account-id").textContent === alert.account_id) showAccount(alert.account_id);
  });
  source.addEventListener("standings", refreshNowSoon); // e.g. a cycle closed: accounts left the lists
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "live off"; });
}

async function showAccount(id) {
  const section = $("#account");
  section.hidden = false;
  $("#account-id").textContent = id;
  $("#matches").replaceChildren();
  const response = await fetch("/api/accounts/" + encodeURIComponent(id));
  const data = await response.json();
  const s = data.standing;
  $("#account-standing").textContent = !s ? "No alert for this account." :
    `Cycle from ${s.cycle_start}: accrued ${s.accrued} of ${s.cap}` +
    (s.blocked ? `, BLOCKED since ${when(s.blocked_since)}` : s.threshold_percent ? `, ${s.threshold_percent} % reached since ${when(s.since)}` : "");
  const history = $("#history");
  history.replaceChildren(...data.cycles.map((cycle) => {
    const block = document.createElement("div");
    block.append(text("h3", cycle.cycle_start ? "Cycle from " + cycle.cycle_start : "Refused cap changes"));
    const list = document.createElement("ol");
    list.className = "history";
    list.append(...cycle.alerts.map((a) => feedItem(a, false)));
    block.append(list);
    return block;
  }));
  history.scrollIntoView({ block: "nearest" });
}

$("#search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = $("#q").value.trim();
  if (!q) return;
  const { accounts } = await (await fetch("/api/accounts?q=" + encodeURIComponent(q))).json();
  if (accounts.length === 1 || accounts.includes(q)) { showAccount(accounts.includes(q) ? q : accounts[0]); return; }
  $("#account").hidden = false;
  $("#account-id").textContent = "";
  $("#account-standing").textContent = accounts.length ? "Matching accounts:" : `No account matches "${q}".`;
  $("#history").replaceChildren();
  $("#matches").replaceChildren(...accounts.map((id) => { const p = document.createElement("p"); p.append(accountLink(id)); return p; }));
});
$("#close-account").addEventListener("click", () => { $("#account").hidden = true; $("#account-id").textContent = ""; });

(async () => {
  await Promise.all([refreshNow(), loadFeed()]);
  connect();
  const wanted = new URLSearchParams(location.search).get("account");
  if (wanted) showAccount(wanted);
})();

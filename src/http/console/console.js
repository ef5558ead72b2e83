// bootcast console: draws each page from the staff API (what the API lets this user see is
// what the page shows), sends changes with the session's CSRF token, and follows tasks live
// through server-sent events (/api/v1/live). No framework, no build step.
"use strict";

const meta = (n) => document.querySelector(`meta[name="bootcast-${n}"]`).content;
const PAGE = meta("page");
const ARG = decodeURIComponent(meta("arg"));
const ME = PAGE === "login" ? null : JSON.parse(meta("me"));
const CSRF = meta("csrf");

// --- DOM and formatting helpers -------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
const main = () => document.getElementById("main");
function show(...kids) { main().replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false)); }
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function ago(secs) {
  if (secs === null || secs === undefined) return "never";
  if (secs < 90) return `${secs} s ago`;
  if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
  if (secs < 172800) return `${Math.round(secs / 3600)} h ago`;
  return `${Math.round(secs / 86400)} days ago`;
}
function when(t) { return t ? t.replace(/\.\d+Z$/, "Z").replace("T", " ").replace("Z", " UTC") : "–"; }
function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
/** Says what happened: a success for 5 s, an error until it is clicked away. */
function toast(text, error) {
  const t = h("div", { class: error ? "error" : "ok", title: error ? "click to close" : "" }, text);
  if (error) t.addEventListener("click", () => t.remove());
  else setTimeout(() => t.remove(), 5000);
  document.getElementById("toast").append(t);
}
function bar(done, total, state) {
  const pct = total > 0 ? Math.min(100, Math.round((100 * done) / total)) : (state === "done" ? 100 : 0);
  // (a style set through the DOM: the page's CSP refuses style attributes)
  const fill = h("span", {});
  fill.style.width = `${pct}%`;
  return h("div", { class: `bar ${state || ""}`, title: `${bytes(done)} of ${bytes(total)}` }, fill, h("em", {}, `${pct} %`));
}
function link(href, text) { return h("a", { href }, text); }
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids.flat()) if (k) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
const hhmm = (t) => new Date(t * 1000).toISOString().slice(11, 16);

// --- the API --------------------------------------------------------------------------------

async function api(method, path, body) {
  const opts = { method, headers: { "x-csrf-token": CSRF }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { location.href = `/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`; throw new Error("session over"); }
  const text = await r.text();
  let data;
  try { data = JSON.parse(text); } catch (_) { data = { raw: text }; }
  if (!r.ok) {
    const err = new Error(data.error || `${r.status} ${text}`);
    err.status = r.status;
    err.data = data;
    throw err;
  }
  return data;
}
const get = (p) => api("GET", p);
/** Runs an action; says what happened; redraws the page on success. */
async function act(what, fn) {
  try {
    await fn();
    toast(what);
    draw();
  } catch (e) {
    toast(`${what}: ${e.message}`, true);
  }
}

// --- live tasks -----------------------------------------------------------------------------

const live = { tasks: new Map(), listeners: [] };
function startLive() {
  const es = new EventSource("/api/v1/live");
  // a page left closes its stream at once (the browser allows few connections per server)
  window.addEventListener("pagehide", () => es.close());
  es.addEventListener("tasks", (ev) => {
    const d = JSON.parse(ev.data);
    for (const t of d.open.concat(d.closed)) live.tasks.set(t.id, t);
    for (const t of d.open.concat(d.closed)) updateTask(t);
    document.body.dataset.liveEvents = String((Number(document.body.dataset.liveEvents) || 0) + 1);
    live.listeners.forEach((f) => f(d));
  });
}
/** Every element drawn for task `t` (data-task=ID) shows its state and progress. */
function updateTask(t) {
  for (const el of document.querySelectorAll(`[data-task="${t.id}"]`)) {
    const p = t.progress || { bytes_done: 0, bytes_total: 0 };
    if (el.classList.contains("task-state")) {
      el.textContent = t.state;
      el.className = `task-state state-${t.state}`;
    }
    if (el.classList.contains("task-bar")) el.replaceChildren(bar(p.bytes_done, p.bytes_total, t.state));
    if (el.classList.contains("task-eta")) el.textContent = t.state === "running" && p.eta ? `${duration(p.eta)} left, ${bytes(p.rate)}/s` : (t.detail || "");
  }
}
function taskCells(t) {
  const p = t.progress || { bytes_done: 0, bytes_total: 0 };
  return [
    h("td", {}, h("span", { class: `task-state state-${t.state}`, dataset: { task: t.id } }, t.state)),
    h("td", {}, h("div", { class: "task-bar", dataset: { task: t.id } }, bar(p.bytes_done, p.bytes_total, t.state))),
    h("td", { class: "task-eta muted", dataset: { task: t.id } }, t.state === "running" && p.eta ? `${duration(p.eta)} left` : (t.detail || "")),
  ];
}

// --- pages ----------------------------------------------------------------------------------

const pages = {};

pages.login = () => {
  const next = new URLSearchParams(location.search).get("next") || "/ui";
  const user = h("input", { name: "user", id: "user", autocomplete: "username", required: true });
  const password = h("input", { name: "password", id: "password", type: "password", autocomplete: "current-password", required: true });
  const err = h("p", { class: "warn-bad", id: "login-error" });
  const form = h("form", {
    class: "login", id: "login",
    onsubmit: async (e) => {
      e.preventDefault();
      const r = await fetch("/api/v1/login", {
        method: "POST", headers: { "content-type": "application/json" }, credentials: "same-origin",
        body: JSON.stringify({ user: user.value, password: password.value }),
      });
      if (r.ok) location.href = next.startsWith("/ui") ? next : "/ui";
      else err.textContent = (await r.json().catch(() => ({}))).error || `refused (${r.status})`;
    },
  }, h("h1", {}, "bootcast console"),
  h("label", {}, "User", user), h("label", {}, "Password", password), err,
  h("button", { type: "submit", id: "login-button" }, "Log in"));
  show(form);
};

pages.dashboard = async () => {
  const d = await get("/api/v1/dashboard");
  const s = d.summary;
  const hosts = Object.values(s.hosts).reduce((a, b) => a + b, 0);
  const open = (k) => s.open[k] || 0;
  const day = (k) => s.last_day[k] || 0;
  const sites = h("table", { id: "sites" }, h("tr", {},
    ["Site", "Hosts", "Relay", "Last heartbeat", "Cache", "Versions held", "Pushes"].map((c) => h("th", {}, c))),
  d.sites.map((site) => {
    const r = site.relay;
    const age = site.heartbeat_age;
    return h("tr", { dataset: { site: site.name } },
      h("td", {}, link(`/ui/hosts?site=${encodeURIComponent(site.name)}`, site.name)),
      h("td", { class: "num" }, site.hosts),
      h("td", {}, r ? (r.version || "") : h("span", { class: "muted" }, "no relay yet")),
      h("td", { class: age !== null && age > 600 ? "warn-bad" : "" }, r ? ago(age) : "–"),
      h("td", {}, r ? `${bytes(r.cache_bytes)}${r.quota_bytes ? " of " + bytes(r.quota_bytes) : ""}` : "–"),
      h("td", {}, r ? r.complete.map((v) => `${v.image}@${String(v.version).slice(0, 8)}`).join(", ") : "–"),
      h("td", {}, site.pushes.length === 0 ? h("span", { class: "muted" }, "none") : site.pushes.map((p) =>
        h("div", {}, `#${p.push} ${p.images.join(", ")} — ${p.state}`, bar(p.bytes_done, p.bytes_total, p.state),
          h("small", { class: p.warning ? "warn" : "muted" }, p.warning || (p.eta ? `ETA ${when(p.eta)}` : "")),
          p.deadline ? h("small", { class: "muted" }, ` · deadline ${when(p.deadline)}`) : null))));
  }));
  const running = h("table", { id: "running" }, h("tr", {}, ["Task", "Host", "Kind", "State", "Progress", ""].map((c) => h("th", {}, c))),
    s.running.map((t) => h("tr", {}, h("td", {}, t.id), h("td", {}, link(`/ui/host/${t.mac}`, t.mac)), h("td", {}, t.kind), ...taskCells(t))));
  const failures = h("div", { id: "failures" },
    s.failed_rules.map(([id, outcome]) => h("div", { class: "warn-bad" }, `Calendar rule ${id} failed: ${outcome} `,
      ME.operator ? h("button", { class: "secondary", onclick: () => act(`rule ${id} acknowledged`, () => api("POST", `/api/v1/task-rules/${id}/ack`)) }, "Acknowledge") : null)),
    s.failed.map((t) => h("div", { class: "warn-bad" }, `Task ${t.id} (${t.kind}) on `, link(`/ui/host/${t.mac}`, t.mac), ` failed ${when(t.updated_at)}: ${t.detail || ""}`)),
    s.failed_rules.length + s.failed.length === 0 ? h("p", { class: "muted" }, "No failure in the last 24 hours.") : null);
  show(h("h1", {}, "Dashboard"),
    h("div", { class: "cards" },
      h("div", { class: "card" }, h("b", {}, hosts), "hosts"),
      h("div", { class: "card" }, h("b", {}, open("running") + open("booting")), "tasks under way"),
      h("div", { class: "card" }, h("b", {}, open("pending")), "tasks waiting"),
      h("div", { class: "card" }, h("b", {}, day("done")), "done in 24 h"),
      h("div", { class: "card" }, h("b", { class: day("failed") ? "warn-bad" : "" }, day("failed")), "failed in 24 h")),
    h("h2", {}, "Sites and relays"), sites, pushChart(d.sites),
    h("h2", {}, "Under way"), running,
    h("h2", {}, "Failures to look at"), failures);
};

/** Per-site push progress as horizontal bars (an SVG): the night's picture at a glance. */
function pushChart(sites) {
  const rows = [];
  for (const s of sites) for (const p of s.pushes) rows.push({ site: s.name, p });
  if (rows.length === 0) return null;
  const w = 640, rh = 22, lw = 140;
  const kids = rows.flatMap(({ site, p }, i) => {
    const y = 5 + i * rh;
    const frac = p.bytes_total > 0 ? p.bytes_done / p.bytes_total : (p.state === "done" ? 1 : 0);
    return [
      svg("text", { x: 4, y: y + 14, "font-size": 12 }, `${site} #${p.push}`),
      svg("rect", { x: lw, y, width: w - lw - 10, height: rh - 6, fill: "#e6e9ef" }),
      svg("rect", { x: lw, y, width: Math.round((w - lw - 10) * frac), height: rh - 6, fill: p.warning ? "#b7791f" : (p.state === "done" ? "#2e8540" : "#1f5fbf") }),
      svg("text", { x: lw + 4, y: y + 12, "font-size": 11 }, `${Math.round(frac * 100)} % ${p.eta ? "· ETA " + when(p.eta) : ""}`),
    ];
  });
  return svg("svg", { class: "chart", width: w, height: rows.length * rh + 10 }, kids);
}

pages.hosts = async () => {
  const q = new URLSearchParams(location.search);
  // the rooms of the site shown (a region has thousands)
  const [sites, groups] = await Promise.all([get("/api/v1/sites"),
    q.get("site") ? get(`/api/v1/groups?site=${encodeURIComponent(q.get("site"))}&limit=1000`) : Promise.resolve({ groups: [] })]);
  const params = new URLSearchParams();
  for (const k of ["site", "group", "q", "after"]) if (q.get(k)) params.set(k, q.get(k));
  params.set("limit", "100");
  const page = await get(`/api/v1/hosts?${params}`);
  const here = (k, v) => q.get(k) === v ? "current" : "";
  const tree = h("div", { class: "tree", id: "tree" }, h("ul", {},
    h("li", {}, h("a", { href: "/ui/hosts", class: !q.get("site") && !q.get("group") ? "current" : "" }, "All my hosts")),
    sites.sites.map((s) => h("li", {}, h("a", { href: `/ui/hosts?site=${encodeURIComponent(s.name)}`, class: here("site", s.name) }, s.name),
      q.get("site") === s.name ? h("ul", { id: "rooms" }, groups.groups.map((g) =>
        h("li", {}, h("a", { href: `/ui/room/${encodeURIComponent(g.name)}` }, g.name), " ",
          h("span", { class: "muted" }, `(${g.hosts.length})`)))) : null))));
  const search = h("input", { name: "q", id: "search", value: q.get("q") || "", placeholder: "MAC, name, address, model, serial" });
  const form = h("form", { class: "inline", onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (q.get("site")) p.set("site", q.get("site"));
    if (q.get("group")) p.set("group", q.get("group"));
    if (search.value) p.set("q", search.value);
    location.href = `/ui/hosts?${p}`;
  } }, search, h("button", {}, "Search"));
  const table = h("table", { id: "hosts" }, h("tr", {}, h("th", {}, h("input", { type: "checkbox", id: "select-all", title: "select this page",
      onchange: (e) => document.querySelectorAll("#hosts input.pick").forEach((b) => { b.checked = e.target.checked; }) })),
    ["MAC", "Name", "Site", "Model", "Serial", "Last address", "Last boot"].map((c) => h("th", {}, c))),
    page.hosts.map((x) => h("tr", { dataset: { mac: x.mac } },
      h("td", {}, h("input", { type: "checkbox", class: "pick", value: x.mac })),
      h("td", {}, link(`/ui/host/${x.mac}`, x.mac)), h("td", {}, x.name || ""), h("td", {}, x.site || ""),
      h("td", {}, x.model || ""), h("td", {}, x.serial || ""), h("td", {}, x.last_ip || ""), h("td", {}, when(x.last_boot)))));
  const next = page.next ? (() => { const p = new URLSearchParams(q); p.set("after", page.hosts[page.hosts.length - 1].mac); return link(`/ui/hosts?${p}`, "Next page →"); })() : null;
  show(h("h1", {}, "Hosts"), h("div", { class: "layout" }, tree, h("div", {}, form, ME.operator ? await bulkForm() : null,
    h("div", { class: "pager" }, h("span", { id: "total" }, `${page.total} hosts`), q.get("after") ? link(`/ui/hosts?${new URLSearchParams([...q].filter(([k]) => k !== "after"))}`, "← First page") : null, next),
    table)));
};

/** The action on the hosts ticked in the list. A selection larger than a room, or of several
 * sites, is confirmed by the user with its count before the server acts. */
async function bulkForm() {
  const action = h("select", { name: "action", id: "bulk-action" }, ["reimage", "capture", "inventory", "wake", "cancel"].map((a) => h("option", { value: a }, a)));
  const image = h("select", { name: "image" }, await imageOptions());
  const at = h("input", { name: "at", type: "datetime-local" });
  const wake = h("input", { name: "wake", type: "checkbox" });
  return h("form", { class: "inline", id: "bulk", onsubmit: async (e) => {
    e.preventDefault();
    const hosts = [...document.querySelectorAll("#hosts input.pick:checked")].map((b) => b.value);
    if (hosts.length === 0) { toast("tick the hosts to act on first", true); return; }
    const body = { action: action.value, hosts, wake: wake.checked };
    if (["reimage", "capture"].includes(action.value)) body.image = image.value;
    if (at.value) body.at = new Date(at.value).toISOString().replace(/\.\d+Z$/, "Z");
    const report = (r) => toast(`${action.value}: ${r.done.length} done${r.failed.length ? `, ${r.failed.length} refused: ${r.failed.map((f) => `${f.mac} ${f.error}`).join("; ")}` : ""}`, r.failed.length > 0);
    try {
      report(await api("POST", "/api/v1/bulk", body));
    } catch (err) {
      if (err.status === 409 && err.data.confirm && window.confirm(`${err.data.error}\n\nGo ahead with ${err.data.confirm} hosts?`)) {
        body.confirm = err.data.confirm;
        try { report(await api("POST", "/api/v1/bulk", body)); } catch (e2) { toast(e2.message, true); }
      } else if (err.status !== 409) toast(err.message, true);
    }
  } }, "Selected hosts: ", action, image, h("label", {}, "at ", at), h("label", {}, wake, " wake"), h("button", { type: "submit" }, "Apply"));
}

async function imageOptions() {
  const im = await get("/api/v1/images");
  const names = [...new Set(im.images.map((v) => v.name))];
  return names.map((n) => h("option", { value: n }, n));
}
/** A form that creates tasks for `target` ({host} or {group}): now or at a time, with wake. */
async function taskForm(target, id) {
  const kind = h("select", { name: "kind" }, h("option", { value: "reimage" }, "Reimage"), h("option", { value: "capture" }, "Capture"), h("option", { value: "inventory" }, "Inventory"));
  const image = h("select", { name: "image" }, await imageOptions());
  const at = h("input", { name: "at", type: "datetime-local" });
  const wake = h("input", { name: "wake", type: "checkbox", checked: true });
  const multicast = h("input", { name: "multicast", type: "checkbox", checked: !!target.group });
  return h("form", { class: "inline", id, onsubmit: (e) => {
    e.preventDefault();
    const body = Object.assign({ kind: kind.value, replace: false }, target);
    if (kind.value !== "inventory") body.image = image.value;
    if (at.value) body.at = new Date(at.value).toISOString().replace(/\.\d+Z$/, "Z");
    if (wake.checked) body.wake = {};
    if (multicast.checked && kind.value === "reimage" && target.group) body.multicast = {};
    act(`${kind.value} of ${target.host || target.group} ${at.value ? "at " + at.value : "now"}`, () => api("POST", "/api/v1/tasks", body));
  } }, kind, image, h("label", {}, "at ", at), h("label", {}, wake, " wake"), target.group ? h("label", {}, multicast, " multicast") : null,
  h("button", { type: "submit" }, "Go"));
}

pages.host = async () => {
  const mac = ARG;
  const [d, events, inv, hist] = await Promise.all([
    get(`/api/v1/hosts/${mac}`), get(`/api/v1/events?host=${mac}&limit=30`),
    get(`/api/v1/hosts/${mac}/inventory`).catch(() => null), get(`/api/v1/hosts/${mac}/inventory/history?limit=20`).catch(() => ({ inventories: [] })),
  ]);
  const x = d.host;
  const kv = (k, v) => h("tr", {}, h("th", {}, k), h("td", {}, v ?? "–"));
  const tasks = await get(`/api/v1/tasks?host=${mac}&all=true`);
  const i = inv && inv.inventory;
  show(h("h1", {}, `Host ${x.name || ""} ${x.mac}`),
    h("table", { id: "identity" }, kv("Name", x.name), kv("Site", x.site), kv("Vendor / model", `${x.vendor || ""} ${x.model || ""}`), kv("Serial", x.serial),
      kv("SMBIOS UUID", x.smbios_uuid), kv("Firmware", x.firmware), kv("Last address", x.last_ip), kv("Switch port", x.circuit), kv("Registered", when(x.registered_at)), kv("Last boot", when(x.last_boot))),
    ME.operator ? h("fieldset", {}, h("legend", {}, "Actions"), await taskForm({ host: mac }, "host-task"),
      h("button", { class: "secondary", onclick: () => act(`wake ${mac}`, () => api("POST", "/api/v1/hosts/wake", { hosts: [mac] })) }, "Wake now")) : null,
    h("h2", {}, "Tasks"), h("table", { id: "tasks" }, h("tr", {}, ["Id", "Kind", "Image", "Created", "State", "Progress", ""].map((c) => h("th", {}, c))),
      tasks.tasks.map((t) => h("tr", {}, h("td", {}, t.id), h("td", {}, t.kind), h("td", {}, t.image || ""), h("td", {}, when(t.created_at)), ...taskCells(t)))),
    h("h2", {}, "Inventory"), i ? h("table", { id: "inventory" },
      kv("CPU", (i.cpus || []).map((c) => c.model || c.name).join(", ")), kv("Memory", bytes((i.memory || []).reduce((a, m) => a + (m.size_mib || 0) * 1048576, 0))),
      kv("Disks", (i.storage || []).map((s) => `${s.name || ""} ${s.model || ""} ${bytes(s.size || s.size_bytes)}`).join(", ")),
      kv("Collected", when(inv.received_at)))
      : h("p", { class: "muted" }, "No inventory yet: the machine reports one at each network boot."),
    hist.inventories.length ? h("h2", {}, "Hardware changes") : null,
    hist.inventories.length ? h("table", { id: "inventory-history" }, h("tr", {}, ["Collected", "Changes since the inventory before"].map((c) => h("th", {}, c))),
      hist.inventories.map((s) => h("tr", {}, h("td", {}, when(s.received_at)),
        h("td", {}, s.changes.length ? s.changes.map((c) => h("div", { class: c.what === "new_machine" ? "muted" : "warn" }, `${c.what}: ${c.detail}`)) : h("span", { class: "muted" }, "no change"))))) : null,
    h("h2", {}, "Boots"), h("table", {}, h("tr", {}, ["At", "Stage", "Firmware", "Address"].map((c) => h("th", {}, c))),
      d.boots.map((b) => h("tr", {}, h("td", {}, when(b.at)), h("td", {}, b.stage), h("td", {}, b.firmware || ""), h("td", {}, b.ip || "")))),
    h("h2", {}, "Events"), h("table", { id: "events" }, h("tr", {}, ["At", "Event", "Detail"].map((c) => h("th", {}, c))),
      events.events.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.kind), h("td", { class: "muted" }, JSON.stringify(e.data).slice(0, 200))))));
};

pages.room = async () => {
  const group = ARG;
  const [groups, tasks] = await Promise.all([get(`/api/v1/groups?name=${encodeURIComponent(group)}`), get(`/api/v1/tasks?group=${encodeURIComponent(group)}&limit=1000`)]);
  const g = groups.groups.find((x) => x.name === group);
  if (!g) { show(h("h1", {}, `Room ${group}`), h("p", { class: "warn-bad" }, "No such room among yours.")); return; }
  const macs = g.hosts;
  const byMac = new Map(tasks.tasks.filter((t) => macs.includes(t.mac)).map((t) => [t.mac, t]));
  const table = h("table", { id: "room" }, h("tr", {}, ["Host", "Task", "Kind", "State", "Progress", ""].map((c) => h("th", {}, c))),
    macs.map((mac) => {
      const t = byMac.get(mac);
      return h("tr", { dataset: { mac } }, h("td", {}, link(`/ui/host/${mac}`, mac)),
        ...(t ? [h("td", {}, t.id), h("td", {}, t.kind), ...taskCells(t)] : [h("td", { colspan: 5, class: "muted" }, "no open task")]));
    }));
  // a task made now for this room shows up in the live stream: redraw to get its row
  live.listeners.push((d) => { if (d.open.some((t) => macs.includes(t.mac) && !byMac.has(t.mac))) draw(); });
  show(h("h1", {}, `Room ${group}`), h("p", { class: "muted" }, `${macs.length} hosts`),
    ME.operator ? h("fieldset", {}, h("legend", {}, "Reimage or capture the room"), await taskForm({ group }, "room-task"),
      h("button", { class: "secondary", onclick: () => act(`wake ${group}`, () => api("POST", "/api/v1/hosts/wake", { group })) }, "Wake the room now")) : null,
    ME.operator ? h("fieldset", {}, h("legend", {}, "On a calendar (in the site's time)"), await ruleForm(group)) : null,
    table);
};

/** A calendar rule for a room: what, which image, when (cron: minute hour day month weekday). */
async function ruleForm(group) {
  const kind = h("select", { name: "kind" }, ["reimage", "wake", "inventory", "capture"].map((k) => h("option", { value: k }, k)));
  const image = h("select", { name: "image" }, await imageOptions());
  const every = h("input", { name: "every", value: "0 2 * * 1", title: "minute hour day-of-month month day-of-week", size: 12 });
  const multicast = h("input", { name: "multicast", type: "checkbox", checked: true });
  return h("form", { class: "inline", id: "rule-form", onsubmit: (e) => {
    e.preventDefault();
    const body = { kind: kind.value, group, every: every.value };
    if (kind.value === "reimage" || kind.value === "capture") body.image = image.value;
    if (kind.value === "reimage" && multicast.checked) body.multicast = true;
    act(`rule for ${group}: ${kind.value} at "${every.value}"`, () => api("POST", "/api/v1/task-rules", body));
  } }, kind, image, h("label", {}, "every ", every), h("label", {}, multicast, " multicast"), h("button", { type: "submit" }, "Add rule"));
}

pages.images = async () => {
  const [im, sites, pushes] = await Promise.all([get("/api/v1/images"), get("/api/v1/sites"), get("/api/v1/pushes")]);
  const held = (v) => sites.sites.filter((s) => s.relay && s.relay.complete.some((c) => c.image === v.name && String(c.version) === String(v.version))).map((s) => s.name);
  const table = h("table", { id: "images" }, h("tr", {}, ["Image", "Version", "Created", "Size", "Stored", "Shared with other versions", "Held by", "State"].map((c) => h("th", {}, c))),
    im.images.map((v) => h("tr", { dataset: { version: v.version } },
      h("td", {}, v.name), h("td", {}, String(v.version).slice(0, 12)), h("td", {}, when(new Date(v.created * 1000).toISOString())),
      h("td", { class: "num" }, bytes(v.size)), h("td", { class: "num" }, bytes(v.stored_bytes)),
      h("td", { class: "num" }, v.stored_bytes ? `${Math.round((100 * v.shared_bytes) / v.stored_bytes)} %` : "–"),
      h("td", {}, held(v).join(", ") || h("span", { class: "muted" }, "central only")),
      h("td", {}, v.approved ? "approved" : (ME.admin
        ? h("button", { class: "approve", dataset: { version: v.version }, onclick: () => act(`${v.name} ${String(v.version).slice(0, 12)} approved`, () => api("POST", `/api/v1/images/${encodeURIComponent(v.name)}/${v.version}/approve`)) }, "Approve")
        : h("span", { class: "warn" }, "awaits approval"))))));
  let pushForm = null;
  if (ME.admin) {
    const image = h("select", { name: "image", id: "push-image" }, [...new Set(im.images.map((v) => v.name))].map((n) => h("option", { value: n }, n)));
    const boxes = sites.sites.map((s) => h("label", {}, h("input", { type: "checkbox", name: "site", value: s.name }), ` ${s.name} `));
    const deadline = h("input", { name: "deadline", type: "datetime-local" });
    pushForm = h("form", { class: "inline", id: "push", onsubmit: (e) => {
      e.preventDefault();
      const chosen = [...e.target.querySelectorAll("input[name=site]:checked")].map((b) => b.value);
      const body = { images: [image.value], sites: chosen.length ? chosen : ["all"] };
      if (deadline.value) body.deadline = new Date(deadline.value).toISOString().replace(/\.\d+Z$/, "Z");
      act(`push of ${image.value} to ${body.sites.join(", ")} created`, () => api("POST", "/api/v1/pushes", body));
    } }, "Push ", image, " to ", boxes, h("label", {}, "deadline ", deadline), h("button", { type: "submit" }, "Create push"));
  }
  show(h("h1", {}, "Images"), table, pushForm ? h("fieldset", {}, h("legend", {}, "Push to sites' relays"), pushForm) : null,
    h("h2", {}, "Pushes"), h("table", { id: "pushes" }, h("tr", {}, ["Push", "State", "Versions", "Sites", ""].map((c) => h("th", {}, c))),
      pushes.pushes.map((p) => h("tr", { dataset: { push: p.push } }, h("td", {}, link(`/ui/push/${p.push}`, `${p.push} (curve)`)), h("td", { class: "push-state" }, p.state), h("td", {}, p.versions.map((v) => `${v.image}@${String(v.version).slice(0, 8)}`).join(", ")),
        h("td", {}, p.sites.map((s) => h("div", {}, `${s.site}: ${s.state}`, bar(s.bytes_done, s.bytes_total, s.state)))),
        h("td", {}, ME.admin ? pushButtons(p) : null)))));
};

/** Pause, resume or cancel a push (admins): what its state allows. */
function pushButtons(p) {
  const b = (action, label, cls) => h("button", { class: `${cls} push-${action}`, onclick: () => {
    if (action === "cancel" && !confirm(`Cancel push ${p.push}? Its sites stop fetching; what they hold stays.`)) return;
    act(`push ${p.push}: ${action}`, () => api("POST", `/api/v1/pushes/${p.push}/${action}`));
  } }, label);
  return [p.state === "paused" ? b("resume", "Resume", "secondary") : b("pause", "Pause", "secondary"), " ", b("cancel", "Cancel", "danger")];
}

/** The night's curve: each site's share of its push done, over time, and the deadline. */
function nightCurve(p) {
  const W = 760, H = 300, L = 44, R = 12, T = 12, B = 28;
  const t0 = p.created_at;
  const t1 = Math.max(p.now, p.deadline || 0, t0 + 60);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (f) => T + (1 - f) * (H - T - B);
  const kids = [];
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    kids.push(svg("line", { x1: L, x2: W - R, y1: y(f), y2: y(f), class: "grid" }), svg("text", { x: L - 6, y: y(f) + 4, "text-anchor": "end" }, `${f * 100} %`));
  }
  for (let k = 0; k <= 4; k++) {
    const t = t0 + ((t1 - t0) * k) / 4;
    kids.push(svg("text", { x: x(t), y: H - 8, "text-anchor": "middle" }, hhmm(t)));
  }
  if (p.deadline) kids.push(svg("line", { x1: x(p.deadline), x2: x(p.deadline), y1: T, y2: H - B, class: "deadline" }), svg("text", { x: x(p.deadline) - 4, y: T + 10, "text-anchor": "end", class: "deadline" }, "deadline"));
  p.sites.forEach((s, k) => {
    const pts = s.samples.map(([t, done]) => `${x(t).toFixed(1)},${y(s.bytes_total ? done / s.bytes_total : 1).toFixed(1)}`).join(" ");
    kids.push(svg("polyline", { points: pts, class: `curve c${k % 8}`, "data-site": s.site }, svg("title", {}, s.site)));
  });
  return svg("svg", { id: "push-chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "push progress over time per site" }, kids);
}

pages.push = async () => {
  const p = await get(`/api/v1/pushes/${encodeURIComponent(ARG)}/progress`);
  const last = (s) => (s.samples.length ? s.samples[s.samples.length - 1] : [null, 0]);
  show(h("h1", {}, `Push ${p.push}`), h("p", { class: "muted" }, `${p.state}; created ${hhmm(p.created_at)} UTC${p.deadline ? `, deadline ${hhmm(p.deadline)} UTC` : ""}; sampled every 5 minutes from the relays' heartbeats`),
    p.sites.length ? nightCurve(p) : h("p", { class: "muted" }, "No progress reported yet: the sites' relays report it in their heartbeats once their window opens."),
    h("table", { id: "push-sites" }, h("tr", {}, ["", "Site", "Done", "Of", "Last report"].map((c) => h("th", {}, c))),
      p.sites.map((s, k) => h("tr", {}, h("td", {}, h("span", { class: `swatch c${k % 8}` })), h("td", {}, s.site),
        h("td", {}, bar(last(s)[1], s.bytes_total, last(s)[1] >= s.bytes_total ? "done" : "")), h("td", { class: "num" }, bytes(s.bytes_total)), h("td", {}, last(s)[0] ? `${hhmm(last(s)[0])} UTC` : "–")))));
};

pages.multicast = async () => {
  const q = new URLSearchParams(location.search);
  const p = new URLSearchParams({ limit: "50" });
  if (q.get("before")) p.set("before", q.get("before"));
  const m = await get(`/api/v1/multicast?${p}`);
  const older = m.next ? link(`/ui/multicast?before=${m.next}`, "Older →") : null;
  const sent = (r) => (r && r.bytes ? `${bytes(r.bytes)} sent in ${duration(Math.round(r.seconds))}, ${r.passes} passes${r.ended ? ", " + r.ended : ""}` : "");
  show(h("h1", {}, "Multicast sessions"), h("div", { class: "pager" }, h("span", {}, `${m.sessions.length} sessions shown`), older),
    h("table", { id: "multicast" }, h("tr", {}, ["Session", "Room", "Image", "Created", "Runs", "Receivers", "Waiting", "Joined", "Done", "Dropped", "Progress", "Sender"].map((c) => h("th", {}, c))),
      m.sessions.map((s) => h("tr", { dataset: { session: s.id } }, h("td", {}, s.id), h("td", {}, s.group ? link(`/ui/room/${encodeURIComponent(s.group)}`, s.group) : "–"),
        h("td", {}, `${s.image}@${String(s.version).slice(0, 8)}`), h("td", {}, when(s.created_at)), h("td", { class: "num" }, s.runs),
        h("td", { class: "num" }, s.tasks), h("td", { class: "num" }, s.waiting), h("td", { class: "num" }, s.joined), h("td", { class: "num" }, s.done),
        h("td", { class: s.dropped ? "num warn-bad" : "num" }, s.dropped), h("td", {}, bar(s.done, s.tasks, "")), h("td", { class: "muted" }, sent(s.last_report))))));
};

pages.tasks = async () => {
  const q = new URLSearchParams(location.search);
  const p = new URLSearchParams({ limit: "100" });
  for (const k of ["before", "state", "site", "group"]) if (q.get(k)) p.set(k, q.get(k));
  if (q.get("state")) p.set("all", "true");
  const t = await get(`/api/v1/tasks?${p}`);
  const older = t.next ? (() => { const n = new URLSearchParams(q); n.set("before", t.next); return link(`/ui/tasks?${n}`, "Older →"); })() : null;
  show(h("h1", {}, q.get("state") ? `Tasks ${q.get("state")}` : "Open tasks"),
    h("div", { class: "pager" }, h("span", {}, `${t.total} tasks`), link("/ui/tasks?state=failed", "failed"), link("/ui/tasks?state=done", "done"), link("/ui/tasks", "open"), older), h("table", { id: "tasks" }, h("tr", {}, ["Id", "Host", "Kind", "Image", "Not before", "State", "Progress", "", ""].map((c) => h("th", {}, c))),
    t.tasks.map((x) => h("tr", {}, h("td", {}, x.id), h("td", {}, link(`/ui/host/${x.mac}`, x.mac)), h("td", {}, x.kind), h("td", {}, x.image || ""), h("td", {}, when(x.not_before)), ...taskCells(x),
      h("td", {}, ME.operator ? h("button", { class: "danger", onclick: () => act(`task ${x.id} cancelled`, () => api("DELETE", `/api/v1/tasks/${x.id}`)) }, "Cancel") : null)))));
};

pages.rules = async () => {
  const r = await get("/api/v1/task-rules");
  show(h("h1", {}, "Calendar rules"), h("table", { id: "rules" }, h("tr", {}, ["Id", "Kind", "Target", "Every", "Zone", "Next run", "Last outcome", ""].map((c) => h("th", {}, c))),
    r.rules.map((x) => h("tr", {}, h("td", {}, x.id), h("td", {}, x.kind), h("td", {}, x.group || x.host), h("td", {}, x.every), h("td", {}, x.tz || ""), h("td", {}, when(x.next_run)),
      h("td", { class: x.failed ? "warn-bad" : "" }, x.last_outcome || ""),
      h("td", {}, ME.operator ? [x.failed ? h("button", { class: "secondary", onclick: () => act(`rule ${x.id} acknowledged`, () => api("POST", `/api/v1/task-rules/${x.id}/ack`)) }, "Acknowledge") : null,
        h("button", { class: "danger", onclick: () => act(`rule ${x.id} removed`, () => api("DELETE", `/api/v1/task-rules/${x.id}`)) }, "Remove")] : null)))));
};

pages.audit = async () => {
  const q = new URLSearchParams(location.search);
  const p = new URLSearchParams({ limit: "100" });
  if (q.get("before")) p.set("before", q.get("before"));
  const a = await get(`/api/v1/audit?${p}`);
  show(h("h1", {}, "Audit trail"), h("p", {}, `${a.total} entries · `, link("/api/v1/audit?format=csv", "Export as CSV")),
    h("table", { id: "audit" }, h("tr", {}, ["At", "User", "From", "Action", "Status", "Detail"].map((c) => h("th", {}, c))),
      a.entries.map((e) => h("tr", {}, h("td", {}, when(new Date(e.at * 1000).toISOString())), h("td", {}, e.user), h("td", {}, e.from || ""),
        h("td", {}, e.action), h("td", {}, e.status ?? ""), h("td", { class: "muted" }, (e.detail || "").slice(0, 160))))),
    a.next ? h("div", { class: "pager" }, link(`/ui/audit?before=${a.next}`, "Older →")) : null);
};

pages.users = async () => {
  const u = await get("/api/v1/users");
  show(h("h1", {}, "Staff"), h("table", { id: "users" }, h("tr", {}, ["Name", "Role", "Sites", "From", "Last login", "Tokens"].map((c) => h("th", {}, c))),
    u.users.map((x) => h("tr", {}, h("td", {}, x.name), h("td", {}, x.role), h("td", {}, x.sites.join(", ")), h("td", {}, x.source),
      h("td", {}, x.last_login ? when(new Date(x.last_login * 1000).toISOString()) : "never"), h("td", {}, x.tokens)))),
  h("p", { class: "muted" }, "Add accounts on the server: bootcast user add NAME --role operator --site SITE"));
};

// --- frame ----------------------------------------------------------------------------------

function frame() {
  if (!ME) return;
  const items = [["", "Dashboard"], ["hosts", "Hosts"], ["images", "Images"], ["multicast", "Multicast"], ["tasks", "Tasks"], ["rules", "Calendar"], ["audit", "Audit"]];
  if (ME.admin) items.push(["users", "Staff"]);
  document.getElementById("nav").replaceChildren(...items.map(([p, label]) =>
    h("a", { href: `/ui/${p}`, class: (PAGE === p || (PAGE === "dashboard" && p === "")) ? "current" : "" }, label)));
  document.getElementById("who").replaceChildren(
    h("span", { id: "me" }, `${ME.user} · ${ME.role}${ME.sites.length ? " of " + ME.sites.join(", ") : ""}`),
    h("button", { id: "logout", class: "secondary", onclick: async () => {
      await api("POST", "/api/v1/logout").catch(() => null);
      location.href = "/ui/login";
    } }, "Log out"));
}

async function draw() {
  try {
    await pages[PAGE]();
    document.body.dataset.drawn = String((Number(document.body.dataset.drawn) || 0) + 1);
    for (const t of live.tasks.values()) updateTask(t);
  } catch (e) {
    show(h("h1", {}, "Cannot show this page"), h("p", { class: "warn-bad", id: "error" }, e.message));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  frame();
  draw();
  if (ME) startLive();
});

// gatewayd dashboard: live figures on the overview, the live request tail and the event
// stream. Loaded as a file (the CSP allows no inline script); builds rows with textContent
// only, never HTML from the server's data.
"use strict";

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  row.appendChild(td);
  return td;
}

function num(v) {
  return v === null || v === undefined ? "-" : String(Number(v.toPrecision(6)));
}

function stamp(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function refreshOverview() {
  fetch("/dashboard/overview.json", { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
    .then((o) => {
      document.getElementById("generation").textContent = String(o.generation);
      if (o.config_hash) document.getElementById("config-hash").textContent = o.config_hash.slice(0, 19);
      for (const [win, rows] of Object.entries(o.windows)) {
        const table = document.getElementById("routes-" + win);
        if (!table) continue;
        const body = table.tBodies[0];
        const fresh = document.createElement("tbody");
        for (const r of rows) {
          const tr = document.createElement("tr");
          tr.dataset.route = r.route;
          for (const v of [r.route, r.requests, num(r.rps), num(r.rate_4xx), num(r.rate_5xx), num(r.p50_ms), num(r.p95_ms), num(r.p99_ms)]) cell(tr, v);
          fresh.appendChild(tr);
        }
        if (!rows.length) {
          const tr = document.createElement("tr");
          tr.className = "empty";
          cell(tr, "no samples yet (one per second)").colSpan = 8;
          fresh.appendChild(tr);
        }
        table.replaceChild(fresh, body);
      }
      document.body.dataset.refreshed = String(Date.now());
    })
    .catch(() => {});
}

function follow(url, state, handlers) {
  const source = new EventSource(url);
  const label = document.getElementById(state);
  label.textContent = "connecting";
  source.onopen = () => { label.textContent = "connected"; };
  source.onerror = () => { label.textContent = "reconnecting"; };
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
  }
  return source;
}

function prepend(body, tr, limit) {
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > limit) body.deleteRow(body.rows.length - 1);
}

function startTail() {
  const form = document.getElementById("tail-filter");
  const body = document.getElementById("tail").tBodies[0];
  let source = null;
  const connect = () => {
    if (source) source.close();
    const params = new URLSearchParams(new FormData(form));
    for (const [k, v] of [...params.entries()]) if (!v) params.delete(k);
    source = follow("/dashboard/tail/stream?" + params.toString(), "tail-state", {
      request: (line) => {
        const tr = document.createElement("tr");
        tr.className = "s" + String(line.status)[0] + "xx";
        for (const v of [stamp(line.time), line.method, line.path, line.route, line.status, line.latency_ms, line.tenant, line.key_id]) cell(tr, v);
        prepend(body, tr, 200);
      },
      dropped: (d) => { document.getElementById("tail-dropped").textContent = String(d.dropped); },
    });
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); body.replaceChildren(); connect(); });
  connect();
}

function startEvents() {
  const body = document.getElementById("events").tBodies[0];
  const seen = new Set([...body.rows].map((r) => r.cells[0].textContent));
  follow("/dashboard/events/stream", "events-state", {
    bus: (e) => {
      if (e.id === undefined || seen.has(String(e.id))) return;
      seen.add(String(e.id));
      const tr = document.createElement("tr");
      for (const v of [e.id, e.time, e.type, e.tenant || "-", JSON.stringify(e.payload)]) cell(tr, v);
      prepend(body, tr, 200);
    },
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "overview") { refreshOverview(); setInterval(refreshOverview, 2000); }
  if (page === "tail") startTail();
  if (page === "events") startEvents();
});

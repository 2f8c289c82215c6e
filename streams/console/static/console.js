// jobstream console: live updates by polling the console's own JSON API, an SVG chart, and
// the replay panel. No framework, no build step; every value goes into the page as text.
"use strict";

(function () {
  const POLL_MS = 2000;
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const BASE = meta("console-base");
  const CSRF = meta("csrf-token");
  const SVG = "http://www.w3.org/2000/svg";

  async function api(path, body) {
    const opts = { headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = CSRF;
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(BASE + path, opts);
    let data = null;
    try { data = await res.json(); } catch (e) { data = { error: `HTTP ${res.status}` }; }
    return { status: res.status, data };
  }

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  function link(href, text) { return el("a", text, { href }); }
  function fill(tbody, rows, empty, cols) {
    tbody.replaceChildren();
    if (!rows.length) {
      const tr = el("tr", null, { class: "empty" });
      tr.append(el("td", empty, { colspan: String(cols) }));
      tbody.append(tr);
      return;
    }
    for (const cells of rows) {
      const tr = el("tr");
      for (const c of cells) {
        const td = el("td");
        if (c instanceof Node) td.append(c); else td.textContent = c === null || c === undefined ? "–" : String(c);
        tr.append(td);
      }
      tbody.append(tr);
    }
  }
  function stamp() {
    const u = document.getElementById("updated");
    if (u) u.textContent = "live · updated " + new Date().toLocaleTimeString();
  }
  const secs = (v) => (v === null || v === undefined ? "–" : v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`);
  const enc = encodeURIComponent;

  // --- overview ------------------------------------------------------------------------------
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // per-minute points into `slots` bins covering [start, now]
  function bins(data, slots) {
    const start = Date.parse(data.start), end = Date.parse(data.now);
    const width = (end - start) / slots;
    const out = Array.from({ length: slots }, () => ({ succeeded: 0, retried: 0, dead_lettered: 0, p50: [], p95: [] }));
    for (const p of data.series) {
      const i = Math.min(slots - 1, Math.max(0, Math.floor((Date.parse(p.minute) + 30000 - start) / width)));
      out[i].succeeded += p.succeeded; out[i].retried += p.retried; out[i].dead_lettered += p.dead_lettered;
      if (p.p50_s !== null) out[i].p50.push(p.p50_s);
      if (p.p95_s !== null) out[i].p95.push(p.p95_s);
    }
    return { out, start, end };
  }

  function drawThroughput(data) {
    const chart = document.getElementById("chart-throughput");
    const slots = data.window === "1d" ? 144 : 60;  // a bar per minute, or per 10 minutes
    const { out, start, end } = bins(data, slots);
    const W = 900, H = 220, L = 44, B = 22, T = 8;
    const max = Math.max(1, ...out.map((b) => b.succeeded + b.retried + b.dead_lettered));
    const bw = (W - L - 4) / slots;
    chart.replaceChildren();
    chart.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
    chart.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    chart.append(svg("text", { x: L - 6, y: T + 10, "text-anchor": "end" }, String(max)));
    chart.append(svg("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0"));
    const fmt = (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    chart.append(svg("text", { x: L, y: H - 6 }, fmt(start)));
    chart.append(svg("text", { x: W, y: H - 6, "text-anchor": "end" }, fmt(end)));
    chart.append(svg("text", { x: (W + L) / 2, y: H - 6, "text-anchor": "middle" },
      data.window === "1d" ? "jobs per 10 minutes" : "jobs per minute"));
    out.forEach((b, i) => {
      let y = H - B;
      for (const kind of ["succeeded", "retried", "dead_lettered"]) {
        if (!b[kind]) continue;
        const h = ((H - B - T) * b[kind]) / max;
        y -= h;
        const r = svg("rect", { class: kind, x: L + 2 + i * bw, y, width: Math.max(bw - 1, 1), height: h });
        r.append(svg("title", {}, `${b[kind]} ${kind}`));
        chart.append(r);
      }
    });
    chart.setAttribute("data-total", String(out.reduce((a, b) => a + b.succeeded + b.dead_lettered, 0)));
  }

  function drawLatency(data) {
    const chart = document.getElementById("chart-latency");
    const slots = data.window === "1d" ? 144 : 60;
    const { out } = bins(data, slots);
    const W = 900, H = 160, L = 44, B = 14, T = 8;
    const pick = (xs) => (xs.length ? Math.max(...xs) : null);  // the worst minute of a bin
    const p50 = out.map((b) => pick(b.p50)), p95 = out.map((b) => pick(b.p95));
    const max = Math.max(0.001, ...p95.filter((v) => v !== null), ...p50.filter((v) => v !== null));
    const bw = (W - L - 4) / slots;
    chart.replaceChildren();
    chart.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
    chart.append(svg("text", { x: L - 6, y: T + 10, "text-anchor": "end" }, secs(max)));
    chart.append(svg("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0"));
    for (const [name, vals] of [["p50", p50], ["p95", p95]]) {
      const pts = [];
      vals.forEach((v, i) => {
        if (v === null) return;
        pts.push(`${(L + 2 + (i + 0.5) * bw).toFixed(1)},${(H - B - ((H - B - T) * v) / max).toFixed(1)}`);
      });
      if (pts.length > 1) chart.append(svg("polyline", { class: name, points: pts.join(" ") }));
      for (const pt of pts) {  // a dot per bin, so a single busy minute still shows
        const [x, y] = pt.split(",");
        chart.append(svg("circle", { class: name, cx: x, cy: y, r: 3 }));
      }
    }
  }

  function showTotals(data) {
    const t = data.totals || {};
    for (const k of ["succeeded", "retried", "dead_lettered"]) {
      document.getElementById(`t-${k}`).textContent = t[k] === undefined ? "–" : String(t[k]);
    }
    document.getElementById("t-p50").textContent = secs(t.p50);
    document.getElementById("t-p95").textContent = secs(t.p95);
  }

  function showCluster(c) {
    const err = document.getElementById("group-error");
    err.hidden = !c.error;
    err.textContent = c.error || "";
    document.getElementById("group-state").textContent = c.state ? `(${c.state})` : "";
    const members = c.members || [];
    fill(document.querySelector("#members tbody"),
      members.map((m) => [m.member_id, m.client_id, m.client_host, m.assigned.join(", ") || "none"]),
      "no members: no worker is in the group", 4);
    document.getElementById("inflight-note").textContent = c.in_flight_note || "";
    fill(document.querySelector("#claims tbody"),
      (c.claims || []).map((r) => [r.worker, r.in_flight]), c.claims ? "nothing in flight" : "not known here", 2);
    fill(document.querySelector("#topic-lag tbody"),
      (c.topics || []).map((t) => [t.topic, t.role, t.lag]), "no topics yet", 3);
    fill(document.querySelector("#partition-lag tbody"),
      (c.partitions || []).map((p) => [p.topic, p.partition, p.committed, p.end, p.lag, p.member || "unassigned"]),
      "no partitions", 6);
  }

  function showLimits(r) {
    const ts = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(1) : v);
    fill(document.querySelector("#rate-limits tbody"),
      r.keys.map((k) => [k.key, ts(k.rate_per_s), ts(k.capacity), ts(k.tokens),
        k.tokens_per_minute ? `${ts(k.tpm_tokens_left)} of ${ts(k.tokens_per_minute)}` : "–",
        k.paused_until || "not paused", k.pause_reason || ""]),
      "no rate-limit keys used yet", 7);
  }

  function overview() {
    let win = "1h";
    const initial = JSON.parse(document.getElementById("initial-overview").dataset.json);
    const draw = (d) => { showTotals(d); drawThroughput(d); drawLatency(d); };
    draw(initial);
    for (const b of document.querySelectorAll("[data-window]")) {
      b.addEventListener("click", () => {
        win = b.dataset.window;
        for (const o of document.querySelectorAll("[data-window]")) o.classList.toggle("on", o === b);
        tick();
      });
    }
    async function tick() {
      const [o, c, r] = await Promise.all([
        api(`/api/overview?window=${win}`), api("/api/cluster"), api("/api/rate-limits"),
      ]);
      if (o.status === 200 && o.data.window === win) draw(o.data);
      if (c.status === 200) showCluster(c.data);
      if (r.status === 200) showLimits(r.data);
      stamp();
    }
    tick();
    setInterval(tick, POLL_MS);
  }

  // --- jobs ------------------------------------------------------------------------------------
  function jobs() {
    const table = document.getElementById("jobs");
    if (table.dataset.live !== "yes") return;  // later pages stay put: keyset pages do not shift
    async function tick() {
      const r = await api(`/api/jobs${window.location.search}`);
      if (r.status !== 200) return;
      fill(table.querySelector("tbody"), r.data.items.map((j) => [
        link(`${BASE}/jobs/${enc(j.job_id)}`, j.job_id), j.type, statusBadge(j.status), j.attempt,
        j.executions, j.worker, j.error_class || "", (j.updated_at || "").slice(0, 19),
        j.replay_of ? link(`${BASE}/dead-letters/${enc(j.replay_of)}`, j.replay_of) : "",
      ]), "no jobs match", 9);
      for (const tr of table.querySelectorAll("tbody tr")) {
        const a = tr.querySelector("a");
        if (a) tr.setAttribute("data-job", a.textContent);
      }
      stamp();
    }
    setInterval(tick, POLL_MS);
    stamp();
  }
  function statusBadge(s) { return el("span", s, { class: `st st-${s}` }); }

  // --- replay ------------------------------------------------------------------------------
  function replayPanel() {
    const panel = document.getElementById("replay-panel");
    if (!panel) return;
    const filters = JSON.parse(panel.dataset.filters || "{}");
    const ids = panel.dataset.ids ? JSON.parse(panel.dataset.ids) : null;
    const result = document.getElementById("replay-result");
    const confirmBtn = document.getElementById("replay-confirm");
    let expect = null;

    function body(dryRun) {
      const b = {};
      for (const k of ["type", "reason", "error_class", "since", "until", "key"]) if (filters[k]) b[k] = filters[k];
      if (ids) b.ids = ids;
      b.dry_run = dryRun;
      b.reset_attempts = panel.querySelector("[name=reset_attempts]").checked;
      b.force = panel.querySelector("[name=force]").checked;
      b.include_cancelled = panel.querySelector("[name=include_cancelled]").checked;
      const lim = panel.querySelector("[name=limit]").value.trim();
      if (lim) b.limit = Number(lim);
      if (!dryRun) b.expect = expect;
      return b;
    }
    document.getElementById("replay-preview").addEventListener("click", async () => {
      result.textContent = "previewing…";
      const r = await api("/api/replay", body(true));
      if (r.status !== 200) { result.textContent = r.data.error; result.className = "error"; return; }
      result.textContent = ""; result.className = "";
      const d = r.data;
      expect = d.would_replay;
      document.getElementById("replay-plan").hidden = false;
      document.getElementById("replay-summary").textContent =
        `Dry run: would replay ${d.would_replay}, skip ${d.skipped_already_replayed} already replayed,` +
        ` skip ${d.skipped_invalid} invalid, skip ${d.skipped_cancelled} cancelled since` +
        ` (of ${d.matched} matching; ${d.scanned} scanned), at ${d.rate}/s.`;
      fill(document.getElementById("replay-items"),
        d.items.map((i) => [i.action, i.id, i.job_id, i.type]), "nothing selected", 4);
      confirmBtn.hidden = d.would_replay === 0;
      confirmBtn.textContent = `Confirm: replay ${d.would_replay} dead letter${d.would_replay === 1 ? "" : "s"}`;
    });
    confirmBtn.addEventListener("click", async () => {
      confirmBtn.disabled = true;
      result.textContent = "replaying…";
      const r = await api("/api/replay", body(false));
      confirmBtn.disabled = false;
      if (r.status !== 200) { result.textContent = r.data.error; result.className = "error"; return; }
      const d = r.data;
      result.className = d.failed ? "error" : "";
      result.textContent = `Replayed ${d.replayed}, skipped ${d.skipped_already_replayed} already replayed,` +
        ` ${d.skipped_invalid} invalid, ${d.skipped_cancelled} cancelled since, failed ${d.failed}.`;
      confirmBtn.hidden = true;
    });
  }

  // --- a job's control: the progress bar moves, the operators' cancel button ---------------
  function jobControl() {
    const card = document.getElementById("job-control");
    if (!card) return;
    const id = card.dataset.job;
    const result = document.getElementById("job-cancel-result");
    const panel = document.getElementById("job-cancel-panel");
    let timer = null;

    function show(data) {
      const row = data.row, c = data.control;
      const badge = document.getElementById("job-status");
      if (row && badge) { badge.textContent = row.status; badge.className = `st st-${row.status}`; }
      const bar = document.getElementById("job-progress");
      const text = document.getElementById("job-progress-text");
      if (c.progress !== null && c.progress !== undefined) {
        bar.hidden = false;
        bar.value = c.progress;
        text.textContent = `${Math.round(c.progress * 100)}%` + (c.progress_detail ? ` · ${c.progress_detail}` : "");
      }
      if (c.cancel_requested_at) {
        document.getElementById("job-cancel-state").textContent = `asked at ${c.cancel_requested_at.slice(0, 19)}`;
      }
      if (!c.cancellable) {
        if (panel) panel.hidden = true;
        if (timer !== null) { clearInterval(timer); timer = null; }
      }
      stamp();
    }
    async function tick() {
      const r = await api(`/api/jobs/${enc(id)}`);
      if (r.status === 200) show(r.data);
    }
    if (card.dataset.live === "yes" && document.getElementById("job-id")) timer = setInterval(tick, 1000);

    const ask = document.getElementById("job-cancel");
    if (!ask) return;
    const confirmBox = document.getElementById("job-cancel-confirm");
    ask.addEventListener("click", () => { confirmBox.hidden = false; ask.hidden = true; });
    document.getElementById("job-cancel-no").addEventListener("click", () => { confirmBox.hidden = true; ask.hidden = false; });
    document.getElementById("job-cancel-yes").addEventListener("click", async () => {
      const yes = document.getElementById("job-cancel-yes");
      yes.disabled = true;
      result.textContent = "cancelling…"; result.className = "";
      const r = await api(`/api/jobs/${enc(id)}/cancel`, {});
      yes.disabled = false;
      confirmBox.hidden = true;
      if (r.data && r.data.cancel) {
        result.textContent = r.data.message;
        result.className = r.status === 200 ? "" : "error";
        if (panel) panel.hidden = true;
        if (!document.getElementById("job-id")) { window.location.reload(); return; }  // it has a row now
        tick();
      } else {
        result.textContent = (r.data && r.data.error) || `HTTP ${r.status}`;
        result.className = "error";
        ask.hidden = false;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "overview") overview();
    if (page === "jobs") jobs();
    if (page === "job") jobControl();
    replayPanel();
  });
})();

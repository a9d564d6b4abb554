// statusd dashboard. Plain JavaScript, no dependencies, served from the
// binary. Every text that comes from the API is set through textContent or
// an attribute, never parsed as HTML; the page's Content-Security-Policy
// forbids inline scripts besides.
"use strict";

(function () {
  const TOKEN_KEY = "statusd.adminToken";
  const REFRESH_MS = 5000;
  const STATES = ["queued", "pending_upload", "uploading", "in_doubt", "posted", "failed", "invalid", "cancelled", "deleted"];
  const PENDING = ["queued", "pending_upload"];
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let refreshes = 0;
  let busy = false;
  let again = false;

  // ---- small DOM helpers (text only) -------------------------------------

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) e.setAttribute(k, String(v));
    }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function fmtInt(n) {
    return Number(n).toLocaleString("en-US");
  }

  function fmtAge(secs) {
    if (secs === null || secs === undefined) return "–";
    secs = Math.max(0, Math.round(secs));
    if (secs < 60) return secs + "s";
    if (secs < 3600) return Math.floor(secs / 60) + "m " + (secs % 60) + "s";
    if (secs < 86400) return Math.floor(secs / 3600) + "h " + Math.floor((secs % 3600) / 60) + "m";
    return Math.floor(secs / 86400) + "d " + Math.floor((secs % 86400) / 3600) + "h";
  }

  function fmtAgo(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "–";
    return fmtAge((Date.now() - t) / 1000) + " ago";
  }

  function fmtClock(d) {
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  }

  // ---- token and API -------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class Unauthorized extends Error {}

  async function api(method, path) {
    const res = await fetch(path, {
      method,
      headers: { Authorization: "Bearer " + token(), Accept: "application/json" },
      cache: "no-store",
    });
    if (res.status === 401 || res.status === 403) {
      let msg = "the token was refused";
      try { msg = (await res.json()).error || msg; } catch (_) { /* keep default */ }
      throw new Unauthorized(msg);
    }
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) {
      throw new Error((body && body.error) || ("HTTP " + res.status));
    }
    return body;
  }

  function showLogin(message) {
    stopTimer();
    $("app").hidden = true;
    $("signout").hidden = true;
    $("refresh").hidden = true;
    $("login").hidden = false;
    setConn("idle", "not connected");
    const err = $("login-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("token").focus();
  }

  function showApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    $("refresh").hidden = false;
  }

  function setConn(kind, text) {
    const c = $("conn");
    c.dataset.conn = kind;
    c.textContent = text;
  }

  function flash(kind, text) {
    const f = $("flash");
    f.dataset.kind = kind;
    f.textContent = text;
    f.hidden = false;
    clearTimeout(flash.t);
    flash.t = setTimeout(() => { f.hidden = true; }, 8000);
  }

  // ---- refresh -------------------------------------------------------------

  function stopTimer() {
    if (timer) clearTimeout(timer);
    timer = null;
  }

  function schedule() {
    stopTimer();
    timer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    if (!token()) return showLogin();
    // One refresh at a time; one asked for meanwhile (after an action)
    // runs right after, so the page never shows data older than the action.
    if (busy) { again = true; return; }
    busy = true;
    try {
      const [stats, instances, activity, inDoubt, failed, invalid, views] = await Promise.all([
        api("GET", "v1/stats"),
        api("GET", "v1/instances"),
        api("GET", "v1/activity?window=1h&bucket=1m"),
        api("GET", "v1/statuses?state=in_doubt&limit=200"),
        api("GET", "v1/statuses?state=failed&limit=200"),
        api("GET", "v1/statuses?state=invalid&limit=200"),
        api("GET", "v1/views?window=24h&bucket=1h&limit=20"),
      ]);
      showApp();
      renderCounts(stats);
      renderPaused(instances);
      renderInstances(instances);
      renderActivity(activity);
      renderAttention(inDoubt.concat(failed, invalid));
      renderViews(views);
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      setConn("ok", "connected");
      $("updated").textContent = "updated " + fmtClock(new Date());
    } catch (e) {
      if (e instanceof Unauthorized) {
        sessionStorage.removeItem(TOKEN_KEY);
        again = false;
        return showLogin(e.message);
      }
      setConn("error", "cannot reach statusd: " + e.message);
    } finally {
      busy = false;
    }
    if (again) {
      again = false;
      return refresh();
    }
    if (!document.hidden) schedule();
  }

  // ---- views (provider webhook events), last 24 h ---------------------------

  function renderViews(v) {
    const body = $("views-rows");
    body.replaceChildren();
    for (const st of v.statuses) {
      const c = st.counts;
      const tr = el("tr");
      tr.append(
        el("td", { class: "mono", title: st.id }, st.id.slice(0, 8)),
        el("td", {}, st.instance),
        el("td", {}, st.kind),
        el("td", {}, st.state),
        el("td", { class: "num" }, fmtInt(c.viewed)),
        el("td", { class: "num" }, fmtInt(c.delivered)),
        el("td", { class: "num" }, fmtInt(c.played)),
        el("td", {}, fmtAgo(st.created_at)),
      );
      body.append(tr);
    }
    $("views-empty").hidden = v.statuses.length > 0;
    // Viewers over time: one bar per hour of the window.
    const chart = $("views-chart");
    chart.replaceChildren();
    const W = 760, H = 120, hours = 24;
    const end = Math.floor(Date.now() / 3600000) * 3600000;
    const byStart = new Map(v.over_time.map((b) => [Date.parse(b.start), b.views]));
    let max = 1;
    for (const n of byStart.values()) max = Math.max(max, n);
    const bw = W / hours;
    for (let i = 0; i < hours; i++) {
      const t = end - (hours - 1 - i) * 3600000;
      const n = byStart.get(t) || 0;
      const h = (n / max) * (H - 20);
      const r = svg("rect", { x: i * bw + 2, y: H - h, width: bw - 4, height: h, class: "bar-posted" });
      r.append(svg("title", {}, new Date(t).toISOString().slice(11, 16) + " UTC: " + n + " views"));
      chart.append(r);
    }
    chart.append(svg("text", { x: 4, y: 12, class: "axis" }, "max " + fmtInt(max) + " views / hour"));
    $("views-total").textContent = fmtInt(v.over_time.reduce((a, b) => a + b.views, 0));
  }

  // ---- counts per instance and state --------------------------------------

  function renderCounts(rows) {
    const byInst = new Map();
    for (const r of rows) {
      if (!byInst.has(r.instance)) byInst.set(r.instance, { counts: {}, oldest: null, scheduled: 0 });
      const i = byInst.get(r.instance);
      i.counts[r.state] = (i.counts[r.state] || 0) + r.count;
      i.scheduled += r.scheduled || 0;
      if (PENDING.includes(r.state) && r.oldest_age_secs !== null && r.oldest_age_secs !== undefined) {
        i.oldest = i.oldest === null ? r.oldest_age_secs : Math.max(i.oldest, r.oldest_age_secs);
      }
    }
    const table = $("counts");
    const head = el("thead");
    const hr = el("tr");
    hr.append(el("th", {}, "Instance"));
    for (const s of STATES) hr.append(el("th", { class: "num" }, s));
    hr.append(el("th", { class: "num" }, "Scheduled"));
    hr.append(el("th", { class: "num" }, "Oldest pending"));
    head.append(hr);

    const body = el("tbody");
    const totals = {};
    let oldestAll = null;
    let scheduledAll = 0;
    const names = Array.from(byInst.keys()).sort();
    for (const name of names) {
      const i = byInst.get(name);
      const tr = el("tr", { "data-instance": name });
      tr.append(el("td", { class: "mono" }, name));
      for (const s of STATES) {
        const n = i.counts[s] || 0;
        totals[s] = (totals[s] || 0) + n;
        tr.append(el("td", { class: n ? "num" : "num zero", "data-instance": name, "data-state": s, "data-count": n }, fmtInt(n)));
      }
      scheduledAll += i.scheduled;
      tr.append(el("td", { class: i.scheduled ? "num" : "num zero", "data-instance": name, "data-scheduled": i.scheduled }, fmtInt(i.scheduled)));
      tr.append(el("td", { class: "num", "data-instance": name, "data-oldest-pending": i.oldest === null ? "" : i.oldest.toFixed(1) }, fmtAge(i.oldest)));
      if (i.oldest !== null) oldestAll = oldestAll === null ? i.oldest : Math.max(oldestAll, i.oldest);
      body.append(tr);
    }
    const foot = el("tfoot");
    if (names.length > 1) {
      const tr = el("tr", { "data-total": "" });
      tr.append(el("td", {}, "All instances"));
      for (const s of STATES) {
        const n = totals[s] || 0;
        tr.append(el("td", { class: n ? "num" : "num zero", "data-total-state": s, "data-count": n }, fmtInt(n)));
      }
      tr.append(el("td", { class: "num" }, fmtInt(scheduledAll)));
      tr.append(el("td", { class: "num" }, fmtAge(oldestAll)));
      foot.append(tr);
    }
    table.replaceChildren(head, body, foot);
    $("counts-empty").hidden = names.length > 0;
    $("oldest-pending").textContent = fmtAge(oldestAll);
    $("scheduled").textContent = fmtInt(scheduledAll);
    $("scheduled").dataset.value = scheduledAll;
  }

  // ---- paused instances ----------------------------------------------------

  function renderPaused(instances) {
    const paused = instances.filter((i) => i.paused);
    const trs = paused.map((i) => {
      const tr = el("tr", { "data-paused-instance": i.instance });
      tr.append(el("td", { class: "mono wrap" }, i.instance));
      tr.append(el("td", { class: "why", "data-field": "why" }, i.paused.reason));
      tr.append(el("td", { title: i.paused.since, "data-since": i.paused.since }, fmtAgo(i.paused.since)));
      return tr;
    });
    $("paused-rows").replaceChildren(...trs);
    $("paused").hidden = paused.length === 0;
  }

  // ---- instances (runtime and file) ----------------------------------------

  function renderInstances(instances) {
    const trs = instances.map((i) => {
      const tr = el("tr", { "data-instance": i.instance, "data-state": i.state });
      tr.append(el("td", { class: "mono wrap" }, i.instance));
      tr.append(el("td", {}, i.source));
      tr.append(el("td", { "data-field": "state" }, i.state));
      tr.append(el("td", { class: "num", "data-field": "due" }, fmtInt(i.due)));
      tr.append(el("td", { class: "num", "data-field": "in-flight" }, fmtInt(i.in_flight)));
      tr.append(el("td", { class: "num", "data-field": "posted" }, fmtInt(i.posted_last_minute)));
      tr.append(el("td", { class: "num" }, i.oldest_due_age_secs == null ? "–" : fmtAge(i.oldest_due_age_secs)));
      const caps = i.capabilities;
      const evidence = caps ? caps.evidence + (caps.updated_at ? " (" + caps.updated_at + ")" : "") : "";
      tr.append(el("td", { "data-field": "supplied-ids", title: evidence }, caps ? caps.supplied_ids : "–"));
      tr.append(el("td", { "data-field": "lookup-by-id", title: evidence }, caps ? caps.lookup_by_id : "–"));
      tr.append(el("td", { "data-field": "engine" }, caps && caps.engine ? caps.engine : "–"));
      tr.append(el("td", { class: "why" }, i.reason || ""));
      return tr;
    });
    $("instance-rows").replaceChildren(...trs);
    $("instances").hidden = instances.length === 0;
  }

  // ---- activity chart ------------------------------------------------------

  // The axis top: four whole-number steps of 1, 2, 3, 4, 5, 6 or 8 × 10^k.
  function niceMax(v) {
    const raw = Math.max(1, v / 4);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 3, 4, 5, 6, 8, 10]) if (m * p >= raw) return 4 * m * p;
    return 40 * p;
  }

  function renderActivity(a) {
    const buckets = a.buckets || [];
    let posted = 0;
    let errors = 0;
    for (const b of buckets) { posted += b.posted; errors += b.errors; }
    const attempts = posted + errors;
    // Over the stretch that had work (first to last bucket with an
    // attempt), not the whole window: a 5-minute burst an hour ago is not
    // "2 per minute". The tile says which stretch it is.
    const busy = buckets.map((b, i) => (b.posted + b.errors ? i : -1)).filter((i) => i >= 0);
    const span = busy.length ? busy[busy.length - 1] - busy[0] + 1 : 0;
    const minutes = Math.max(1, (span * a.bucket_secs) / 60);
    $("throughput-window").textContent = span ? "over the " + fmtInt(Math.round(minutes)) + " min with work" : "no work in the last hour";
    $("throughput").dataset.minutes = span ? String(minutes) : "";
    $("posted-1h").textContent = fmtInt(posted);
    $("posted-1h").dataset.value = posted;
    $("errors-1h").textContent = fmtInt(errors);
    $("errors-1h").dataset.value = errors;
    const tp = posted / minutes;
    $("throughput").textContent = tp >= 10 ? Math.round(tp).toString() : tp.toFixed(1);
    $("throughput").dataset.value = tp.toFixed(2);
    const rate = attempts ? (100 * errors) / attempts : 0;
    const rateEl = $("error-rate");
    rateEl.textContent = attempts ? rate.toFixed(rate < 10 ? 1 : 0) + "%" : "–";
    rateEl.dataset.value = attempts ? rate.toFixed(2) : "";
    rateEl.classList.toggle("warn", rate >= 5);
    drawChart(buckets, a.bucket_secs, a.now);
  }

  function drawChart(buckets, bucketSecs, nowIso) {
    const W = 760, H = 200, L = 40, R = 40, T = 10, B = 26;
    const pw = W - L - R, ph = H - T - B;
    const chart = $("chart");
    const parts = [];
    const peak = buckets.reduce((m, b) => Math.max(m, b.posted + b.errors), 0);
    const ymax = niceMax(peak);
    // Grid and left axis (per minute counts).
    for (let k = 0; k <= 4; k++) {
      const y = T + ph - (ph * k) / 4;
      parts.push(svg("line", { class: "gridline", x1: L, x2: L + pw, y1: y, y2: y }));
      parts.push(svg("text", { class: "axis", x: L - 6, y: y + 4, "text-anchor": "end" }, fmtInt(Math.round((ymax * k) / 4))));
      parts.push(svg("text", { class: "axis", x: L + pw + 6, y: y + 4, "text-anchor": "start" }, (25 * k) + "%"));
    }
    const n = Math.max(1, buckets.length);
    const slot = pw / n;
    const bw = Math.max(1, slot * 0.72);
    // Error rate over a trailing window of RATE_BUCKETS buckets: one
    // bucket's few attempts make a jumpy line, five read as a trend.
    const RATE_BUCKETS = 5;
    // Segments: no line across minutes without any attempt to rate.
    const segments = [[]];
    let winPosted = 0, winErrors = 0;
    buckets.forEach((b, i) => {
      winPosted += b.posted;
      winErrors += b.errors;
      if (i >= RATE_BUCKETS) {
        winPosted -= buckets[i - RATE_BUCKETS].posted;
        winErrors -= buckets[i - RATE_BUCKETS].errors;
      }
      const x = L + i * slot + (slot - bw) / 2;
      const hp = (ph * b.posted) / ymax;
      const he = (ph * b.errors) / ymax;
      const g = svg("g", { "data-bucket": b.start, "data-posted": b.posted, "data-errors": b.errors });
      if (b.posted) g.append(svg("rect", { class: "bar-posted", x: x.toFixed(1), y: (T + ph - hp).toFixed(1), width: bw.toFixed(1), height: hp.toFixed(1), rx: 1 }));
      if (b.errors) g.append(svg("rect", { class: "bar-errors", x: x.toFixed(1), y: (T + ph - hp - he).toFixed(1), width: bw.toFixed(1), height: he.toFixed(1), rx: 1 }));
      const hover = svg("rect", { class: "hover", x: (L + i * slot).toFixed(1), y: T, width: slot.toFixed(1), height: ph });
      const total = b.posted + b.errors;
      hover.append(svg("title", {}, fmtClock(new Date(b.start)) + " — " + b.posted + " posted, " + b.errors + " errors" +
        (total ? " (" + ((100 * b.errors) / total).toFixed(0) + "% errors)" : "")));
      g.append(hover);
      parts.push(g);
      const winTotal = winPosted + winErrors;
      if (winTotal) {
        segments[segments.length - 1].push([(L + i * slot + slot / 2).toFixed(1), (T + ph - (ph * winErrors) / winTotal).toFixed(1)]);
      } else if (segments[segments.length - 1].length) {
        segments.push([]);
      }
    });
    for (const pts of segments) {
      if (pts.length > 1) {
        parts.push(svg("polyline", { class: "rate", points: pts.map((p) => p.join(",")).join(" ") }));
      } else if (pts.length === 1) {
        parts.push(svg("circle", { class: "rate", cx: pts[0][0], cy: pts[0][1], r: 2 }));
      }
    }
    // Time axis: minutes before the database's now.
    const now = Date.parse(nowIso) || Date.now();
    const span = n * bucketSecs;
    for (const back of [60, 45, 30, 15, 0]) {
      const secs = back * 60;
      if (secs > span) continue;
      const x = L + pw - (pw * secs) / span;
      const label = back === 0 ? "now" : "−" + back + "m";
      parts.push(svg("text", { class: "axis", x: x.toFixed(1), y: H - 8, "text-anchor": back === 0 ? "end" : "middle" }, label));
    }
    chart.dataset.peak = peak;
    chart.dataset.asOf = new Date(now).toISOString();
    chart.replaceChildren(...parts);
  }

  // ---- rows that need an operator ----------------------------------------

  // A short, one-line look at what the row would post.
  function preview(r) {
    let p = r.payload;
    if (typeof p === "string") {
      try { p = JSON.parse(p); } catch (_) { return p.slice(0, 80); }
    }
    if (!p || typeof p !== "object") return String(p).slice(0, 80);
    const text = p.text || p.caption || (p.file && p.file.url) || JSON.stringify(p);
    const one = String(text).replace(/\s+/g, " ");
    return one.length > 80 ? one.slice(0, 79) + "…" : one;
  }

  function errorText(r) {
    const err = r.last_error || "";
    const http = r.last_http_status ? "HTTP " + r.last_http_status + (err ? ": " : "") : "";
    return http + err;
  }

  // The error cell: at most ERR_MAX characters (the whole text in its
  // tooltip and on the API), so one 3,000-character error cannot make a
  // row a screen tall.
  const ERR_MAX = 300;
  function errCell(text) {
    const t = text || "–";
    return el("td", { class: "err", "data-field": "last-error", title: t.length > ERR_MAX ? t : undefined },
      t.length > ERR_MAX ? t.slice(0, ERR_MAX - 1) + "…" : t);
  }

  function rowTr(r, group) {
    const parked = r.state === "in_doubt" && r.parked_at;
    const tr = el("tr", { "data-row-id": r.id, "data-state": r.state, "data-parked": parked ? "true" : "false", "data-member-of": group, class: group ? "member" : undefined });
    const idCell = el("td", { class: "mono", title: r.id });
    idCell.append(el("span", {}, r.id.slice(0, 8) + "…" + r.id.slice(-4)));
    if (r.message_id) {
      idCell.append(el("br"));
      idCell.append(el("span", { class: "muted", title: "WhatsApp message id" }, r.message_id));
    }
    tr.append(idCell);
    tr.append(el("td", { class: "mono", title: r.instance }, r.instance));
    tr.append(el("td", {}, r.kind));
    tr.append(el("td", { class: "preview", "data-field": "preview" }, preview(r)));
    const st = el("td", { "data-field": "state" });
    st.append(el("span", { class: "badge", "data-state": r.state }, r.state));
    if (parked) st.append(el("span", { class: "parked", title: "The look-up gave up; waiting for an operator" }, "parked"));
    tr.append(st);
    tr.append(el("td", { class: "num" }, r.attempts));
    tr.append(errCell(errorText(r)));
    tr.append(el("td", { title: r.updated_at }, fmtAgo(r.updated_at)));
    const act = el("td", { class: "actions" });
    // Offer what the state machine allows; the API refuses the rest anyway.
    const button = (action, label, cls, allowed, why, whyNot) => {
      const b = el("button", { type: "button", class: cls, "data-action": action, "data-id": r.id, title: allowed ? why : whyNot }, label);
      b.disabled = !allowed;
      return b;
    };
    const inDoubt = r.state === "in_doubt";
    const retry = button("retry", "Retry", "small", r.state === "failed" || r.state === "invalid" || parked,
      inDoubt ? "Look the id up at the provider again" : "Send again (an invalid row is validated again first)",
      "The reconciler is still looking this row up");
    const cancel = button("cancel", "Cancel", "small secondary", inDoubt,
      "Stop: never send this status", "This row is already final; Retry sends it again");
    const confirm = button("confirm", "Shown", "small secondary", inDoubt,
      "You saw it shown: mark it posted (it is never sent again)", "Only a row in doubt can be confirmed");
    act.append(retry, cancel, confirm);
    tr.append(act);
    return tr;
  }

  // Groups open by the operator stay open across refreshes.
  const openGroups = new Set();

  function renderAttention(rows) {
    rows.sort((a, b) => Date.parse(b.updated_at) - Date.parse(a.updated_at));
    // Identical errors (same state and text) read as one line with a count:
    // 37 rows failing the same way are one problem, not a 4,000 px page.
    const groups = new Map();
    for (const r of rows) {
      const key = r.state + "\u0000" + errorText(r);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(r);
    }
    const trs = [];
    let n = 0;
    for (const [key, members] of groups) {
      if (members.length === 1) {
        trs.push(rowTr(members[0], undefined));
        continue;
      }
      n += 1;
      const gid = "g" + n;
      const open = openGroups.has(key);
      const head = el("tr", { class: "group", "data-group": gid, "data-count": members.length, "data-state": members[0].state });
      const toggle = el("button", { type: "button", class: "small ghost", "data-toggle": gid, "aria-expanded": open ? "true" : "false" }, (open ? "Hide " : "Show ") + members.length + " rows");
      toggle.dataset.key = key;
      const first = el("td", { colspan: 4 });
      first.append(toggle);
      first.append(el("span", { class: "muted" }, " " + new Set(members.map((m) => m.instance)).size + " instance(s)"));
      head.append(first);
      const st = el("td", {});
      st.append(el("span", { class: "badge", "data-state": members[0].state }, members[0].state));
      head.append(st);
      head.append(el("td", { class: "num" }, "×" + members.length));
      head.append(errCell(errorText(members[0])));
      head.append(el("td", { title: members[0].updated_at }, fmtAgo(members[0].updated_at)));
      head.append(el("td", {}));
      trs.push(head);
      for (const m of members) {
        const tr = rowTr(m, gid);
        tr.hidden = !open;
        trs.push(tr);
      }
    }
    const body = $("attention-rows");
    body.replaceChildren(...trs);
    $("attention-empty").hidden = rows.length > 0;
    $("attention").hidden = rows.length === 0;
    const count = $("attention-count");
    count.textContent = fmtInt(rows.length);
    count.dataset.value = rows.length;
    count.classList.toggle("warn", rows.length > 0);
  }

  async function act(action, id, button) {
    // Each acts on a status viewers may see: ask first.
    const question = {
      retry: "Retry status " + id + "?\n\nA failed or invalid row is sent again; a parked in-doubt row is looked up again.",
      cancel: "Cancel status " + id + "?\n\nIt will never be sent.",
      confirm: "Mark status " + id + " as posted?\n\nOnly if you saw it shown (on the phone): it will never be sent again.",
    }[action];
    if (!window.confirm(question)) {
      flash("ok", "Nothing done: " + action + " of " + id + " not confirmed.");
      return;
    }
    button.disabled = true;
    try {
      const row = await api("POST", "v1/statuses/" + encodeURIComponent(id) + "/" + action);
      const done = { retry: "Retried ", cancel: "Cancelled ", confirm: "Confirmed " }[action];
      flash("ok", done + id + ": now " + row.state + ".");
    } catch (e) {
      if (e instanceof Unauthorized) {
        sessionStorage.removeItem(TOKEN_KEY);
        return showLogin(e.message);
      }
      flash("error", action + " " + id + " failed: " + e.message);
    }
    await refresh();
  }

  // ---- wiring --------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $("token").value = "";
      $("login-error").hidden = true;
      refresh();
    });
    $("signout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin();
    });
    $("refresh").addEventListener("click", () => refresh());
    $("attention-rows").addEventListener("click", (ev) => {
      const t = ev.target.closest("button[data-toggle]");
      if (t) {
        const open = t.getAttribute("aria-expanded") !== "true";
        if (open) openGroups.add(t.dataset.key); else openGroups.delete(t.dataset.key);
        t.setAttribute("aria-expanded", open ? "true" : "false");
        for (const tr of document.querySelectorAll('tr[data-member-of="' + t.dataset.toggle + '"]')) tr.hidden = !open;
        t.textContent = (open ? "Hide " : "Show ") + t.closest("tr").dataset.count + " rows";
        return;
      }
      const b = ev.target.closest("button[data-action]");
      if (b && !b.disabled) act(b.dataset.action, b.dataset.id, b);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && token()) refresh();
    });
    if (token()) refresh(); else showLogin();
  });
})();

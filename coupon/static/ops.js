// The operators' live page: polls live.json every second, turns its counters into rates, keeps
// the last five minutes itself and draws them with uPlot. The coupons issued per second since the
// opening come from Redis's count per second once, when a campaign is selected (history.json);
// the polls extend them.
"use strict";
(function () {
  const root = document.getElementById("ops");
  const POLL_MS = Number(root.dataset.pollSeconds) * 1000;
  const HISTORY = 300; // polls kept: five minutes at one a second
  const ISSUED_POINTS = 7200; // points of the issued chart kept: the history and two hours of polls
  // the answers chart's series: label, colour, the outcome codes counted (null: every other one)
  const OUTCOMES = [
    ["201 new", "#2e7d32", ["NEW"]],
    ["200 held", "#1565c0", ["HELD"]],
    ["409 sold out", "#757575", ["SOLD_OUT"]],
    ["409 not open/closed", "#a1887f", ["NOT_OPEN", "CLOSED"]],
    ["429 rate limited", "#ef6c00", ["RATE_LIMITED"]],
    ["503 unavailable", "#c62828", ["UNAVAILABLE"]],
    ["other errors", "#6a1b9a", null],
  ];
  const NAMED = new Set(OUTCOMES.flatMap(([, , codes]) => codes || []));
  const $ = (id) => document.getElementById(id);

  let selected = new URLSearchParams(location.search).get("campaign");
  let previous = null; // the last state, for rates
  let lastAnswer = 0; // Date.now() of the last good poll
  let recent = emptyHistory();
  let issued = {t: [], perSecond: []}; // the issued chart: each point the rate since the one before
  let mark = null; // {now, issued}: the last count of coupons issued the chart has accounted for
  let history = null; // history.json of the selected campaign, once fetched
  let historyOf = null; // campaign id whose history was asked for
  let replayOf = null; // campaign id, status and whether Redis held it, of the replay shown
  let replayClock = ""; // what the replay says of the sale's length
  const charts = {};

  function emptyHistory() {
    return {t: [], answers: OUTCOMES.map(() => []), p50: [], p99: [], backlog: [], lag: []};
  }

  // ---- figures ----
  function rate(now, before, seconds) {
    return seconds > 0 && now >= before ? (now - before) / seconds : null;
  }

  function outcomeCount(answers, codes) {
    return Object.entries(answers)
      .filter(([code]) => (codes ? codes.includes(code) : !NAMED.has(code)))
      .reduce((sum, [, n]) => sum + n, 0);
  }

  // a quantile of the answers between two polls, from the histogram's cumulative buckets,
  // interpolated within a bucket as Prometheus's histogram_quantile does; in ms
  function quantile(q, buckets, before) {
    const counts = buckets.map(([bound, n], i) => [bound, n - ((before[i] || [])[1] || 0)]);
    const total = counts.length ? counts[counts.length - 1][1] : 0;
    if (total <= 0) return null;
    let lower = 0, below = 0;
    for (const [bound, n] of counts) {
      if (n >= q * total) {
        if (bound === null) return lower * 1000; // beyond the last bound
        return (lower + (bound - lower) * (q * total - below) / Math.max(1, n - below)) * 1000;
      }
      lower = bound; below = n;
    }
    return null;
  }

  // a count of the coupons issued at time `now`: a point of the rate since the last count
  function countIssued(now, count) {
    if (mark && now > mark.now && count >= mark.issued) {
      issued.t.push(now);
      issued.perSecond.push((count - mark.issued) / (now - mark.now));
      if (issued.t.length > ISSUED_POINTS) { issued.t.shift(); issued.perSecond.shift(); }
    }
    if (!mark || now > mark.now) mark = {now, issued: count};
  }

  // the sale so far from Redis's count per second: a point at the end of each step; the polls
  // that came before it are counted again after it
  function useHistory(r) {
    const before = mark;
    history = r;
    issued = {t: r.issues.map((_, i) => r.start + (i + 1) * r.step_seconds),
              perSecond: r.issues.map((n) => n / r.step_seconds)};
    mark = {now: r.until, issued: r.rows};
    if (before) countIssued(before.now, before.issued);
  }

  function record(state) {
    const c = state.campaign;
    const p = previous && previous.campaign && c && previous.campaign.id === c.id ? previous : null;
    const seconds = p ? state.now - p.now : 0;
    const host = state.this_host, before = p ? p.this_host : null;
    const h = recent;
    h.t.push(state.now);
    countIssued(state.now, c.issued);
    OUTCOMES.forEach(([, , codes], i) => h.answers[i].push(
      p ? rate(outcomeCount(host.answers, codes), outcomeCount(before.answers, codes), seconds) : null));
    h.p50.push(p ? quantile(0.5, host.latency_buckets, before.latency_buckets) : null);
    h.p99.push(p ? quantile(0.99, host.latency_buckets, before.latency_buckets) : null);
    // the highest readings since the previous poll: the backlog is a sawtooth between flushes
    h.backlog.push(c.outbox.peak_backlog);
    h.lag.push(c.outbox.peak_flush_lag_seconds);
    if (h.t.length > HISTORY) {
      for (const series of [h.t, ...h.answers, h.p50, h.p99, h.backlog, h.lag]) series.shift();
    }
  }

  // ---- formatting ----
  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, seconds);
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
    if (m < 60) return `${m} min ${s} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }
  const number = (n, digits = 0) => (n === null || n === undefined ? "–" :
    n.toLocaleString("en-US", {maximumFractionDigits: digits, minimumFractionDigits: digits}));
  const last = (series) => series[series.length - 1];
  const text = (id, value) => { const e = $(id); if (e.textContent !== value) e.textContent = value; };
  const epoch = (iso) => (iso ? Date.parse(iso) / 1000 : null);

  // ---- charts ----
  const clockTime = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");
  const CLOCK_TICKS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200]; // whole seconds
  // uPlot leaves 50 px between ticks by default, less than a clock label and a gap ("13:57:40"
  // is ~50 px in its 12 px font): the labels ran into one another. A tick every widest label + 24 px.
  const measurer = document.createElement("canvas").getContext("2d");
  measurer.font = '12px system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
  const labelSpace = (widest) => Math.ceil(measurer.measureText(widest).width) + 24;
  // a chart without uPlot's legend (keys of our own, with the current values, sit below it)
  function chart(id, series, axes, scales, xAxis) {
    const target = $(id);
    const opts = {
      width: Math.max(300, target.clientWidth), height: 190,
      scales: Object.assign({x: {time: true}}, scales || {}),
      series: [{}, ...series],
      axes: [xAxis || {values: (u, ticks) => ticks.map(clockTime), incrs: CLOCK_TICKS,
                       space: labelSpace("00:00:00")}, ...axes],
      legend: {show: false}, cursor: {drag: {x: false, y: false}},
    };
    return new uPlot(opts, [[], ...series.map(() => [])], target);
  }

  // the key under a chart: a swatch, the label and the latest value of each series shown
  function key(id, entries) {
    $(id).replaceChildren(...entries.map(([label, colour, value]) => {
      const span = document.createElement("span");
      span.innerHTML = `<b style="background:${colour}"></b>`;
      span.append(`${label} ${value}`);
      return span;
    }));
  }

  function liveCharts() {
    if (charts.issued) return;
    const line = (label, stroke, extra) => Object.assign({label, stroke, width: 2, spanGaps: false}, extra);
    charts.issued = chart("chart-issued", [line("issued / s", "#2e7d32", {fill: "rgba(46,125,50,0.15)"})],
                          [{label: "per s"}]);
    charts.answers = chart("chart-answers", OUTCOMES.map(([label, colour]) => line(label, colour)),
                           [{label: "per s"}]);
    charts.latency = chart("chart-latency", [line("p50", "#1565c0"), line("p99", "#c62828")],
                           [{label: "ms"}]);
    // a step a poll: the highest reading over the interval that ends at the poll
    const peak = {paths: uPlot.paths.stepped({align: -1}), points: {show: false}};
    charts.outbox = chart("chart-outbox",
                          [line("backlog", "#6a1b9a", Object.assign({scale: "entries"}, peak)),
                           line("flush lag s", "#ef6c00", Object.assign({scale: "s"}, peak))],
                          [{label: "entries", scale: "entries"}, {label: "s", scale: "s", side: 1, grid: {show: false}}],
                          {entries: {range: (u, min, max) => [0, Math.max(10, max)]},
                           s: {range: (u, min, max) => [0, Math.max(1, max)]}});
  }

  function drawLive(state) {
    const h = recent, c = state.campaign, totals = state.this_host.answers;
    charts.issued.setData([issued.t, issued.perSecond]);
    charts.latency.setData([h.t, h.p50, h.p99]);
    charts.outbox.setData([h.t, h.backlog, h.lag]);
    // the outcomes seen in the window, and always the two a sale is made of
    const total = OUTCOMES.map(([, , codes]) => outcomeCount(totals, codes));
    const seen = OUTCOMES.map((_, i) => i === 0 || i === 2 || total[i] > 0 || recent.answers[i].some((v) => v > 0));
    seen.forEach((show, i) => { if (charts.answers.series[i + 1].show !== show) charts.answers.setSeries(i + 1, {show}); });
    charts.answers.setData([h.t, ...h.answers]);
    key("key-issued", [["issued / s", "#2e7d32", number(last(issued.perSecond))],
                       ["in all", "transparent", number(c.issued)]]);
    text("note-issued", !history ? (historyOf === c.id ? "the sale so far is being read…" : "") :
      history.issues.length ? `From the opening to ${clockTime(history.until)} as Redis counted them ` +
        `(${history.step_seconds > 1 ? `per ${history.step_seconds} s` : "per second"}), ` +
        "then from the live count, a point a poll." : "From the live count, a point a poll.");
    key("key-answers", OUTCOMES.map(([label, colour], i) => [label, colour,
      `${number(last(h.answers[i]))}/s · ${number(total[i])} in all`]).filter((_, i) => seen[i]));
    key("key-latency", [["p50", "#1565c0", number(last(h.p50), 1) + " ms"], ["p99", "#c62828", number(last(h.p99), 1) + " ms"]]);
    key("key-outbox", [["backlog", "#6a1b9a", `highest ${number(last(h.backlog))} · now ${number(c.outbox.backlog)}`],
                       ["flush lag", "#ef6c00", `highest ${number(last(h.lag), 2)} s · now ${number(c.outbox.flush_lag_seconds, 2)} s`]]);
  }

  window.addEventListener("resize", () => {
    for (const c of Object.values(charts)) c.setSize({width: Math.max(300, c.root.parentNode.clientWidth), height: 190});
  });

  // ---- the page ----
  function showHealth(health) {
    const list = $("health");
    list.replaceChildren(...Object.entries(health).map(([name, check]) => {
      const li = document.createElement("li");
      li.className = check.ok ? "ok" : "down";
      li.textContent = `${check.ok ? "✓" : "✗"} ${name}`;
      li.title = check.detail;
      return li;
    }));
  }

  function showCampaigns(campaigns, current) {
    const list = $("campaigns");
    if (!campaigns.length) {
      list.innerHTML = '<li class="empty">none yet: <code>flask campaign create</code></li>';
      return;
    }
    list.replaceChildren(...campaigns.map((c) => {
      const li = document.createElement("li");
      li.className = (c.id === current ? "selected " : "") + (c.live ? "live" : "closed");
      const a = document.createElement("a");
      a.href = `?campaign=${c.id}`;
      a.dataset.id = c.id;
      a.innerHTML = `<span class="name"></span><span class="badge ${c.status}">${c.status.replace("_", " ")}</span>` +
        `<span class="mini"><span style="width:${(100 * c.issued / c.total).toFixed(1)}%"></span></span>` +
        `<span class="count">${number(c.issued)} / ${number(c.total)}</span>`;
      a.querySelector(".name").textContent = `#${c.id} ${c.name}`;
      li.append(a);
      return li;
    }));
  }

  $("campaigns").addEventListener("click", (event) => {
    const a = event.target.closest("a[data-id]");
    if (!a) return;
    event.preventDefault();
    select(a.dataset.id);
    window.history.pushState(null, "", a.href);
  });

  function select(id) {
    selected = String(id);
    forget();
    poll();
  }

  // a campaign shown anew: nothing of the one before carries over
  function forget() {
    previous = null;
    recent = emptyHistory();
    issued = {t: [], perSecond: []};
    mark = null;
    history = null;
    historyOf = null;
    replayOf = null;
    replayClock = "";
  }

  async function showCampaign(state) {
    const c = state.campaign;
    $("campaign").hidden = !c;
    if (!c) return;
    text("title", `#${c.id} ${c.name}`);
    const badge = $("status");
    badge.className = `badge ${c.status}`;
    text("status", c.status.replace("_", " "));
    const share = c.total ? c.issued / c.total : 0;
    $("bar-fill").style.width = `${(100 * share).toFixed(2)}%`;
    $("bar-fill").className = c.remaining <= 0 ? "full" : "";
    text("bar-text", `${number(c.issued)} of ${number(c.total)} issued (${(100 * share).toFixed(1)} %) · ` +
      `${number(c.remaining)} left`);
    const opened = epoch(c.opens_at);
    let clock = "";
    if (c.sold_out_after_seconds !== undefined && c.sold_out_after_seconds !== null) {
      clock = `sold out ${duration(c.sold_out_after_seconds)} after opening`;
    } else if (!c.live) {
      clock = c.status === "closed" ? replayClock || "closed" : "";
    } else if (c.remaining <= 0) {
      clock = "sold out (the last rows are being written)";
    } else if (opened && opened > state.now) {
      clock = `opens in ${duration(opened - state.now)}`;
    } else if (opened && c.status !== "closed") {
      clock = `open for ${duration(state.now - opened)}`;
    }
    text("clock", clock);
    $("live").hidden = !c.live;
    if (c.live) {
      if (historyOf !== c.id) await loadHistory(c);
      if (String(c.id) !== selected && selected) return; // another campaign was chosen meanwhile
      showLive(state);
    }
    if (c.replay_url && replayOf !== replayKey(c)) showReplay(c);
    $("replay").hidden = !c.replay_url;
  }

  // the sale so far, once a selection: the polls after it extend it
  async function loadHistory(c) {
    historyOf = c.id;
    try {
      const response = await fetch(c.history_url, {cache: "no-store"});
      if (!response.ok) throw new Error(response.status);
      const r = await response.json();
      if (historyOf === r.id) useHistory(r);
    } catch (e) {
      text("note-issued", `The sale so far could not be read (${e.message}): from the live count only.`);
    }
  }

  // where an issue call's time went since the previous poll, this host: the mean ms of each part
  // per answer, claims per Redis round trip, the event loop's lag; the flush's batch time, its
  // database share, and each flusher's own rows/s (the flushers sharing this host's metrics)
  const PARTS = [["queued", "waiting to be read"], ["turn", "its turn"], ["admit", "admission"],
                 ["token", "token check"], ["serial", "waiting for a serial"], ["claim", "claim round trip"]];
  function timeParts(state, last) {
    const now = state.this_host, before = last && last.this_host;
    if (!before || !now.time || !before.time) return "";
    const total = (answers) => Object.values(answers).reduce((a, b) => a + b, 0);
    const answers = total(now.answers) - total(before.answers);
    const said = [];
    if (answers > 0) {
      said.push(PARTS.map(([part, name]) =>
        `${name} ${number(1000 * (now.time.issue[part] - before.time.issue[part]) / answers, 2)}`).join(" · ") + " ms a call");
      const trips = now.time.claim_round_trips - before.time.claim_round_trips;
      if (trips > 0) said.push(`${number((now.time.claims_sent - before.time.claims_sent) / trips, 1)} claims a round trip`);
    }
    said.push(`event loop late by ${number(1000 * now.time.loop_lag_seconds, 1)} ms at worst`);
    const spent = (t) => Object.values(t.flush).reduce((a, b) => a + b, 0);
    const flushing = spent(now.time) - spent(before.time);
    const rounds = now.time.flush_rounds - before.time.flush_rounds;
    if (flushing > 0 && rounds > 0) {
      said.push(`flush: ${number(1000 * flushing / rounds, 1)} ms a batch, the database ` +
                `${number(100 * (now.time.flush.write - before.time.flush.write) / flushing)} % of it; ` +
                flusherRates(now.time.by_flusher, before.time.by_flusher, state.now - last.now) +
                ` (${now.time.flushers} flusher(s) running)`);
    }
    return "Where the time goes: " + said.join("; ") + ".";
  }

  // each flusher's own rows/s and batch time since the previous poll, those that flushed
  function flusherRates(now, before, seconds) {
    const rates = Object.entries(now || {}).map(([name, f]) => {
      const was = (before || {})[name] || {rows: 0, rounds: 0, seconds: 0};
      const rounds = f.rounds - was.rounds;
      return rounds > 0 ? `${name} ${number((f.rows - was.rows) / seconds)} rows/s, ` +
                          `${number(1000 * (f.seconds - was.seconds) / rounds, 1)} ms a batch` : null;
    }).filter((said) => said);
    return "each flusher: " + (rates.length ? rates.join(" · ") : "–");
  }

  function showLive(state) {
    const c = state.campaign, h = recent;
    liveCharts();
    text("time-parts", timeParts(state, previous));
    record(state);
    drawLive(state);
    const answered = h.answers.reduce((sum, series) => sum + (last(series) || 0), 0);
    text("t-issued-rate", number(last(issued.perSecond)));
    text("t-answer-rate", h.t.length > 1 ? number(answered) : "–");
    text("t-latency", `${number(last(h.p50), 1)} · ${number(last(h.p99), 1)}`);
    text("t-backlog", number(c.outbox.backlog));
    text("t-lag", number(c.outbox.flush_lag_seconds, 1));
    text("t-leased", number(c.leases.reduce((sum, l) => sum + l.serials, 0)));
    $("t-lag").parentNode.className = c.outbox.flush_lag_seconds > 5 ? "tile warn" : "tile";
    $("tile-events").hidden = !("events" in c);  // only with EVENTS_URL
    if (c.events !== undefined) {
      text("t-events", c.events ? `${number(c.events.pending)} · ${number(c.events.lag_seconds, 1)} s` : "–");
      $("tile-events").className = c.events && c.events.lag_seconds > 5 ? "tile warn" : "tile";
    }
    $("leases").replaceChildren(...c.leases.map((l) => {
      const tr = document.createElement("tr");
      tr.className = l.expires_in < 0 ? "expired" : "";
      for (const value of [l.worker, number(l.serials),
                           l.expires_in < 0 ? "expired: the reclaim job returns its unused serials" : duration(l.expires_in)]) {
        const td = document.createElement("td");
        td.textContent = value;
        tr.append(td);
      }
      return tr;
    }));
    if (!c.leases.length) $("leases").innerHTML = '<tr><td colspan="3" class="note">no worker holds serials of this campaign</td></tr>';
    const held = state.this_host.block_serials[String(c.id)];
    text("host-block", held === undefined ? "" : `This host's workers have ${number(held)} leased serials not yet handed out.`);
  }

  // its reconciliation changes when its close releases it: still "closed", no longer live
  function replayKey(c) { return `${c.id} ${c.status} ${c.live}`; }

  async function showReplay(c) {
    replayOf = replayKey(c);
    const response = await fetch(c.replay_url, {cache: "no-store"});
    const r = await response.json();
    if (!response.ok) {
      text("replay-caption", `The replay is not available: ${r.error.message}`);
      return;
    }
    const xs = r.issues.map((_, i) => i * r.step_seconds);
    if (replayOf !== replayKey(c)) return; // another campaign was chosen meanwhile
    const per = r.step_seconds > 1 ? `per ${r.step_seconds} s` : "per second";
    const soldOut = r.sold_out_after_seconds === null ?
      `not sold out: ${number(r.rows)} of ${number(r.total)} issued` :
      `sold out after ${duration(r.sold_out_after_seconds)}`;
    const peak = Math.max(0, ...r.issues) / r.step_seconds;
    text("replay-caption", `The sale replayed: coupons issued ${per} from opening`);
    replayClock = `${c.status.replace("_", " ")} · ${soldOut}`;
    if (!c.live) text("clock", replayClock);
    if (charts.replay) charts.replay.destroy();
    // bars, one a step, each centred on its step: [0, 1) s is the bar at 0.5 s
    charts.replay = chart("chart-replay",
      [{label: `issued ${per}`, stroke: "#2e7d32", fill: "rgba(46,125,50,0.35)", width: 1,
        paths: uPlot.paths.bars({size: [0.85, 160]}), points: {show: false}}],
      [{label: per}], {x: {time: false, range: (u, min, max) => [0, Math.max(1, xs.length) * r.step_seconds]}},
      {label: "seconds from opening", values: (u, ticks) => ticks.map((v) => (v < 60 ? `${v} s` : duration(v))),
       incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600], space: labelSpace("59 min 0 s")});
    charts.replay.setData([xs.map((x) => x + r.step_seconds / 2), r.issues]);
    key("key-replay", [["issued", "#2e7d32", `${number(r.rows)} of ${number(r.total)}`],
                       ["peak", "#2e7d32", `${number(peak)}/s`], ["", "transparent", soldOut]]);
    const rec = $("reconciliation");
    const agree = r.reconciliation.agree; // null: no close has reconciled them yet
    rec.className = `reconciliation ${agree === null ? "pending" : agree ? "ok" : "down"}`;
    rec.replaceChildren(...[(agree === null ? "… not reconciled yet" : agree ? "✓ reconciled" :
                             "✗ Redis and the database differ"), ...r.reconciliation.lines].map((line, i) => {
      const p = document.createElement(i ? "pre" : "b");
      p.textContent = line;
      return p;
    }));
  }

  async function poll() {
    const query = new URLSearchParams();
    if (selected) query.set("campaign", selected);
    if (previous) query.set("since", previous.now); // for the highest outbox readings since then
    const url = `${root.dataset.liveUrl}?${query}`;
    try {
      const response = await fetch(url, {cache: "no-store"});
      const state = await response.json();
      if (!response.ok) throw new Error(state.error ? `${state.error.code}: ${state.error.message}` : response.status);
      if (selected && state.campaign && String(state.campaign.id) !== selected) return;
      lastAnswer = Date.now();
      // none selected: the newest live campaign, which may change
      if (state.campaign && previous && previous.campaign && previous.campaign.id !== state.campaign.id) forget();
      showHealth(state.health);
      showCampaigns(state.campaigns, state.campaign && state.campaign.id);
      await showCampaign(state);
      if (selected && state.campaign && String(state.campaign.id) !== selected) return;
      previous = state;
      window.opsPage.state = state;
      window.opsPage.polls += 1;
    } catch (e) {
      text("updated", `no answer: ${e.message}`);
      $("updated").className = "stale";
    }
  }

  function tick() {
    const age = (Date.now() - lastAnswer) / 1000;
    if (lastAnswer && age < 3) {
      text("updated", "live, every second");
      $("updated").className = "";
    } else if (lastAnswer) {
      text("updated", `no answer for ${duration(age)}`);
      $("updated").className = "stale";
    }
  }

  // for tests and curious operators: window.opsPage.charts.issued.data
  // recent: the polls kept; history: history.json of the campaign shown
  window.opsPage = {charts, recent: () => recent, history: () => history, state: null, polls: 0};
  // one poll at a time: the next is scheduled when the last has answered
  (async function loop() {
    await poll();
    tick();
    setTimeout(loop, POLL_MS);
  })();
})();

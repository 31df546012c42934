// The marketer's dashboard: reads the metrics API with a read token and draws it with ECharts.
// Data from the API only ever reaches the page as textContent or as chart values (tooltips are
// rendered as rich text on the canvas), never as HTML.
(function () {
  "use strict";

  const TOKEN_KEY = "clm.dashboard.token";
  const REFRESH_MS = 45000;
  const DAY_MS = 86400000;
  const STAGES = ["discovery", "engagement", "conversion", "retention", "loyalty", "advocacy"];
  const STAGE_COLORS = {
    discovery: "#4263eb", engagement: "#1098ad", conversion: "#37b24d",
    retention: "#f08c00", loyalty: "#d6336c", advocacy: "#7048e8",
  };
  // The metrics the API documents; /v1/metrics/names, when it answers, adds descriptions and new names.
  const KNOWN_METRICS = [
    ["social_impressions", "discovery", "count"], ["page_views", "discovery", "count"],
    ["unique_visitors", "discovery", "count"], ["podcast_listeners", "discovery", "count"],
    ["social_follows", "engagement", "count"], ["social_comments", "engagement", "count"],
    ["social_shares", "engagement", "count"], ["social_likes", "engagement", "count"],
    ["podcast_downloads", "engagement", "count"], ["nps", "engagement", "score"],
    ["trial_to_paid_rate", "conversion", "ratio"], ["cart_abandonment_rate", "conversion", "ratio"],
    ["average_order_value", "conversion", "money"],
    ["churn_rate", "retention", "ratio"], ["repeat_purchase_rate", "retention", "ratio"],
    ["customer_retention_rate", "retention", "ratio"],
    ["clv_historical", "loyalty", "money"], ["csat", "loyalty", "score"],
    ["referral_rate", "advocacy", "ratio"], ["affiliate_revenue", "advocacy", "money"],
  ].map(([name, stage, kind]) => ({ name, stage, kind, description: "" }));
  const LABELS = {
    nps: "NPS", csat: "CSAT", clv_historical: "CLV (historical)",
    trial_to_paid_rate: "Trial → paid", average_order_value: "Avg. order value",
  };
  const LOWER_IS_BETTER = new Set(["churn_rate", "cart_abandonment_rate"]);

  const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
  const state = { generation: 0, range: null, metrics: null, tiles: new Map(), charts: new Map(), loading: false, timer: null };

  // ---- numbers and dates -------------------------------------------------------------------

  const intFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const moneyFmt = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const scoreFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
  const pctFmt = new Intl.NumberFormat("en-US", { style: "percent", maximumFractionDigits: 1 });
  const dayFmt = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });
  const monthFmt = new Intl.DateTimeFormat("en-GB", { month: "short", year: "numeric", timeZone: "UTC" });

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function formatValue(kind, v) {
    if (!isNum(v)) return "—";
    if (kind === "ratio") return pctFmt.format(v);
    if (kind === "money") return moneyFmt.format(v);
    if (kind === "score") return scoreFmt.format(v);
    return intFmt.format(v);
  }

  function change(metric, current, previous) {
    if (!isNum(current)) return { text: "", sign: 0 };
    if (!isNum(previous)) return { text: "—", sign: 0 };
    let delta, text;
    if (metric.kind === "ratio") {
      delta = (current - previous) * 100;
      text = `${scoreFmt.format(Math.abs(delta))} pp`;
    } else if (metric.kind === "score") {
      delta = current - previous;
      text = scoreFmt.format(Math.abs(delta));
    } else {
      if (previous === 0) return { text: current === 0 ? "±0%" : "new", sign: 0 };
      delta = (current - previous) / Math.abs(previous);
      text = pctFmt.format(Math.abs(delta));
    }
    const sign = Math.abs(delta) < 1e-9 ? 0 : Math.sign(delta);
    const arrow = sign > 0 ? "▲ " : sign < 0 ? "▼ " : "± ";
    return { text: arrow + text, sign };
  }

  const parseDay = (s) => Date.UTC(+s.slice(0, 4), +s.slice(5, 7) - 1, +s.slice(8, 10));
  const isoDay = (ms) => new Date(ms).toISOString().slice(0, 10);
  const addDays = (s, n) => isoDay(parseDay(s) + n * DAY_MS);
  const todayUtc = () => new Date().toISOString().slice(0, 10);

  function bucketLabel(start, granularity) {
    const ms = parseDay(start);
    return granularity === "month" ? monthFmt.format(ms) : dayFmt.format(ms).replace(/ \d{4}$/, "");
  }

  // ---- the range -----------------------------------------------------------------------------

  // The picker's "to" is inclusive, as a marketer reads a range; the API's windows are [from, to).
  function currentRange() {
    const form = $("range-form");
    let from = form.elements.from.value, toIncl = form.elements.to.value;
    if (!from || !toIncl) {
      toIncl = todayUtc();
      from = addDays(toIncl, -29);
    }
    if (from > toIncl) [from, toIncl] = [toIncl, from];
    const to = addDays(toIncl, 1);
    const days = Math.round((parseDay(to) - parseDay(from)) / DAY_MS);
    let granularity = form.elements.granularity.value;
    if (granularity === "auto") granularity = days <= 45 ? "day" : days <= 200 ? "week" : "month";
    const source = form.elements.source.value.trim();
    return { from, to, toIncl, days, granularity, source, prevFrom: addDays(from, -days), prevTo: from };
  }

  function setRange(from, toIncl) {
    const form = $("range-form");
    form.elements.from.value = from;
    form.elements.to.value = toIncl;
  }

  // ---- the token and the API -----------------------------------------------------------------

  class Unauthorized extends Error {}

  function askForToken(message) {
    const error = $("token-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("token-prompt").hidden = false;
    $("token-input").value = "";
    $("token-input").focus();
  }

  async function api(path, params) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new Unauthorized("no token");
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") query.set(k, v);
    const url = query.toString() ? `${path}?${query}` : path;
    const response = await fetch(url, { headers: { Authorization: `Bearer ${token}`, Accept: "application/json" } });
    if (response.status === 401) throw new Unauthorized("token refused");
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // ---- charts --------------------------------------------------------------------------------

  function chart(el) {
    let c = state.charts.get(el);
    if (!c) {
      c = echarts.init(el, null, { renderer: "canvas" });
      state.charts.set(el, c);
    }
    return c;
  }

  // Charts animate unless the reader (or a screenshot) asks for reduced motion.
  const ANIMATE = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  function draw(el, option) {
    chart(el).setOption({ animation: ANIMATE, ...option }, true);
  }

  const baseTooltip = { renderMode: "richText", confine: true };
  const emptyGraphic = (text) => ({
    type: "text", left: "center", top: "middle", style: { text, fill: "#8a93a6", fontSize: 13 },
  });

  function drawFunnel(funnel) {
    const stages = (funnel.stages || []).filter((s) => STAGES.includes(s.stage));
    const max = Math.max(0, ...stages.map((s) => (isNum(s.reached) ? s.reached : 0)));
    const shown = max > 0 ? stages : [];
    draw($("funnel-chart"), {
      tooltip: {
        ...baseTooltip, trigger: "item",
        formatter: (p) => `${p.name}\nreached: ${intFmt.format(p.value)}\nthere now: ${intFmt.format(p.data.current || 0)}`,
      },
      graphic: shown.length ? [] : [emptyGraphic("No customers yet")],
      series: [{
        type: "funnel", sort: "none", min: 0, max, minSize: "28%", gap: 3, left: "4%", right: "4%", top: 8, bottom: 8,
        label: {
          show: true, position: "inside", color: "#fff", fontWeight: 600, fontSize: 12,
          formatter: (p) => `${p.name}  ${intFmt.format(p.value)}`,
        },
        itemStyle: { borderWidth: 0 },
        data: shown.map((s) => ({
          name: s.stage, value: isNum(s.reached) ? s.reached : 0, current: s.current,
          itemStyle: { color: STAGE_COLORS[s.stage] },
        })),
      }],
    });

    const steps = $("funnel-steps");
    steps.replaceChildren();
    for (let i = 0; i + 1 < stages.length; i++) {
      const s = stages[i];
      const li = document.createElement("li");
      const names = document.createElement("span");
      names.className = "arrow";
      names.textContent = `${s.stage} → ${stages[i + 1].stage}`;
      const right = document.createElement("span");
      const rate = document.createElement("span");
      rate.className = "rate";
      rate.textContent = formatValue("ratio", s.conversion_to_next);
      const days = document.createElement("span");
      days.className = "days";
      days.textContent = isNum(s.median_days_to_next) ? ` · ${scoreFmt.format(s.median_days_to_next)} d` : "";
      right.append(rate, days);
      li.append(names, right);
      steps.append(li);
    }
    $("top20-share").textContent = formatValue("ratio", funnel.top20_revenue_share);
  }

  function drawStages(stages, range) {
    const series = stages.series || {};
    const starts = [...new Set(Object.values(series).flat().map((p) => p.start))].sort();
    draw($("stages-chart"), {
      color: STAGES.map((s) => STAGE_COLORS[s]),
      tooltip: { ...baseTooltip, trigger: "axis" },
      legend: { type: "scroll", top: 0, icon: "roundRect", itemWidth: 10, itemHeight: 10, textStyle: { color: "#55607a" } },
      grid: { left: 8, right: 24, top: 34, bottom: 4, containLabel: true },
      xAxis: {
        type: "category", boundaryGap: false, data: starts.map((s) => bucketLabel(s, range.granularity)),
        axisLine: { lineStyle: { color: "#cfd5e3" } }, axisLabel: { color: "#6b7489" },
      },
      yAxis: {
        type: "value", minInterval: 1, splitLine: { lineStyle: { color: "#eef1f6" } },
        axisLabel: { color: "#6b7489", formatter: (v) => intFmt.format(v) },
      },
      graphic: starts.length ? [] : [emptyGraphic("No data in this range")],
      series: STAGES.map((stage) => {
        const byStart = new Map((series[stage] || []).map((p) => [p.start, p.value]));
        return {
          name: stage, type: "line", stack: "customers", symbol: "none", smooth: 0.2,
          lineStyle: { width: 1.5 }, areaStyle: { opacity: 0.55 }, emphasis: { focus: "series" },
          data: starts.map((s) => (byStart.has(s) ? byStart.get(s) : null)),
        };
      }),
    });
  }

  function drawCohorts(cohorts) {
    const rows = cohorts.cohorts || [];
    const width = Math.max(0, ...rows.map((r) => (r.retention || []).length));
    const data = [];
    rows.forEach((r, y) => (r.retention || []).forEach((v, x) => { if (isNum(v)) data.push([x, y, v]); }));
    draw($("cohort-heatmap"), {
      tooltip: {
        ...baseTooltip,
        formatter: (p) => `${rows[p.value[1]].cohort}, month ${p.value[0]}\n${pctFmt.format(p.value[2])} of ${intFmt.format(rows[p.value[1]].customers)}`,
      },
      grid: { left: 8, right: 12, top: 8, bottom: 24, containLabel: true },
      xAxis: {
        type: "category", data: Array.from({ length: width }, (_, k) => `M${k}`), splitArea: { show: false },
        axisLabel: { color: "#6b7489" }, axisTick: { show: false }, axisLine: { show: false },
      },
      yAxis: {
        type: "category", inverse: true, axisTick: { show: false }, axisLine: { show: false },
        data: rows.map((r) => `${r.cohort} · ${intFmt.format(r.customers)}`), axisLabel: { color: "#55607a" },
      },
      visualMap: {
        show: false, min: 0, max: 1, dimension: 2, inRange: { color: ["#f1f4ff", "#91a7ff", "#3b5bdb", "#1c2f8a"] },
      },
      graphic: rows.length ? [] : [emptyGraphic("No cohorts in this range")],
      series: [{
        type: "heatmap", data, itemStyle: { borderColor: "#fff", borderWidth: 2, borderRadius: 4 },
        label: { show: true, fontSize: 11, formatter: (p) => pctFmt.format(p.value[2]) },
      }],
    });
  }

  function drawClv(clv) {
    const hist = clv.historical || {};
    $("clv-historical").textContent = formatValue("money", hist.mean);
    const predicted = clv.predicted || {};
    const target = $("clv-predicted");
    target.textContent = predicted.status === "fitted" ? formatValue("money", predicted.mean_12m) : "—";
    let note = target.nextElementSibling;
    if (!note) {
      note = document.createElement("span");
      note.className = "note";
      target.after(note);
    }
    note.textContent = predicted.status === "fitted"
      ? (predicted.fitted_at ? `model fitted ${predicted.fitted_at.slice(0, 10)}` : "")
      : predicted.status === "insufficient_data" ? (predicted.reason || "not enough data yet") : "model not fitted yet";

    const bins = clv.distribution || [];
    draw($("clv-chart"), {
      color: [STAGE_COLORS.loyalty],
      tooltip: { ...baseTooltip, trigger: "axis", formatter: (ps) => `${ps[0].name}\n${intFmt.format(ps[0].value)} customers` },
      grid: { left: 8, right: 8, top: 10, bottom: 4, containLabel: true },
      xAxis: {
        type: "category", axisLabel: { color: "#6b7489", fontSize: 10 },
        data: bins.map((b) => (isNum(b.upper) ? `${intFmt.format(b.lower)}–${intFmt.format(b.upper)}` : `${intFmt.format(b.lower)}+`)),
      },
      yAxis: { type: "value", minInterval: 1, splitLine: { lineStyle: { color: "#eef1f6" } }, axisLabel: { color: "#6b7489" } },
      graphic: bins.length ? [] : [emptyGraphic("No customers with revenue yet")],
      series: [{ type: "bar", barWidth: "70%", itemStyle: { borderRadius: [4, 4, 0, 0] }, data: bins.map((b) => b.customers) }],
    });

    const body = $("top-customers").tBodies[0];
    body.replaceChildren();
    for (const c of clv.top_customers || []) {
      const tr = document.createElement("tr");
      const id = document.createElement("td");
      id.className = "id";
      id.textContent = String(c.customer_id);
      const revenue = document.createElement("td");
      revenue.className = "num";
      revenue.textContent = formatValue("money", c.revenue);
      tr.append(id, revenue);
      body.append(tr);
    }
    if (!body.rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 2;
      td.className = "empty";
      td.textContent = "No customers with revenue yet";
      tr.append(td);
      body.append(tr);
    }
  }

  // ---- campaigns -----------------------------------------------------------------------------

  // Uplift is a difference of two conversion rates (treatment minus holdout): shown in signed points.
  function formatUplift(v) {
    if (!isNum(v)) return "—";
    const points = v * 100;
    const sign = points >= 0.05 ? "+" : points <= -0.05 ? "−" : "±";
    return `${sign}${scoreFmt.format(Math.abs(points))} pp`;
  }

  // The metrics service asks the campaigns service; when that one is away the panel says so and
  // the rest of the dashboard loads as usual.
  function drawCampaigns(answer) {
    const available = answer.available !== false;
    const items = available ? answer.items || [] : [];
    const message = !available ? "Campaigns service unavailable" : items.length ? "" : "No campaigns yet";
    const status = $("campaigns-status");
    status.hidden = !message;
    status.textContent = message;
    const table = $("campaigns-table");
    table.hidden = !items.length;
    const count = (v) => (isNum(v) ? v : 0);
    draw($("campaigns-chart"), {
      color: [STAGE_COLORS.engagement, STAGE_COLORS.conversion, STAGE_COLORS.advocacy],
      tooltip: {
        ...baseTooltip, trigger: "axis",
        formatter: (ps) => [ps[0].name, ...ps.map((p) => `${p.seriesName}: ${
          p.seriesName === "uplift" ? formatUplift(isNum(p.value) ? p.value / 100 : null) : intFmt.format(p.value)
        }`)].join("\n"),
      },
      legend: { show: items.length > 0, top: 0, icon: "roundRect", itemWidth: 10, itemHeight: 10, textStyle: { color: "#55607a" } },
      grid: { left: 8, right: 8, top: 34, bottom: 4, containLabel: true },
      xAxis: {
        type: "category", show: items.length > 0, data: items.map((c) => String(c.name || c.campaign_id)),
        axisLabel: { color: "#6b7489", interval: 0, overflow: "truncate", width: 110 },
        axisLine: { lineStyle: { color: "#cfd5e3" } },
      },
      yAxis: [
        { type: "value", minInterval: 1, splitLine: { lineStyle: { color: "#eef1f6" } },
          axisLabel: { color: "#6b7489", formatter: (v) => intFmt.format(v) } },
        { type: "value", splitLine: { show: false }, axisLabel: { color: "#6b7489", formatter: (v) => `${scoreFmt.format(v)} pp` } },
      ],
      graphic: items.length ? [] : [emptyGraphic(message)],
      series: [
        { name: "sent", type: "bar", barMaxWidth: 28, itemStyle: { borderRadius: [4, 4, 0, 0] }, data: items.map((c) => count(c.sent)) },
        { name: "converted", type: "bar", barMaxWidth: 28, itemStyle: { borderRadius: [4, 4, 0, 0] }, data: items.map((c) => count(c.converted)) },
        { name: "uplift", type: "scatter", yAxisIndex: 1, symbolSize: 11,
          data: items.map((c) => (isNum(c.uplift) ? c.uplift * 100 : null)) },
      ],
    });

    const body = table.tBodies[0];
    body.replaceChildren();
    for (const c of items) {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.className = "id";
      name.textContent = String(c.name || c.campaign_id);
      name.title = String(c.campaign_id);
      const cells = [formatValue("count", c.sent), formatValue("count", c.converted), formatUplift(c.uplift)].map((text) => {
        const td = document.createElement("td");
        td.className = "num";
        td.textContent = text;
        return td;
      });
      if (isNum(c.uplift) && Math.abs(c.uplift) >= 0.0005) cells[2].style.color = c.uplift > 0 ? "var(--good)" : "var(--bad)";
      tr.append(name, ...cells);
      body.append(tr);
    }
  }

  // ---- metric tiles --------------------------------------------------------------------------

  function buildTiles(metrics) {
    const root = $("tiles");
    root.replaceChildren();
    state.tiles.clear();
    for (const stage of STAGES) {
      const ofStage = metrics.filter((m) => m.stage === stage);
      if (!ofStage.length) continue;
      const group = document.createElement("div");
      group.className = `stage-group stage-${stage}`;
      const name = document.createElement("div");
      name.className = "stage-name";
      name.textContent = stage;
      const tiles = document.createElement("div");
      tiles.className = "stage-tiles";
      for (const m of ofStage) {
        const tile = document.createElement("div");
        tile.className = "tile";
        tile.dataset.testid = `tile-${m.name}`;
        const label = document.createElement("div");
        label.className = "name";
        label.textContent = LABELS[m.name] || m.name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
        label.title = m.description || m.name;
        const line = document.createElement("div");
        line.className = "line";
        const value = document.createElement("span");
        value.className = "value";
        value.dataset.testid = "tile-value";
        value.textContent = "…";
        const delta = document.createElement("span");
        delta.className = "change";
        delta.dataset.testid = "tile-change";
        line.append(value, delta);
        const spark = document.createElement("div");
        spark.className = "spark";
        tile.append(label, line, spark);
        tiles.append(tile);
        state.tiles.set(m.name, { metric: m, value, delta, spark, tile });
      }
      group.append(name, tiles);
      root.append(group);
    }
  }

  function drawTiles(current, previous, range) {
    for (const [name, t] of state.tiles) {
      const now = (current.metrics || {})[name];
      const before = (previous.metrics || {})[name];
      const kind = (now && now.kind) || t.metric.kind;
      t.value.textContent = now ? formatValue(kind, now.total) : "—";
      const c = change({ ...t.metric, kind }, now && now.total, before && before.total);
      t.delta.textContent = c.text;
      t.delta.title = before ? `previous period: ${formatValue(kind, before.total)}` : "";
      const good = LOWER_IS_BETTER.has(name) ? -c.sign : c.sign;
      t.delta.className = `change${good > 0 ? " good" : good < 0 ? " bad" : ""}`;
      const points = (now && now.series) || [];
      const color = STAGE_COLORS[t.metric.stage];
      draw(t.spark, {
        animation: false,
        grid: { left: 0, right: 0, top: 4, bottom: 2 },
        tooltip: {
          ...baseTooltip, trigger: "axis", axisPointer: { type: "none" },
          formatter: (ps) => `${bucketLabel(points[ps[0].dataIndex].start, range.granularity)}: ${formatValue(kind, ps[0].value)}`,
        },
        xAxis: { type: "category", show: false, boundaryGap: false, data: points.map((p) => p.start) },
        yAxis: { type: "value", show: false, scale: true },
        series: [{
          type: "line", symbol: "none", smooth: 0.3, connectNulls: false, data: points.map((p) => p.value),
          lineStyle: { width: 1.6, color }, areaStyle: { color, opacity: 0.12 },
        }],
      });
    }
  }

  // ---- loading -------------------------------------------------------------------------------

  async function metricList() {
    if (state.metrics) return state.metrics;
    try {
      const listed = (await api("/v1/metrics/names")).metrics || [];
      const known = new Map(KNOWN_METRICS.map((m) => [m.name, m]));
      state.metrics = listed.length ? listed.filter((m) => STAGES.includes(m.stage)) : KNOWN_METRICS;
      for (const m of state.metrics) if (!m.kind && known.has(m.name)) m.kind = known.get(m.name).kind;
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      state.metrics = KNOWN_METRICS;
    }
    buildTiles(state.metrics);
    return state.metrics;
  }

  function describeRange(range) {
    const days = `${dayFmt.format(parseDay(range.from))} – ${dayFmt.format(parseDay(range.toIncl))}`;
    const prev = `${dayFmt.format(parseDay(range.prevFrom))} – ${dayFmt.format(parseDay(addDays(range.prevTo, -1)))}`;
    return `${days} · by ${range.granularity} · compared with ${prev}`;
  }

  // A load the reader asks for (apply, refresh, sign-in) always starts and makes any load still
  // running stale, so its answers are dropped; the timer's refresh waits for the next tick instead.
  async function load(fromTimer) {
    if ((fromTimer && state.loading) || !$("token-prompt").hidden) return;
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      askForToken("");
      return;
    }
    const generation = ++state.generation;
    const current = () => generation === state.generation;
    state.loading = true;
    const status = $("status");
    status.className = "status";
    status.textContent = "Loading…";
    // The last applied range: a refresh does not pick up dates typed but not applied yet.
    const range = state.range || (state.range = currentRange());
    $("range-label").textContent = describeRange(range);
    try {
      const metrics = await metricList();
      const names = metrics.map((m) => m.name).join(",");
      const metricsQuery = (from, to) => ({ names, from, to, granularity: range.granularity, source: range.source });
      const nowMs = Date.now();
      const at = parseDay(range.to) < nowMs ? `${range.to}T00:00:00Z` : undefined;
      const parts = {
        tiles: Promise.all([
          api("/v1/metrics", metricsQuery(range.from, range.to)),
          api("/v1/metrics", metricsQuery(range.prevFrom, range.prevTo)),
        ]),
        funnel: api("/v1/funnel", { at }),
        stages: api("/v1/stages", { from: range.from, to: range.to, granularity: range.granularity }),
        cohorts: api("/v1/cohorts", { from: range.from, to: range.to }),
        clv: api("/v1/clv"),
        campaigns: api("/v1/dashboard/campaigns"),
      };
      const results = await Promise.allSettled(Object.values(parts));
      if (!current()) return;
      const keys = Object.keys(parts);
      if (results.some((r) => r.status === "rejected" && r.reason instanceof Unauthorized)) {
        throw new Unauthorized("token refused");
      }
      const failed = [];
      results.forEach((r, i) => {
        if (r.status === "rejected") {
          failed.push(keys[i]);
          return;
        }
        try {
          if (keys[i] === "tiles") {
            const [current, previous] = r.value;
            drawTiles(current, previous, range);
            const source = $("source-label");
            source.hidden = !current.source;
            source.textContent = current.source ? `source: ${current.source}` : "";
          } else if (keys[i] === "funnel") drawFunnel(r.value);
          else if (keys[i] === "stages") drawStages(r.value, range);
          else if (keys[i] === "cohorts") drawCohorts(r.value);
          else if (keys[i] === "clv") drawClv(r.value);
          else if (keys[i] === "campaigns") drawCampaigns(r.value);
        } catch (error) {
          console.error(error);
          failed.push(keys[i]);
        }
      });
      const time = new Date().toLocaleTimeString("en-GB");
      if (failed.length) {
        status.className = "status error";
        status.textContent = `Updated ${time}; could not load ${failed.join(", ")}`;
      } else {
        status.textContent = `Updated ${time} · refreshes every ${REFRESH_MS / 1000} s`;
      }
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
    } catch (error) {
      if (!current()) return;
      if (error instanceof Unauthorized) {
        sessionStorage.removeItem(TOKEN_KEY);
        status.textContent = "";
        askForToken(error.message === "token refused" ? "That token was refused. Enter a valid read token." : "");
      } else {
        status.className = "status error";
        status.textContent = `Could not load: ${error.message}`;
      }
    } finally {
      if (current()) state.loading = false;
    }
  }

  // ---- wiring --------------------------------------------------------------------------------

  function start() {
    const today = todayUtc();
    setRange(addDays(today, -29), today);

    const apply = () => {
      state.range = currentRange();
      load();
    };
    $("range-form").addEventListener("submit", (event) => {
      event.preventDefault();
      apply();
    });
    for (const button of document.querySelectorAll(".presets button")) {
      button.addEventListener("click", () => {
        const end = todayUtc();
        setRange(addDays(end, 1 - Number(button.dataset.days)), end);
        apply();
      });
    }
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-prompt").hidden = true;
      load();
    });
    $("refresh").addEventListener("click", () => load());
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      askForToken("");
    });
    window.addEventListener("resize", () => state.charts.forEach((c) => c.resize()));
    state.timer = setInterval(() => load(true), REFRESH_MS);
    load();
  }

  document.addEventListener("DOMContentLoaded", start);
})();

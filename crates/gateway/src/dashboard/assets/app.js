// sdoh-gateway equity dashboard: asks /dashboard/api for figures (computed and suppressed by the gateway) and
// draws them as SVG. The bearer token lives in sessionStorage for this tab only. A link may carry settings in its
// fragment (#measure=...&stratifier=race&period=quarter&from=2026-01-01&to=2026-06-30&chart=p-chart&token=...);
// the token is moved to sessionStorage and taken off the address at once.
"use strict";

(function () {
  const TOKEN_KEY = "sdoh-gateway-token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let lastQuery = null;

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function showTokenState() {
    $("token-state").textContent = token() ? "token set for this tab" : "no token";
  }

  function setStatus(text, isError) {
    const status = $("status");
    status.textContent = text;
    status.className = isError ? "error" : "muted";
  }

  function fragmentSettings() {
    const settings = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (settings.has("token")) {
      sessionStorage.setItem(TOKEN_KEY, settings.get("token"));
      settings.delete("token");
      history.replaceState(null, "", location.pathname + location.search + (settings.toString() ? "#" + settings : ""));
    }
    return settings;
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    const response = await fetch(path, { headers: headers });
    if (!response.ok) {
      let why = response.status + " " + response.statusText;
      try {
        const outcome = await response.json();
        if (outcome.issue && outcome.issue[0] && outcome.issue[0].diagnostics) why = outcome.issue[0].diagnostics;
      } catch (ignored) {
        // Not an OperationOutcome: keep the status line.
      }
      const error = new Error(why);
      error.status = response.status;
      throw error;
    }
    return response;
  }

  function option(select, value, text) {
    const element = document.createElement("option");
    element.value = value;
    element.textContent = text;
    select.appendChild(element);
  }

  function isoDate(date) {
    return date.toISOString().slice(0, 10);
  }

  let measures = [];

  async function loadOptions(settings) {
    const options = await (await api("/dashboard/api/options")).json();
    measures = options.measures;
    $("measure").replaceChildren();
    measures.forEach((m) => option($("measure"), m.id, m.title));
    $("registry").replaceChildren();
    option($("registry"), "", "all patients");
    options.registries.forEach((r) => option($("registry"), r.id, r.title));
    $("stratifier").replaceChildren();
    option($("stratifier"), "none", "none (overall)");
    options.stratifiers.forEach((s) => option($("stratifier"), s, s));
    const today = new Date();
    const yearAgo = new Date(Date.UTC(today.getUTCFullYear() - 1, today.getUTCMonth() + 1, 1));
    $("from").value = yearAgo.toISOString().slice(0, 10);
    $("to").value = isoDate(today);
    const fields = { measure: "measure", registry: "registry", stratifier: "stratifier", period: "period", from: "from", to: "to", chart: "chart-kind" };
    Object.keys(fields).forEach((key) => {
      if (settings.has(key)) $(fields[key]).value = settings.get(key);
    });
  }

  function queryString() {
    const params = new URLSearchParams();
    params.set("measure", $("measure").value);
    params.set("period", $("period").value);
    params.set("from", $("from").value);
    params.set("to", $("to").value);
    params.set("stratifier", $("stratifier").value);
    if ($("registry").value) params.set("registry", $("registry").value);
    return params.toString();
  }

  async function show() {
    const query = queryString();
    lastQuery = query;
    setStatus("Computing…", false);
    const measure = measures.find((m) => m.id === $("measure").value);
    $("description").textContent = measure ? measure.description : "";
    try {
      const data = await (await api("/dashboard/api/series?" + query)).json();
      if (query !== lastQuery) return;
      render(data);
      const suppressed = data.series.reduce((n, s) => n + s.points.filter((p) => p.suppressed).length, 0);
      setStatus(data.measure.title + ": " + data.series.length + " groups over " + data.periods.length +
        " periods, " + suppressed + " cells suppressed.", false);
    } catch (error) {
      setStatus(error.status === 401 ? "A valid API token is needed (" + error.message + ")" : error.message, true);
    }
  }

  function svg(name, attributes, parent) {
    const element = document.createElementNS(SVG_NS, name);
    Object.keys(attributes).forEach((key) => element.setAttribute(key, attributes[key]));
    if (parent) parent.appendChild(element);
    return element;
  }

  function formatValue(scoring, value) {
    if (value === null || value === undefined) return "";
    return scoring === "proportion" ? (value * 100).toFixed(1) + "%" : value.toFixed(1) + " d";
  }

  function chart(data, series, index) {
    const kind = $("chart-kind").value === "run-chart" || data.measure.scoring !== "proportion" ? "run-chart" : "p-chart";
    const width = 480, height = 220, left = 46, right = 30, top = 12, bottom = 36;
    const plotWidth = width - left - right, plotHeight = height - top - bottom;
    const n = data.periods.length;
    const x = (i) => left + (n === 1 ? plotWidth / 2 : (i * plotWidth) / (n - 1));
    const step = n === 1 ? plotWidth / 2 : plotWidth / (n - 1);
    let max = 1;
    if (data.measure.scoring !== "proportion") {
      max = Math.max(1, ...series.points.map((p) => (p.value === null || p.value === undefined ? 0 : p.value))) * 1.15;
    }
    const y = (v) => top + plotHeight - (v / max) * plotHeight;

    const figure = document.createElement("figure");
    figure.className = "chart";
    figure.dataset.group = series.group;
    figure.dataset.kind = kind;
    const caption = document.createElement("figcaption");
    caption.textContent = series.group + " — " + (kind === "p-chart" ? "p-chart" : "run chart");
    figure.appendChild(caption);
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": series.group + " " + kind });
    const hatch = "hatch-" + index;
    const pattern = svg("pattern", { id: hatch, width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
      svg("defs", {}, root));
    svg("rect", { width: 6, height: 6, fill: "#eef0f3" }, pattern);
    svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#9aa5b1", "stroke-width": 2 }, pattern);

    svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: top + plotHeight }, root);
    svg("line", { class: "axis", x1: left, y1: top + plotHeight, x2: left + plotWidth, y2: top + plotHeight }, root);
    [0, 0.5, 1].forEach((f) => {
      const label = svg("text", { class: "tick", x: left - 4, y: y(f * max) + 3, "text-anchor": "end" }, root);
      label.textContent = formatValue(data.measure.scoring, f * max);
    });
    const every = Math.max(1, Math.ceil(n / 8));
    data.periods.forEach((period, i) => {
      if (i % every !== 0) return;
      const label = svg("text", { class: "tick", x: x(i), y: top + plotHeight + 14, "text-anchor": "middle" }, root);
      label.textContent = period;
    });

    const centre = kind === "p-chart" ? series.p_chart && series.p_chart.centre : series.run_chart.median;
    if (centre !== null && centre !== undefined) {
      svg("line", { class: "centre", x1: left, y1: y(centre), x2: left + plotWidth, y2: y(centre) }, root);
    }
    if (kind === "p-chart" && series.p_chart) {
      ["upper", "lower"].forEach((side) => {
        let d = "";
        series.p_chart.limits.forEach((limit, i) => {
          if (limit[side] === null) return;
          d += "M" + (x(i) - step / 2) + " " + y(limit[side]) + "H" + (x(i) + step / 2);
        });
        if (d) svg("path", { class: "limit " + side, d: d }, root);
      });
    } else {
      series.run_chart.signals.forEach((signal) => {
        const points = [];
        for (let i = signal.first; i <= signal.last; i++) {
          const p = series.points[i];
          if (p && p.value !== null && p.value !== undefined) points.push(x(i) + "," + y(p.value));
        }
        const line = svg("polyline", { class: "signal " + signal.kind, points: points.join(" ") }, root);
        svg("title", {}, line).textContent = signal.kind + " " + signal.direction;
      });
    }

    let segment = [];
    const flush = () => {
      if (segment.length > 1) svg("polyline", { class: "series", points: segment.join(" ") }, root);
      segment = [];
    };
    series.points.forEach((p, i) => {
      if (p.suppressed) {
        flush();
        const marker = svg("rect", { class: "suppressed-marker", x: x(i) - 6, y: top, width: 12, height: plotHeight, fill: "url(#" + hatch + ")" }, root);
        svg("title", {}, marker).textContent = p.period + ": suppressed (" + p.suppressed + ")";
        const label = svg("text", { class: "suppressed-label", x: x(i) + 3, y: top + plotHeight - 4, transform: "rotate(-90 " + (x(i) + 3) + " " + (top + plotHeight - 4) + ")" }, root);
        label.textContent = "suppressed";
        return;
      }
      if (p.value === null || p.value === undefined) {
        flush();
        return;
      }
      segment.push(x(i) + "," + y(p.value));
    });
    flush();
    series.points.forEach((p, i) => {
      if (p.suppressed || p.value === null || p.value === undefined) return;
      const outside = kind === "p-chart" && series.p_chart && series.p_chart.limits[i].outside;
      const circle = svg("circle", { class: "point" + (outside ? " special" : ""), cx: x(i), cy: y(p.value), r: 3.5 }, root);
      svg("title", {}, circle).textContent = p.period + ": " + formatValue(data.measure.scoring, p.value) + " (" + p.numerator + "/" + p.denominator + ")";
    });
    figure.appendChild(root);
    return figure;
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
  }

  function render(data) {
    $("charts").replaceChildren(...data.series.map((s, i) => chart(data, s, i)));
    const body = $("table").tBodies[0];
    body.replaceChildren();
    data.series.forEach((series) => {
      series.points.forEach((p) => {
        const row = document.createElement("tr");
        row.dataset.group = series.group;
        row.dataset.period = p.period;
        if (p.suppressed) {
          row.className = "suppressed";
          cell(row, series.group);
          cell(row, p.period);
          ["", "", "", "", ""].forEach((t) => cell(row, t));
          cell(row, "suppressed (" + p.suppressed + ")", "status");
        } else {
          cell(row, series.group);
          cell(row, p.period);
          cell(row, String(p.numerator));
          cell(row, String(p.denominator));
          cell(row, formatValue(data.measure.scoring, p.value));
          cell(row, p.ci_low === null ? "" : formatValue("proportion", p.ci_low) + " – " + formatValue("proportion", p.ci_high));
          cell(row, p.rate_ratio === null ? "" : p.rate_ratio.toFixed(2));
          cell(row, "shown", "status");
        }
        body.appendChild(row);
      });
    });
  }

  async function downloadCsv() {
    try {
      const response = await api("/measures.csv?" + queryString());
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = $("measure").value + ".csv";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  async function load(settings) {
    try {
      await loadOptions(settings);
      await show();
    } catch (error) {
      setStatus(error.status === 401 ? "Enter a valid API token to see the measures." : error.message, true);
    }
  }

  function start() {
    const settings = fragmentSettings();
    showTokenState();
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      showTokenState();
      load(new URLSearchParams());
    });
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showTokenState();
    });
    $("controls").addEventListener("submit", (event) => {
      event.preventDefault();
      show();
    });
    $("chart-kind").addEventListener("change", show);
    $("csv").addEventListener("click", downloadCsv);
    load(settings);
  }

  start();
})();

/* Shared by both dashboards: sign-in, API calls, the period switch, tables and charts.
 *
 * The access JWT lives in sessionStorage (this tab only, gone when it closes), never in a URL or a cookie.
 * Every value from the API is put on the page with textContent, never as HTML.
 */
(function () {
  "use strict";

  const TOKEN_KEY = "zenzefi.dashboard.access_token";
  const PERIOD_KEY = "zenzefi.dashboard.period";
  const PERIODS = ["day", "week", "month"];
  const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, { method = "GET", body, anonymous = false } = {}) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token && !anonymous) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(document.body.dataset.api + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.message) || response.statusText || "Request failed");
    }
    return data;
  }

  function show(element, visible) {
    element.hidden = !visible;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    show(box, Boolean(message));
  }

  function text(value) {
    return value === null || value === undefined ? "—" : String(value);
  }

  /* A UTC timestamp from the API, shown as "2026-01-05 10:00 UTC". */
  function utc(value) {
    if (!value) return "—";
    const moment = new Date(value);
    if (Number.isNaN(moment.getTime())) return String(value);
    return moment.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function humanBytes(count) {
    const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let value = Number(count);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? value + " bytes" : value.toFixed(1) + " " + units[unit];
  }

  /* Fill <table> with a header row and one row per item; cells carry data-key for each column. */
  function renderTable(table, columns, rows, emptyText) {
    table.replaceChildren();
    const head = table.createTHead().insertRow();
    for (const column of columns) {
      const cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = column.label;
      if (column.numeric) cell.className = "number";
      head.appendChild(cell);
    }
    const tbody = table.createTBody();
    if (!rows.length) {
      const cell = tbody.insertRow().insertCell();
      cell.colSpan = columns.length;
      cell.className = "empty";
      cell.textContent = emptyText || "Nothing yet.";
      return;
    }
    for (const row of rows) {
      const tr = tbody.insertRow();
      for (const column of columns) {
        const cell = tr.insertCell();
        cell.dataset.key = column.key;
        cell.textContent = column.format ? column.format(row[column.key], row) : text(row[column.key]);
        if (column.numeric) cell.className = "number";
      }
    }
  }

  /* Fill the summary cards: <dd data-field="name"> gets the figure's exact value. */
  function renderSummary(figures, extras = {}) {
    for (const cell of document.querySelectorAll("#summary [data-field]")) {
      const value = figures[cell.dataset.field];
      cell.replaceChildren();
      const exact = document.createElement("span");
      exact.className = "value";
      exact.textContent = text(value);
      cell.appendChild(exact);
      const extra = extras[cell.dataset.field];
      if (extra) {
        const note = document.createElement("span");
        note.className = "note";
        note.textContent = extra(value);
        cell.appendChild(note);
      }
    }
  }

  const charts = new Map();

  /* Draw (or redraw) a chart of the daily series; `series` is [{label, key, type?, axis?}]. */
  function drawChart(canvasId, daily, series) {
    const labels = daily.map((day) => day.date);
    const datasets = series.map((one, index) => ({
      label: one.label,
      type: one.type || "bar",
      data: daily.map((day) => Number(day[one.key])),
      yAxisID: one.axis || "y",
      backgroundColor: COLOURS[index % COLOURS.length],
      borderColor: COLOURS[index % COLOURS.length],
      borderWidth: one.type === "line" ? 2 : 0,
      pointRadius: 3,
    }));
    const existing = charts.get(canvasId);
    if (existing) {
      existing.data.labels = labels;
      existing.data.datasets = datasets;
      existing.update();
      return existing;
    }
    const scales = { x: { ticks: { autoSkip: true, maxRotation: 0 } }, y: { beginAtZero: true, position: "left" } };
    if (series.some((one) => one.axis === "y2")) {
      scales.y2 = { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } };
    }
    const chart = new window.Chart($(canvasId), {
      data: { labels, datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales,
      },
    });
    charts.set(canvasId, chart);
    return chart;
  }

  function currentPeriod() {
    const stored = sessionStorage.getItem(PERIOD_KEY);
    return PERIODS.includes(stored) ? stored : "month";
  }

  /* The period buttons: pressed state, and `onChange(period)` when another one is chosen. */
  function wirePeriodSwitch(onChange) {
    const buttons = document.querySelectorAll("#period-switch [data-period]");
    const mark = (period) => {
      for (const button of buttons) button.setAttribute("aria-pressed", String(button.dataset.period === period));
    };
    mark(currentPeriod());
    for (const button of buttons) {
      button.addEventListener("click", () => {
        sessionStorage.setItem(PERIOD_KEY, button.dataset.period);
        mark(button.dataset.period);
        onChange(button.dataset.period);
      });
    }
  }

  function describeWindow(figures) {
    const days = figures.daily.length;
    $("window").textContent =
      `${days === 1 ? "Today" : "The last " + days + " days"}: ${figures.daily[0].date} to ` +
      `${figures.daily[days - 1].date} (UTC).`;
  }

  /* Mark the figures section busy or ready for `period` (screen readers and tests wait on this). */
  function setState(state, period) {
    const section = $("dashboard");
    section.dataset.state = state;
    section.dataset.period = period;
    section.setAttribute("aria-busy", String(state === "loading"));
  }

  function signOut(message) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    sessionStorage.removeItem(TOKEN_KEY);
    if (token) {
      fetch(document.body.dataset.api + "/auth/logout", {
        method: "POST",
        headers: { Authorization: "Bearer " + token },
        credentials: "omit",
      }).catch(() => {});
    }
    for (const id of ["dashboard", "account", "refusal"]) {
      if ($(id)) show($(id), false);
    }
    $("sign-in-message").textContent = message || "";
    show($("sign-in-panel"), true);
    $("email").focus();
  }

  /* Run the page: `page.load(me, period)` fills it once someone is signed in. */
  function start(page) {
    async function enter() {
      showError("");
      let me;
      try {
        me = await api("/users/me");
      } catch (error) {
        if (error.status === 401) return signOut("Your session has ended. Please sign in again.");
        return showError("Could not load your account: " + error.message);
      }
      show($("sign-in-panel"), false);
      $("whoami").textContent = me.full_name ? `${me.username} (${me.full_name})` : me.username;
      show($("account"), true);
      await page.load(me, currentPeriod());
    }

    async function reload(period) {
      try {
        showError("");
        await page.refresh(period);
      } catch (error) {
        handle(error);
      }
    }

    function handle(error) {
      if (error instanceof ApiError && error.status === 401) {
        signOut("Your session has ended. Please sign in again.");
      } else {
        showError(error.message || "Something went wrong.");
      }
    }

    $("sign-in").addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = event.submitter || $("sign-in").querySelector("button");
      button.disabled = true;
      $("sign-in-message").textContent = "Signing in…";
      try {
        const answer = await api("/auth/login", {
          method: "POST",
          anonymous: true,
          body: { email: $("email").value, password: $("password").value },
        });
        sessionStorage.setItem(TOKEN_KEY, answer.access_token);
        $("password").value = "";
        $("sign-in-message").textContent = "";
        await enter().catch(handle);
      } catch (error) {
        $("sign-in-message").textContent =
          error.status === 401 ? "Wrong e-mail or password." : "Could not sign in: " + error.message;
      } finally {
        button.disabled = false;
      }
    });
    $("sign-out").addEventListener("click", () => signOut("You are signed out."));
    wirePeriodSwitch(reload);

    if (sessionStorage.getItem(TOKEN_KEY)) {
      enter().catch(handle);
    } else {
      signOut("");
    }
  }

  window.ZenzefiDashboard = {
    $, api, ApiError, show, text, utc, humanBytes, renderTable, renderSummary, drawChart, describeWindow,
    setState, start,
  };
})();

/* /dashboard: the signed-in user's usage, spend, tokens and recent transactions. */
(function () {
  "use strict";
  const D = window.ZenzefiDashboard;

  const money = (value) => D.text(value);

  async function refresh(period) {
    D.setState("loading", period);
    const [usage, tokens, transactions] = await Promise.all([
      D.api("/analytics/usage?period=" + encodeURIComponent(period)),
      D.api("/tokens/my-tokens?active_only=false&limit=20"),
      D.api("/currency/transactions?limit=10"),
    ]);
    D.describeWindow(usage);
    D.renderSummary(usage, { total_bytes_transferred: (value) => D.humanBytes(value) });

    D.drawChart("chart-requests", usage.daily, [
      { label: "Requests", key: "requests" },
      { label: "Sessions started", key: "sessions", type: "line", axis: "y2" },
    ]);
    D.renderTable(D.$("table-requests"), [
      { key: "date", label: "Date (UTC)" },
      { key: "requests", label: "Requests", numeric: true },
      { key: "sessions", label: "Sessions started", numeric: true },
    ], usage.daily);

    D.drawChart("chart-bytes", usage.daily, [
      { label: "Bytes in (requests)", key: "bytes_in" },
      { label: "Bytes out (responses)", key: "bytes_out" },
    ]);
    D.renderTable(D.$("table-bytes"), [
      { key: "date", label: "Date (UTC)" },
      { key: "bytes_in", label: "Bytes in", numeric: true },
      { key: "bytes_out", label: "Bytes out", numeric: true },
      { key: "bytes", label: "Total bytes", numeric: true },
    ], usage.daily);

    D.drawChart("chart-spend", usage.daily, [{ label: "Net spend (ZNC)", key: "spend_znc" }]);
    D.renderTable(D.$("table-spend"), [
      { key: "date", label: "Date (UTC)" },
      { key: "spend_znc", label: "Net spend (ZNC)", numeric: true, format: money },
    ], usage.daily);

    D.renderTable(D.$("table-tokens"), [
      { key: "token_hint", label: "Token" },
      { key: "status", label: "Status" },
      { key: "scope", label: "Scope" },
      { key: "duration_hours", label: "Hours", numeric: true },
      { key: "paid_znc", label: "Paid (ZNC)", numeric: true, format: money },
      { key: "activated_at", label: "Activated", format: D.utc },
      { key: "expires_at", label: "Expires", format: (value) => (value ? D.utc(value) : "not activated yet") },
    ], tokens.items, "You have no tokens yet.");

    D.renderTable(D.$("table-transactions"), [
      { key: "created_at", label: "When", format: D.utc },
      { key: "transaction_type", label: "Type" },
      { key: "amount", label: "Amount (ZNC)", numeric: true, format: money },
      { key: "balance_after", label: "Balance after", numeric: true, format: money },
      { key: "description", label: "Description" },
    ], transactions.items, "No transactions yet.");

    D.show(D.$("dashboard"), true);
    D.setState("ready", period);
  }

  D.start({ load: (_me, period) => refresh(period), refresh });
})();

/* /admin/dashboard: everyone's figures, for superusers; anyone else gets a clear refusal and no data. */
(function () {
  "use strict";
  const D = window.ZenzefiDashboard;

  function refuse(me) {
    D.show(D.$("dashboard"), false);
    D.$("refused-user").textContent = me ? me.username : "this account";
    D.show(D.$("refusal"), true);
  }

  let signedIn = null;

  async function refresh(period) {
    D.setState("loading", period);
    let figures;
    try {
      figures = await D.api("/analytics/admin/global?period=" + encodeURIComponent(period));
    } catch (error) {
      if (error.status === 403) return refuse(signedIn);
      throw error;
    }
    D.describeWindow(figures);
    D.renderSummary(figures);

    D.drawChart("chart-money", figures.daily, [
      { label: "Revenue", key: "revenue_znc" },
      { label: "Refunds", key: "refunds_znc" },
      { label: "Deposits", key: "deposits_znc" },
    ]);
    D.renderTable(D.$("table-money"), [
      { key: "date", label: "Date (UTC)" },
      { key: "revenue_znc", label: "Revenue", numeric: true },
      { key: "refunds_znc", label: "Refunds", numeric: true },
      { key: "deposits_znc", label: "Deposits", numeric: true },
      { key: "referral_bonuses_znc", label: "Referral bonuses", numeric: true },
      { key: "token_purchases", label: "Tokens sold", numeric: true },
      { key: "bundle_purchases", label: "Bundles sold", numeric: true },
    ], figures.daily);

    D.drawChart("chart-users", figures.daily, [
      { label: "Daily active users", key: "dau" },
      { label: "New users", key: "new_users", type: "line" },
    ]);
    D.renderTable(D.$("table-users"), [
      { key: "date", label: "Date (UTC)" },
      { key: "dau", label: "Daily active users", numeric: true },
      { key: "new_users", label: "New users", numeric: true },
    ], figures.daily);

    D.drawChart("chart-traffic", figures.daily, [
      { label: "Requests", key: "requests" },
      { label: "Bytes", key: "bytes", type: "line", axis: "y2" },
    ]);
    D.renderTable(D.$("table-traffic"), [
      { key: "date", label: "Date (UTC)" },
      { key: "requests", label: "Requests", numeric: true },
      { key: "bytes", label: "Bytes", numeric: true },
    ], figures.daily);

    D.show(D.$("refusal"), false);
    D.show(D.$("dashboard"), true);
    D.setState("ready", period);
  }

  async function load(me, period) {
    signedIn = me;
    if (!me.is_superuser) return refuse(me);
    return refresh(period);
  }

  D.start({ load, refresh: (period) => (signedIn && signedIn.is_superuser ? refresh(period) : refuse(signedIn)) });
})();

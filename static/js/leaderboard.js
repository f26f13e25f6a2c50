// Live leaderboard: the server sends the ranked rows on connect and after each new best.
(function () {
  "use strict";
  const table = document.getElementById("leaderboard");
  if (!table) return;
  const unit = table.dataset.metricUnit;
  const status = document.getElementById("leaderboard-live");
  let delay = 500;

  function render(rows) {
    const body = table.querySelector("tbody");
    body.replaceChildren();
    if (!rows.length) {
      const tr = body.insertRow();
      tr.className = "empty";
      const td = tr.insertCell();
      td.colSpan = 5;
      td.textContent = "No results yet.";
      return;
    }
    for (const r of rows) {
      const tr = body.insertRow();
      const metric = r.metric !== null ? `${r.metric.toFixed(4)} ${unit}` : (r.unranked ? `unranked: ${r.unranked}` : "–");
      for (const v of [r.rank, r.student, String(Math.round(r.score * 100) / 100), metric, r.achieved_at.slice(0, 19)]) {
        tr.insertCell().textContent = v;
      }
    }
    status.textContent = "Updated " + new Date().toLocaleTimeString();
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/assignments/${table.dataset.assignmentId}/leaderboard/`);
    socket.onopen = () => { delay = 500; };
    socket.onmessage = (m) => { const msg = JSON.parse(m.data); if (msg.kind === "leaderboard") render(msg.rows); };
    socket.onclose = (c) => {
      if (c.code === 4403) return;
      status.textContent = "Live updates lost; reconnecting...";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
})();

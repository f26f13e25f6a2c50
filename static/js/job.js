// Live view of one grading job: replays the archive, then follows the websocket from the
// last seen seq, so a reconnect resumes with no gap and no duplicate.
(function () {
  "use strict";
  const box = document.getElementById("job");
  if (!box) return;
  const jobId = box.dataset.jobId;
  const statusUrl = box.dataset.statusUrl;
  const FINAL = new Set(["succeeded", "failed", "error", "timed_out", "cancelled"]);
  const LABELS = {queued: "Queued", dispatched: "Dispatched", running: "Running", succeeded: "Succeeded",
                  failed: "Failed", error: "Error", timed_out: "Timed out", cancelled: "Cancelled"};
  const MAX_LOG_CHARS = 200000;
  const el = (id) => document.getElementById(id);
  let lastSeq = 0;
  let state = box.dataset.state;
  let resultSeen = false;
  let retryDelay = 500;
  let socket = null;

  function setState(next) {
    state = next;
    box.dataset.state = next;
    const label = el("job-state");
    label.textContent = LABELS[next] || next;
    label.className = "state state-" + next;
    el("job-queued-note").hidden = next !== "queued";
    if (next !== "queued" && next !== "dispatched") el("job-queue").textContent = "";
  }

  function appendLog(text) {
    const log = el("log");
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent += text;
    if (log.textContent.length > MAX_LOG_CHARS) {
      log.textContent = "[earlier output trimmed]\n" + log.textContent.slice(-MAX_LOG_CHARS);
    }
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function upsertTest(t) {
    const body = document.querySelector("#tests tbody");
    let row = body.querySelector(`tr[data-name="${CSS.escape(t.name)}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.name = t.name;
      for (let i = 0; i < 5; i++) row.appendChild(document.createElement("td"));
      body.appendChild(row);
    }
    const cells = row.children;
    cells[0].textContent = t.name;
    cells[1].textContent = t.outcome;
    cells[1].className = "outcome outcome-" + t.outcome;
    cells[2].textContent = t.points;
    cells[3].textContent = t.duration ? t.duration.toFixed(3) + " s" : "";
    cells[4].textContent = t.message || "";
    cells[4].className = "message";
  }

  function showResult(r) {
    resultSeen = true;
    setState(r.verdict);
    el("job-score").textContent = (r.score ?? 0).toFixed(2).replace(/\.?0+$/, "") + "/100";
    el("job-summary").textContent = r.summary || "";
    el("job-progress").textContent = "";
    if (r.output_tail) {
      el("job-tail").textContent = r.output_tail;
      el("job-tail-box").hidden = false;
    }
    if (r.metric !== null && r.metric !== undefined && box.dataset.metricName) {
      el("job-metric").textContent = `${box.dataset.metricName}: ${r.metric.toFixed(4)} ${box.dataset.metricUnit}`;
    }
  }

  function handle(ev) {
    if (ev.seq <= lastSeq) return; // already shown
    lastSeq = ev.seq;
    const d = ev.data;
    switch (ev.type) {
      case "log": appendLog(d.text); break;
      case "test": upsertTest(d); break;
      case "progress": el("job-progress").textContent = `${d.done}/${d.total} ${d.phase}`; break;
      case "status": if (!resultSeen) setState(d.state); break;
      case "result": showResult(d); break;
    }
  }

  async function refresh() {
    try {
      const response = await fetch(statusUrl, {headers: {Accept: "application/json"}});
      if (!response.ok) return;
      const s = await response.json();
      if (s.latest_job_id && String(s.latest_job_id) !== String(jobId)) {
        window.location.reload(); // graded again (infrastructure error): follow the new attempt
        return;
      }
      if (!resultSeen || FINAL.has(s.state)) setState(s.state);
      el("job-queue").textContent = s.queue_position ? `Position ${s.queue_position} in the queue` : "";
      if (s.is_final) {
        if (s.score !== null) el("job-score").textContent = s.score.toFixed(2).replace(/\.?0+$/, "") + "/100";
        el("job-summary").textContent = s.summary || "";
      }
    } catch (e) { /* the next poll tries again */ }
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${window.location.host}/ws/jobs/${jobId}/?after=${lastSeq}`);
    socket.onopen = () => { retryDelay = 500; el("job-notice").hidden = true; };
    socket.onmessage = (message) => {
      const m = JSON.parse(message.data);
      if (m.kind === "event") handle(m);
      else if (m.kind === "state") { if (FINAL.has(m.state) || !resultSeen) setState(m.state); refresh(); }
      else if (m.kind === "notice") { el("job-notice").textContent = m.message; el("job-notice").hidden = false; }
    };
    socket.onclose = (closing) => {
      if (closing.code === 4403) { el("job-notice").textContent = "You may not watch this job."; el("job-notice").hidden = false; return; }
      if (resultSeen && FINAL.has(state)) return;
      el("job-notice").textContent = "Connection lost; reconnecting...";
      el("job-notice").hidden = false;
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    };
  }

  JSON.parse(el("archived-events").textContent).forEach(handle);
  if (!(resultSeen && FINAL.has(state))) connect();
  const poller = setInterval(() => {
    if (FINAL.has(state) && resultSeen) { clearInterval(poller); return; }
    refresh();
  }, 3000);
  window.aisysJob = {lastSeq: () => lastSeq, socket: () => socket};
})();

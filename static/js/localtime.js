// Beside each course time (<time class="when">), the reader's own local time, when their
// browser's zone shows it differently: "2026-12-08 17:00 CET (your time: Tue 8 Dec, 11:00)".
(function () {
  "use strict";
  const fmt = new Intl.DateTimeFormat(undefined, {
    weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  });
  const pad = (n) => String(n).padStart(2, "0");
  for (const el of document.querySelectorAll("time.when[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (Number.isNaN(at.getTime())) continue;
    const local = `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ${pad(at.getHours())}:${pad(at.getMinutes())}`;
    if (el.textContent.startsWith(local)) continue; // the course's zone shows the same wall time
    const mine = document.createElement("span");
    mine.className = "muted local-time";
    mine.textContent = ` (your time: ${fmt.format(at)})`;
    el.after(mine);
  }
})();

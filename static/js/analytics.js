// The analytics page's four charts, drawn with the vendored Chart.js from the numbers the page
// embeds (json_script "analytics-data"). Each chart's table stays on the page for readers
// without JavaScript or a screen; once a chart is drawn its table is folded away.
(function () {
  "use strict";
  const source = document.getElementById("analytics-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const accent = "#3451b2", bad = "#b42318", ok = "#0f7b3f";
  const common = {
    responsive: true,
    maintainAspectRatio: false,
    animation: false, // drawn at once: screenshots and tests see the final chart
    plugins: { legend: { display: false } },
  };
  const counts = { beginAtZero: true, ticks: { precision: 0 } };

  function draw(id, config) {
    const figure = document.getElementById(id);
    const canvas = figure && figure.querySelector("canvas");
    if (!canvas) return;
    new Chart(canvas, config);
    figure.querySelector("details.numbers").open = false;
  }

  const scores = data.score_histogram;
  draw("scores", {
    type: "bar",
    data: { labels: scores.map((b) => b.label), datasets: [{ label: "students", data: scores.map((b) => b.count), backgroundColor: accent }] },
    options: { ...common, scales: { y: { ...counts, title: { display: true, text: "students" } }, x: { title: { display: true, text: "final score" } } } },
  });

  const hourly = data.hourly;
  draw("hourly", {
    type: "bar",
    data: { labels: hourly.labels, datasets: [{ label: "submissions", data: hourly.counts, backgroundColor: accent }] },
    options: { ...common, scales: { y: { ...counts, title: { display: true, text: "submissions" } }, x: { ticks: { autoSkip: true, maxTicksLimit: 12 } } } },
  });

  const failing = data.failing_tests;
  draw("failing", {
    type: "bar",
    data: {
      labels: failing.map((t) => (t.name.length > 40 ? t.name.slice(0, 39) + "…" : t.name)),
      datasets: [{ label: "failed in", data: failing.map((t) => t.failures), backgroundColor: bad }],
    },
    options: { ...common, indexAxis: "y", scales: { x: { ...counts, title: { display: true, text: `counted results (of ${data.with_tests})` } } } },
  });

  const metric = data.metric;
  const unit = metric.unit ? ` (${metric.unit})` : "";
  draw("metric", {
    type: "bar",
    data: { labels: metric.bins.map((b) => b.label), datasets: [{ label: "students", data: metric.bins.map((b) => b.count), backgroundColor: ok }] },
    options: {
      ...common,
      scales: { y: { ...counts, title: { display: true, text: "students" } }, x: { title: { display: true, text: (metric.name || "metric") + unit } } },
    },
  });
})();

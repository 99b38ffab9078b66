// Blood-pressure and glucose charts of a patient, with the patient's thresholds drawn as bands.
// Data comes from <script type="application/json" id="chart-data"> (not executed: allowed by the CSP).
"use strict";

(function charts() {
  const holder = document.getElementById("chart-data");
  if (!holder || typeof Chart === "undefined") return;
  const data = JSON.parse(holder.textContent);
  const th = data.thresholds;
  const lang = document.documentElement.lang || "ru";
  const dayFormat = new Intl.DateTimeFormat(lang, { timeZone: data.timezone, day: "numeric", month: "short" });
  const timeFormat = new Intl.DateTimeFormat(lang, {
    timeZone: data.timezone, day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
  });
  const colors = {
    severe: "rgba(198, 40, 40, 0.13)", high: "rgba(230, 81, 0, 0.10)", low: "rgba(21, 101, 192, 0.10)",
    target: "rgba(46, 125, 50, 0.08)",
  };

  // Horizontal bands [from, to) in data units, painted under the lines.
  const bandsPlugin = {
    id: "thresholdBands",
    beforeDatasetsDraw(chart, _args, options) {
      const { ctx, chartArea, scales } = chart;
      ctx.save();
      for (const band of options.bands || []) {
        const top = scales.y.getPixelForValue(Math.min(band.to, scales.y.max));
        const bottom = scales.y.getPixelForValue(Math.max(band.from, scales.y.min));
        if (bottom <= top) continue;
        ctx.fillStyle = band.color;
        ctx.fillRect(chartArea.left, top, chartArea.right - chartArea.left, bottom - top);
        if (band.line !== undefined) {
          const y = scales.y.getPixelForValue(band.line);
          ctx.strokeStyle = band.lineColor || "rgba(0,0,0,0.25)";
          ctx.setLineDash([4, 4]);
          ctx.beginPath(); ctx.moveTo(chartArea.left, y); ctx.lineTo(chartArea.right, y); ctx.stroke();
          ctx.setLineDash([]);
        }
      }
      ctx.restore();
    },
  };

  function baseOptions(yMin, yMax, bands) {
    return {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      parsing: false,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: {
          type: "linear", min: data.start, max: data.end,
          ticks: { callback: (value) => dayFormat.format(new Date(value)), maxTicksLimit: 10 },
          grid: { color: "#eef1f4" },
        },
        y: { min: yMin, max: yMax, grid: { color: "#eef1f4" } },
      },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 12 } },
        tooltip: {
          callbacks: {
            title: (items) => (items.length ? timeFormat.format(new Date(items[0].parsed.x)) : ""),
            afterLabel: (item) => (item.raw.q ? `⚠ ${data.labels.flagged}` : ""),
          },
        },
        thresholdBands: { bands },
      },
    };
  }

  function points(list, key) {
    return list.filter((p) => p[key] !== null && p[key] !== undefined).map((p) => ({ x: p.t, y: p[key], q: p.q }));
  }
  const flaggedStyle = (ctx) => (ctx.raw && ctx.raw.q ? "triangle" : "circle");

  const bp = data.series.bp;
  const bpCanvas = document.getElementById("bp-chart");
  if (bpCanvas && bp.length) {
    const values = bp.flatMap((p) => [p.s, p.d, p.p || p.d]);
    const yMax = Math.max(th.severe_sbp + 20, ...values.map((v) => v + 10));
    const yMin = Math.min(40, ...values.map((v) => v - 10));
    new Chart(bpCanvas, {
      type: "line",
      data: {
        datasets: [
          { label: data.labels.systolic, data: points(bp, "s"), borderColor: "#b71c1c", backgroundColor: "#b71c1c",
            pointStyle: flaggedStyle, pointRadius: 3.5, borderWidth: 1.6, tension: 0.15 },
          { label: data.labels.diastolic, data: points(bp, "d"), borderColor: "#1565c0", backgroundColor: "#1565c0",
            pointStyle: flaggedStyle, pointRadius: 3.5, borderWidth: 1.6, tension: 0.15 },
          { label: data.labels.pulse, data: points(bp, "p"), borderColor: "#9e9e9e", backgroundColor: "#9e9e9e",
            pointRadius: 2, borderWidth: 1, borderDash: [3, 3], tension: 0.15 },
        ],
      },
      options: baseOptions(yMin, yMax, [
        { from: th.severe_sbp, to: 1000, color: colors.severe, line: th.severe_sbp, lineColor: "#c62828" },
        { from: th.high_sbp, to: th.severe_sbp, color: colors.high, line: th.high_sbp, lineColor: "#e65100" },
        { from: 0, to: th.low_dbp, color: colors.low, line: th.low_dbp, lineColor: "#1565c0" },
        { from: th.low_dbp, to: th.low_sbp, color: "rgba(0,0,0,0)", line: th.low_sbp, lineColor: "#1565c0" },
        { from: th.high_dbp, to: th.high_dbp, color: "rgba(0,0,0,0)", line: th.high_dbp, lineColor: "#e65100" },
      ]),
      plugins: [bandsPlugin],
    });
  }

  const gl = data.series.glucose;
  const glCanvas = document.getElementById("glucose-chart");
  if (glCanvas && gl.length) {
    const values = gl.map((p) => p.v);
    const yMax = Math.max(th.hyper_marked * 1.25, ...values.map((v) => v * 1.1));
    new Chart(glCanvas, {
      type: "line",
      data: {
        datasets: [
          { label: `${data.labels.glucose}, ${data.unit}`, data: points(gl, "v"), borderColor: "#2e7d32",
            backgroundColor: "#2e7d32", pointStyle: flaggedStyle, pointRadius: 4, borderWidth: 1.6, tension: 0.1 },
        ],
      },
      options: baseOptions(0, yMax, [
        { from: 0, to: th.hypo_l2, color: colors.severe, line: th.hypo_l2, lineColor: "#c62828" },
        { from: th.hypo_l2, to: th.hypo_l1, color: colors.high, line: th.hypo_l1, lineColor: "#e65100" },
        { from: th.hypo_l1, to: th.target_high, color: colors.target },
        { from: th.hyper_marked, to: th.hyper_severe, color: colors.high, line: th.hyper_marked, lineColor: "#e65100" },
        { from: th.hyper_severe, to: 10000, color: colors.severe, line: th.hyper_severe, lineColor: "#c62828" },
      ]),
      plugins: [bandsPlugin],
    });
  }
})();

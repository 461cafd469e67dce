// Small line charts on a <canvas>: one or two series over the dashboard's last minutes.
const COLOURS = ["#2f6fdb", "#c2571a"];
const PAD = { left: 34, right: 6, top: 8, bottom: 14 };
const DOT_RADIUS = 3;

export function drawLines(canvas, series) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const values = series.flat().filter((v) => v !== null && v !== undefined);
  const top = niceCeiling(Math.max(1, ...values));
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const x = (i, count) => PAD.left + (count <= 1 ? 0 : (i * plotW) / (count - 1));
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  const theme = getComputedStyle(canvas); // the page's colours, light or dark
  ctx.strokeStyle = theme.getPropertyValue("--line").trim() || "#e2dfd6";
  ctx.fillStyle = theme.getPropertyValue("--muted").trim() || "#5d6778";
  ctx.font = "10px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (const v of [0, top / 2, top]) {
    ctx.beginPath();
    ctx.moveTo(PAD.left, y(v));
    ctx.lineTo(width - PAD.right, y(v));
    ctx.stroke();
    ctx.fillText(formatTick(v), 2, y(v) + 3);
  }
  ctx.fillText("−10 min", PAD.left, height - 2);
  ctx.fillText("now", width - PAD.right - 18, height - 2);

  const measured = (v) => v !== null && v !== undefined; // a gap: nothing measured then
  series.forEach((points, s) => {
    ctx.strokeStyle = ctx.fillStyle = COLOURS[s % COLOURS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    points.forEach((v, i) => {
      if (!measured(v)) { drawing = false; return; }
      if (drawing) ctx.lineTo(x(i, points.length), y(v));
      else ctx.moveTo(x(i, points.length), y(v));
      drawing = true;
    });
    ctx.stroke();
    // a point alone between gaps has no line to be part of: a dot shows it
    points.forEach((v, i) => {
      if (!measured(v) || measured(points[i - 1]) || measured(points[i + 1])) return;
      ctx.beginPath();
      ctx.arc(x(i, points.length), y(v), DOT_RADIUS, 0, 2 * Math.PI);
      ctx.fill();
    });
  });
}

function niceCeiling(v) {
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 5, 10]) if (v <= step * power) return step * power;
  return 10 * power;
}

function formatTick(v) {
  return v >= 1000 ? `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k` : String(Math.round(v * 10) / 10);
}

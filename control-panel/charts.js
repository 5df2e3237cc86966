/* A small live line chart on a <canvas>: no library, nothing fetched from elsewhere. */
"use strict";

class LiveChart {
  /** canvas: the element; series: [{label, color}]; points: how many samples are kept. */
  constructor(canvas, series, points = 60) {
    this.canvas = canvas;
    this.series = series.map((s) => ({ ...s, values: [] }));
    this.points = points;
  }

  /** Append one sample per series (null: no value this time) and redraw. */
  push(values) {
    this.series.forEach((s, i) => {
      s.values.push(values[i] === undefined ? null : values[i]);
      if (s.values.length > this.points) s.values.shift();
    });
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 140;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const all = this.series.flatMap((s) => s.values.filter((v) => v !== null));
    const top = niceMax(all.length ? Math.max(...all) : 1);
    const left = 40, bottom = height - 16, right = width - 6, up = 6;
    ctx.font = "11px sans-serif";
    ctx.fillStyle = "#66717d";
    ctx.strokeStyle = "#e5e7eb";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = bottom - ((bottom - up) * i) / 4;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(right, y); ctx.stroke();
      ctx.fillText(formatTick((top * i) / 4), 2, y + 4);
    }
    const step = (right - left) / Math.max(1, this.points - 1);
    this.series.forEach((s, index) => {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let pen = false;
      const offset = this.points - s.values.length;
      s.values.forEach((v, i) => {
        if (v === null) { pen = false; return; }
        const x = left + (offset + i) * step;
        const y = bottom - ((bottom - up) * v) / top;
        if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        pen = true;
      });
      ctx.stroke();
      ctx.fillStyle = s.color;
      // Dots as well as lines: a lone sample between gaps still shows.
      s.values.forEach((v, i) => {
        if (v === null) return;
        ctx.fillRect(left + (offset + i) * step - 1.5, bottom - ((bottom - up) * v) / top - 1.5, 3, 3);
      });
      ctx.fillText(s.label, left + 6 + index * 70, height - 3);
    });
  }
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * power) return m * power;
  return 10 * power;
}

function formatTick(value) {
  if (value >= 1000) return (value / 1000).toFixed(1) + "k";
  return value >= 10 ? value.toFixed(0) : String(Number(value.toFixed(2)));
}

window.LiveChart = LiveChart;

// Small inline SVG charts. Labels and tooltips are text nodes; sizes come from viewBox so the
// charts scale with the page (phone width included).

import { amount, svg, timeOf } from "./dom.js";

const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

function scale(d0, d1, r0, r1) {
  const span = d1 - d0 || 1;
  return (v) => r0 + ((v - d0) / span) * (r1 - r0);
}

/**
 * A sender's recent txs: time across, amount up (log scale). Committed dots, the held tx as a
 * red ring labelled "held", waiting ones hollow.
 */
export function historyChart(txs, heldHash, { width = 340, height = 110 } = {}) {
  const pad = { l: 46, r: 10, t: 10, b: 18 };
  const now = Date.now();
  const points = txs
    .filter((t) => t.kind === "transfer" && typeof t.amount === "number")
    .map((t) => ({
      t: t.timestamp || t.quarantined_at_ms || now,
      a: t.amount,
      held: t.hash === heldHash,
      status: t.status,
      hash: t.hash,
      outgoing: t.from !== undefined,
    }));
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart history",
    role: "img",
    "aria-label": "sender's recent transfers: amount over time, the held one marked",
  });
  if (!points.length) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted" }, "no recent transfers"));
    return root;
  }
  const ts = points.map((p) => p.t);
  const logs = points.map((p) => Math.log10(p.a + 1));
  const x = scale(Math.min(...ts), Math.max(...ts), pad.l, width - pad.r);
  const lo = Math.min(...logs);
  const hi = Math.max(...logs);
  const y = scale(lo, hi === lo ? lo + 1 : hi, height - pad.b, pad.t);
  root.append(
    svg("line", { x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b, class: "axis" }),
    svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: height - pad.b, class: "axis" }),
    svg("text", { x: pad.l - 4, y: pad.t + 8, "text-anchor": "end", class: "tick" }, compact.format(Math.round(10 ** hi - 1))),
    svg("text", { x: pad.l - 4, y: height - pad.b, "text-anchor": "end", class: "tick" }, compact.format(Math.round(10 ** lo - 1))),
    svg("text", { x: pad.l, y: height - 4, class: "tick" }, "older"),
    svg("text", { x: width - pad.r, y: height - 4, "text-anchor": "end", class: "tick" }, "newer"),
  );
  for (const p of points) {
    const cx = x(p.t);
    const cy = y(Math.log10(p.a + 1));
    const label = `${amount(p.a)} · ${p.status} · ${timeOf(p.t)}`;
    if (p.held) {
      root.append(
        svg("circle", { cx, cy, r: 7, class: "held-ring" }, svg("title", {}, "held: " + label)),
        svg("text", { x: cx + 9 > width - 30 ? cx - 34 : cx + 9, y: Math.max(cy - 6, 10), class: "held-label" }, "held"),
      );
    } else {
      const cls = p.status === "committed" ? "dot" : p.status === "waiting" || p.status === "pending" ? "dot open" : "dot other";
      root.append(svg("circle", { cx, cy, r: 3.5, class: cls }, svg("title", {}, label)));
    }
  }
  return root;
}

/** A line over time: samples [{t, v}], with an optional warning level. */
export function lineChart(samples, { width = 420, height = 140, warn = null, label = "" } = {}) {
  const pad = { l: 36, r: 10, t: 10, b: 20 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart line", role: "img", "aria-label": label });
  if (samples.length < 2) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted" }, "collecting samples…"));
    return root;
  }
  const vmax = Math.max(1, ...samples.map((s) => s.v), warn ?? 0);
  const x = scale(samples[0].t, samples[samples.length - 1].t, pad.l, width - pad.r);
  const y = scale(0, vmax, height - pad.b, pad.t);
  const d = samples.map((s, i) => (i ? "L" : "M") + x(s.t).toFixed(1) + " " + y(s.v).toFixed(1)).join(" ");
  root.append(
    svg("line", { x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b, class: "axis" }),
    svg("text", { x: pad.l - 4, y: pad.t + 8, "text-anchor": "end", class: "tick" }, String(vmax)),
    svg("text", { x: pad.l - 4, y: height - pad.b, "text-anchor": "end", class: "tick" }, "0"),
    svg("text", { x: pad.l, y: height - 4, class: "tick" }, timeOf(samples[0].t).slice(-8)),
    svg("text", { x: width - pad.r, y: height - 4, "text-anchor": "end", class: "tick" }, timeOf(samples[samples.length - 1].t).slice(-8)),
    svg("path", { d, class: "series" }),
  );
  if (warn !== null) {
    root.append(
      svg("line", { x1: pad.l, y1: y(warn), x2: width - pad.r, y2: y(warn), class: "warn-line" }),
      svg("text", { x: width - pad.r, y: y(warn) - 3, "text-anchor": "end", class: "tick warn" }, "warn " + warn),
    );
  }
  return root;
}

/** Score quantiles of recent traffic on a 0..1 axis, against the threshold. */
export function scoreChart(quantiles, threshold, { width = 420, height = 90 } = {}) {
  const pad = { l: 12, r: 12, t: 16, b: 22 };
  const x = scale(0, 1, pad.l, width - pad.r);
  const mid = (pad.t + height - pad.b) / 2;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart scores", role: "img", "aria-label": "recent scores against the threshold" });
  root.append(svg("line", { x1: x(0), y1: mid, x2: x(1), y2: mid, class: "axis" }));
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    root.append(svg("text", { x: x(v), y: height - 6, "text-anchor": "middle", class: "tick" }, String(v)));
  }
  const q = quantiles || {};
  if (q.p50 != null && q.p99 != null) {
    root.append(svg("rect", { x: x(q.p50), y: mid - 9, width: Math.max(2, x(q.p99) - x(q.p50)), height: 18, class: "band" }));
    for (const [name, v] of Object.entries(q)) {
      if (v == null) continue;
      root.append(
        svg("line", { x1: x(v), y1: mid - 12, x2: x(v), y2: mid + 12, class: "quantile" }, svg("title", {}, name + " " + v.toFixed(3))),
        svg("text", { x: x(v), y: mid - 14, "text-anchor": "middle", class: "tick" }, name),
      );
    }
  } else {
    root.append(svg("text", { x: width / 2, y: mid - 12, "text-anchor": "middle", class: "muted" }, "no recent scores"));
  }
  if (threshold != null) {
    root.append(
      svg("line", { x1: x(threshold), y1: pad.t - 6, x2: x(threshold), y2: height - pad.b, class: "threshold" }, svg("title", {}, "threshold " + threshold.toFixed(3))),
      svg("text", { x: x(threshold) + 4, y: height - pad.b - 2, class: "tick warn" }, "threshold"),
    );
  }
  return root;
}

/** Horizontal bars per label (per-feature drift), with the warning level marked. */
export function barChart(items, { warn = null, width = 420, label = "" } = {}) {
  const rowH = 20;
  const pad = { l: 130, r: 50, t: 6 };
  const height = pad.t * 2 + rowH * Math.max(1, items.length);
  const vmax = Math.max(warn ?? 0, ...items.map((i) => i.value), 1e-9);
  const x = scale(0, vmax, pad.l, width - pad.r);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart bars", role: "img", "aria-label": label });
  items.forEach((item, k) => {
    const yy = pad.t + k * rowH;
    const high = warn !== null && item.value > warn;
    root.append(
      svg("text", { x: pad.l - 6, y: yy + 14, "text-anchor": "end", class: "tick" }, item.label),
      svg("rect", { x: pad.l, y: yy + 3, width: Math.max(1, x(item.value) - pad.l), height: rowH - 6, class: high ? "bar high" : "bar" }),
      svg("text", { x: x(item.value) + 4, y: yy + 14, class: "tick" }, item.value.toFixed(3)),
    );
  });
  if (warn !== null) {
    root.append(svg("line", { x1: x(warn), y1: 0, x2: x(warn), y2: height, class: "warn-line" }, svg("title", {}, "warn above " + warn)));
  }
  return root;
}

/** A score against its threshold as a small horizontal meter. */
export function scoreMeter(score, threshold, { width = 160, height = 14 } = {}) {
  const x = scale(0, 1, 0, width);
  return svg(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, class: "meter", role: "img", "aria-label": `score ${score.toFixed(3)}, threshold ${threshold.toFixed(3)}` },
    svg("rect", { x: 0, y: 3, width, height: height - 6, class: "meter-bg" }),
    svg("rect", { x: 0, y: 3, width: x(Math.min(1, score)), height: height - 6, class: score > threshold ? "meter-fill high" : "meter-fill" }),
    svg("line", { x1: x(threshold), y1: 0, x2: x(threshold), y2: height, class: "threshold" }),
  );
}

// Model health: the detector_status figures as charts. Hold rate over time is sampled by this
// page while it is open (the node reports the last minute's holds; the page keeps the series).

import { barChart, lineChart, scoreChart } from "./charts.js";
import { amount, el, facts, hexSpan, notice, replace } from "./dom.js";
import { NetworkError, rpc } from "./rpc.js";

const POLL_MS = 2000;
const SAMPLES_MAX = 300;
const samples = []; // kept across visits of this view, for the page's lifetime

export function mountHealth(main) {
  const box = el("div", { class: "health" });
  const state = el("p", { role: "status", "aria-live": "polite", class: "muted" });
  main.append(
    el("h2", {}, "Model health"),
    el("p", { class: "lede" }, "How the anomaly detector on this node is doing: how often it holds, where recent scores fall against its threshold, whether traffic drifted from what it was trained on."),
    state,
    box,
  );
  let timer = null;
  let stopped = false;

  async function refresh() {
    try {
      const s = await rpc("detector_status");
      samples.push({ t: Date.now(), v: s.holds_last_minute ?? 0, total: s.quarantined_total ?? 0 });
      if (samples.length > SAMPLES_MAX) samples.shift();
      draw(s);
      replace(state, "Updated " + new Date().toLocaleTimeString("en-GB"));
    } catch (err) {
      replace(state, err instanceof NetworkError ? "Node not answering; reconnecting…" : String(err.message));
    }
    if (!stopped) timer = setTimeout(refresh, POLL_MS);
  }

  function draw(s) {
    const w = s.training_window;
    const drift = Object.entries(s.drift_psi || {}).map(([label, value]) => ({ label, value: Number(value) }));
    const highDrift = drift.filter((d) => d.value > (s.drift_warn_psi ?? Infinity));
    const warnings = [];
    if (!s.enabled) warnings.push("The detector is disabled on this node: nothing is screened.");
    else if (!s.warm) warnings.push(`Warming up: ${amount(s.committed_txs_seen)} of ${amount(s.warmup_txs)} committed txs seen before the first model.`);
    if (highDrift.length) warnings.push("Traffic drifted from the training window on: " + highDrift.map((d) => d.label).join(", ") + ". Expect more holds until the next training.");
    if ((s.holds_last_minute ?? 0) > (s.hold_rate_warn_per_min ?? Infinity)) warnings.push(`Holding ${s.holds_last_minute} txs a minute, above the warning level of ${s.hold_rate_warn_per_min}.`);
    if (s.budget_overflows) warnings.push(`${s.budget_overflows} txs scored above the threshold but went through because the hold budget (${s.hold_budget_per_min}/min) was spent; they carry "watch".`);
    replace(
      box,
      warnings.map((wtext) => notice("warn", wtext)),
      el(
        "div",
        { class: "grid" },
        el(
          "section",
          { class: "panel" },
          el("h3", {}, "Model"),
          facts([
            ["Version", String(s.model_version ?? "—")],
            ["Model id", s.model_id ? hexSpan(s.model_id, 8) : "—"],
            ["Trained at height", String(s.trained_at_height ?? "—")],
            ["Age", s.model_age_blocks == null ? "—" : amount(s.model_age_blocks) + " blocks"],
            ["Training window", w ? `heights ${w.first_height}–${w.last_height}, ${amount(w.rows)} txs (history from ${w.history_from}, seed ${w.seed})` : "—"],
            ["Threshold", s.threshold == null ? "—" : s.threshold.toFixed(4)],
            ["Contamination", String(s.contamination ?? "—")],
            ["Training now", s.training ? "yes" : "no"],
          ]),
        ),
        el(
          "section",
          { class: "panel" },
          el("h3", {}, "Holds"),
          facts([
            ["Held now", amount(s.quarantined)],
            ["Held since start", amount(s.quarantined_total)],
            ["Holds in the last minute", `${amount(s.holds_last_minute)} (warn above ${amount(s.hold_rate_warn_per_min)})`],
            ["Held senders, last minute", amount(s.held_senders_last_minute)],
            ["Hold budget", amount(s.hold_budget_per_min) + " per minute"],
            ["Budget overflows", amount(s.budget_overflows)],
            ["Recent hold rate", ((s.quarantine_rate || 0) * 100).toFixed(2) + "% of " + amount(s.scored_recent) + " scored"],
          ]),
        ),
        el("section", { class: "panel" }, el("h3", {}, "Holds per minute, since this page opened"), lineChart(samples, { warn: s.hold_rate_warn_per_min ?? null, label: "holds in the last minute over time" })),
        el(
          "section",
          { class: "panel" },
          el("h3", {}, "Recent scores against the threshold"),
          scoreChart(s.score_quantiles, s.threshold),
          el("p", { class: "caption" }, "The band spans the median (p50) to p99 of recently scored txs; a tx is held when its score is above the threshold."),
        ),
        el(
          "section",
          { class: "panel wide" },
          el("h3", {}, "Drift per feature (PSI against the training window)"),
          drift.length ? barChart(drift, { warn: s.drift_warn_psi ?? null, label: "population stability index per feature" }) : el("p", { class: "muted" }, "No drift figures yet (no model, or too few recent txs)."),
        ),
      ),
    );
  }

  refresh();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

// What the KOI page shows of an answer: the prediction with every model's probabilities, and the
// explanation as signed contribution charts (one per ensemble member). Text only via textContent.
import { LABELS, classSlug, el, formatNumber } from "./api.js";
import { mount, probabilityChart, signedBarChart } from "./charts.js";

const TOP = 10;
const METHODS = { tree_shap: "TreeSHAP", integrated_gradients: "Integrated gradients" };
const CAPTIONS = { tree_shap: "TreeSHAP contributions", integrated_gradients: "Integrated-gradients attributions" };
const SPACES = { margin: "the margin (log-odds)", probability: "the probability" };

function trainingText(value) {
  return value === true ? "yes" : value === false ? "no" : "unknown";
}

function badge(label) {
  return el("span", { class: `badge class-${classSlug(label)}` }, String(label || "unknown").replace("_", " "));
}

function fact(term, id, ...value) {
  return [el("dt", {}, term), el("dd", id ? { id } : {}, ...value)];
}

function koiLink(koi, request) {
  const params = new URLSearchParams({ koi });
  if (request.model && request.model !== "ensemble") params.set("model", request.model);
  if (request.version) params.set("version", request.version);
  return el("a", { href: `/ui/?${params}` }, koi);
}

/** The prediction: facts, then every model's probabilities. Returns the KOI shown (or null). */
export function renderPrediction(container, answer, request, selected = null) {
  const batch = Array.isArray(answer.predictions);
  const first = batch ? answer.predictions[0] || {} : answer;
  const members = batch
    ? Object.entries(answer.all_models || {}).map(([model, items]) => ({ model, version: null, ...(items[0] || {}) }))
    : answer.all_models || [];
  const byName = !request.features;
  const summary = el("section", { class: "panel summary", "aria-labelledby": "summary-title" });
  summary.append(el("div", { class: "summary-head" },
    el("h2", { id: "summary-title" }, first.koi || (byName ? request.koi : "Values entered")),
    el("span", { class: "predicted" }, "predicted ", badge(first.prediction))));
  const variant = answer.variant ? el("span", { class: "muted" }, ` (${answer.variant} variant)`) : null;
  summary.append(el("dl", { class: "facts" },
    fact("Archive disposition", "disposition", first.disposition ? String(first.disposition).replace("_", " ")
      : byName ? "unknown" : "none (values entered)"),
    fact("Answered by", null, `${answer.model || "ensemble"} `, el("span", { id: "answered-version" }, answer.version || "?"),
      variant),
    fact("In this version's training set", "in-training-set", trainingText(first.in_training_set)),
    answer.catalogue_version ? fact("Catalogue version", null, answer.catalogue_version) : null,
    typeof answer.latency_ms === "number" ? fact("Latency", null, `${answer.latency_ms.toFixed(1)} ms`) : null,
  ));
  if (answer.ensemble && answer.ensemble.degraded) {
    summary.append(el("p", { class: "warning" }, "Degraded ensemble: not every member answered; the members that did",
      ` (${(answer.ensemble.members || []).join(", ")}) were reweighted.`));
  }
  const missing = first.missing_features || [];
  if (missing.length) {
    summary.append(el("details", { class: "missing" },
      el("summary", {}, `${missing.length} feature(s) missing, filled with the training medians`),
      el("p", { class: "mono" }, missing.join(", "))));
  }
  if (batch && answer.predictions.length > 1) {
    const others = answer.predictions.slice(1).filter((p) => p.koi);
    summary.append(el("p", { class: "others" }, `${answer.predictions.length} KOIs of this star; also: `,
      ...others.flatMap((p, i) => [i ? ", " : "", koiLink(p.koi, request), " ", badge(p.prediction)])));
  }
  const entries = [{ model: answer.model || "ensemble", version: answer.version, probabilities: first.probabilities,
                     prediction: first.prediction }, ...members];
  if (selected && !entries.some((entry) => entry.model === selected.model)) entries.push(selected);
  const probabilities = el("section", { class: "panel", "aria-labelledby": "probabilities-title" },
    el("h2", { id: "probabilities-title" }, "Class probabilities"));
  const box = el("div", { class: "chart-box probabilities" });
  probabilities.append(box, el("p", { class: "caption" },
    `Each model's probability of each class${request.model ? `; selected: ${request.model}` : ""}.`,
    " The ensemble combines its members' probabilities."));
  container.append(summary, probabilities);
  mount(box, (width) => probabilityChart(entries.map((entry) => ({
    model: entry.model,
    title: `${entry.model}${entry.version ? ` ${entry.version}` : ""} · predicts ${String(entry.prediction || "?").replace("_", " ")}`
      + (entry.model === request.model ? " · selected" : ""),
    probabilities: entry.probabilities,
    selected: entry.model === request.model,
  })), LABELS, { width }));
  return { koi: first.koi || null };
}

function describe(explanation, shown, total) {
  const cls = explanation.explained_class;
  const method = CAPTIONS[explanation.method] || `${explanation.method} contributions`;
  const space = SPACES[explanation.output_space] || `the ${explanation.output_space}`;
  const base = explanation.base_value ? explanation.base_value[cls] : undefined;
  const output = explanation.output ? explanation.output[cls] : undefined;
  const delta = explanation.delta ? explanation.delta[cls] : undefined;
  let text = `${method} to ${space} of ${cls}; base value ${formatNumber(base)}`;
  if (explanation.method === "integrated_gradients") text += " (the model's output at the baseline)";
  text += `, output ${formatNumber(output)} = base value + the sum of all ${total} contributions`;
  if (typeof delta === "number" && Math.abs(delta) > 1e-6) text += ` + a completeness error of ${formatNumber(delta)}`;
  return `${text}. The ${shown} largest by size: positive values push towards ${cls}, negative away from it.`;
}

function memberBlock(section, name, explanation, weight) {
  const cls = explanation.explained_class;
  const names = explanation.feature_names || [];
  const labels = explanation.feature_labels || names;
  const values = explanation.feature_values || [];
  const contributions = (explanation.values && explanation.values[cls]) || [];
  const rows = names.slice(0, TOP).map((feature, i) => ({
    key: feature,
    label: `${labels[i] || feature} = ${formatNumber(values[i])}`,
    value: Number(contributions[i]) || 0,
    valueText: (Number(contributions[i]) || 0).toFixed(3),
  }));
  const title = [`${name}${explanation.version ? ` ${explanation.version}` : ""}`,
    typeof weight === "number" ? `weight ${weight.toFixed(2)}` : null,
    METHODS[explanation.method] || explanation.method, `output space: ${explanation.output_space}`]
    .filter(Boolean).join(" · ");
  const block = el("div", { class: "member", "data-member": name }, el("h3", {}, title));
  section.append(block); // attached first, so the chart is drawn at the section's width
  block.append(el("p", { class: "legend" },
    el("span", { class: "swatch pos" }), ` towards ${cls}  `, el("span", { class: "swatch neg" }), ` away from ${cls}`));
  const box = el("div", { class: "chart-box" });
  block.append(box, el("p", { class: "caption" }, describe(explanation, rows.length, names.length)));
  if (rows.length) {
    mount(box, (width) => signedBarChart(rows, { width, label: `${name}: top contributions to ${cls}`,
      attributes: { "data-chart": "contributions", "data-model": name }, rowAttribute: "data-feature" }));
  } else {
    box.append(el("p", { class: "muted" }, "No contributions were returned."));
  }
}

/** The explanation of the row shown: the model's, or each ensemble member's beside its weight. */
export function renderExplanation(section, body, selected, koi) {
  const rows = body.predictions || [];
  const index = Math.max(0, rows.findIndex((p) => koi && p.koi === koi));
  const explanation = (body.explanations || [])[index];
  section.append(el("h2", { id: "explanation-title" }, "Why: the top contributions"));
  if (!explanation) {
    section.append(el("p", { class: "muted" }, "The service returned no explanation for this row."));
    return;
  }
  if (explanation.members) {
    const cls = explanation.explained_class || rows[index]?.prediction;
    const p = explanation.output && typeof explanation.output[cls] === "number" ? explanation.output[cls].toFixed(3) : "?";
    section.append(el("p", {}, `Ensemble ${explanation.version || ""}: P(${cls}) = ${p}. `,
      explanation.combination ? `It is the ${explanation.combination}.` : ""));
    if (explanation.note) section.append(el("p", { class: "note" }, explanation.note));
    const weights = explanation.weights || {};
    for (const name of Object.keys(explanation.members).sort()) {
      memberBlock(section, name, explanation.members[name], weights[name]);
    }
  } else {
    memberBlock(section, explanation.model || selected, explanation, null);
  }
}

export function renderExplainError(section, error) {
  section.append(el("h2", { id: "explanation-title" }, "Why: the top contributions"),
    el("p", { class: "error-text" }, `Explanation unavailable: ${error && error.message ? error.message : error}`));
}

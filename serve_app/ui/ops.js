// The operations page: health and breakers, models with their versions and aliases, and the
// experiments (admin key) with each variant's traffic and latency. Refreshed every 5 s.
import { ApiError, api, clear, el, focusKey, formatNumber, onKeyChange, showError, showMessage } from "./api.js";

const REFRESH_MS = 5000;
const KNOWN_VARIANT_FIELDS = ["version", "weight", "requests", "errors", "error_rate", "p50_ms", "p95_ms"];
const KNOWN_EXPERIMENT_FIELDS = ["variants"];
const healthBox = document.getElementById("health");
const modelsBox = document.getElementById("models");
const experimentsBox = document.getElementById("experiments");
const experimentsMessage = document.getElementById("experiments-message");
const eventsList = document.getElementById("events");
const eventsTitle = document.getElementById("events-title");
const refreshedAt = document.getElementById("refreshed-at");

let inFlight = false;
let askedForKey = false; // focus the key form once per failure, not on every refresh
let stableVersions = {}; // model -> the version its stable alias names (from /models)

function text(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") return formatNumber(value);
  if (Array.isArray(value)) return value.map(text).join(", ");
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k} ${text(v)}`).join(", ");
  return String(value);
}

function stateClass(state) {
  const s = String(state);
  if (["healthy", "closed", "running", "promoted", "ok"].includes(s)) return "state good";
  if (["degraded", "half_open", "paused", "pending"].includes(s)) return "state warn";
  return ["unhealthy", "open", "rolled_back", "failed"].includes(s) ? "state bad" : "state";
}

function table(headers, rows, attributes = {}) {
  return el("div", { class: "table-wrap" }, el("table", { class: "data-table", ...attributes },
    el("thead", {}, el("tr", {}, ...headers.map(([label, numeric]) => el("th", { scope: "col", class: numeric ? "num" : null }, label)))),
    el("tbody", {}, ...rows)));
}

function renderHealth(health) {
  const breakers = health.breakers || {};
  const loaded = health.models_loaded || {};
  const models = [...new Set([...Object.keys(loaded), ...Object.keys(breakers)])].sort();
  const known = new Set(["status", "timestamp", "models_loaded", "breakers", "cache_size"]);
  const extra = Object.entries(health).filter(([k]) => !known.has(k));
  healthBox.replaceChildren(
    el("p", { class: "summary-line" },
      el("span", {}, "Status: ", el("span", { id: "health-status", class: stateClass(health.status) }, text(health.status))),
      el("span", {}, `Versions loaded: ${text(health.cache_size)}`),
      el("span", { class: "muted" }, `at ${text(health.timestamp)}`),
      ...extra.map(([k, v]) => el("span", {}, `${k}: ${text(v)}`))),
    table([["Model"], ["Loaded versions"], ["Breaker"]], models.map((m) => el("tr", { "data-model": m },
      el("td", {}, m), el("td", {}, text(loaded[m] || [])),
      el("td", {}, el("span", { class: stateClass(breakers[m]), "data-breaker": m }, text(breakers[m]))))),
    { id: "breakers-table" }));
}

function renderModels(models) {
  const names = Object.keys(models || {}).sort();
  stableVersions = Object.fromEntries(names.map((n) => [n, ((models[n] || {}).aliases || {}).stable]));
  modelsBox.replaceChildren(names.length ? table([["Model"], ["Versions"], ["Aliases"], ["Default"]],
    names.map((name) => {
      const info = models[name] || {};
      const aliases = Object.entries(info.aliases || {}).map(([alias, version]) =>
        el("div", { class: "nowrap", "data-alias": alias }, `${alias} → ${text(version)}`));
      return el("tr", { "data-model": name }, el("td", {}, name), el("td", {}, text(info.versions || [])),
        el("td", {}, ...(aliases.length ? aliases : ["–"])), el("td", {}, text(info.default_version)));
    }), { id: "models-table" }) : el("p", { class: "muted" }, "No models."));
}

function fieldLabel(key) {
  return key.replace(/_ms$/, " (ms)").replace(/_s$/, " (s)").replaceAll("_", " ");
}

/** One row per variant: the known columns, then any other numeric field as a column of its
 * own, and whatever else (class distribution, flags) as text in a last column. */
function variantTable(model, variants, stableVersion) {
  const names = Object.keys(variants || {});
  const others = [...new Set(names.flatMap((n) => Object.keys(variants[n] || {})))]
    .filter((k) => !KNOWN_VARIANT_FIELDS.includes(k)).sort();
  const values = (k) => names.map((n) => (variants[n] || {})[k]);
  const numeric = others.filter((k) => values(k).some((x) => typeof x === "number")
    && values(k).every((x) => x === null || x === undefined || typeof x === "number"));
  const rest = others.filter((k) => !numeric.includes(k));
  const headers = [["Variant"], ["Version"], ["Weight", true], ["Requests", true], ["Errors", true], ["Error rate", true],
    ["p50 (ms)", true], ["p95 (ms)", true], ...numeric.map((k) => [fieldLabel(k), true]), ...(rest.length ? [["Details"]] : [])];
  const rows = names.map((name) => {
    const v = variants[name] || {};
    const version = v.version ?? (name === "stable" ? stableVersion : undefined);
    const cells = [el("th", { scope: "row" }, name), el("td", { "data-field": "version" }, text(version))];
    for (const key of [...KNOWN_VARIANT_FIELDS.slice(1), ...numeric]) {
      const value = key === "error_rate" && typeof v[key] === "number" ? `${(v[key] * 100).toFixed(2)} %` : text(v[key]);
      cells.push(el("td", { class: "num", "data-field": key }, value));
    }
    if (rest.length) {
      cells.push(el("td", { class: "details" }, ...rest.filter((k) => v[k] !== undefined)
        .map((k) => el("div", { "data-field": k }, `${fieldLabel(k)}: ${text(v[k])}`))));
    }
    return el("tr", { "data-variant": name }, ...cells);
  });
  return table(headers, rows, { id: `experiment-${model}` });
}

function renderExperiments(body) {
  const experiments = body.experiments || {};
  const models = Object.keys(experiments).sort();
  clear(experimentsBox);
  showMessage("", "info", experimentsMessage);
  eventsTitle.hidden = false;
  if (!models.length) experimentsBox.append(el("p", { class: "muted" }, "No experiments are running."));
  for (const model of models) {
    const experiment = experiments[model] || {};
    const facts = Object.entries(experiment).filter(([k]) => !KNOWN_EXPERIMENT_FIELDS.includes(k));
    experimentsBox.append(el("div", { class: "experiment", "data-model": model },
      el("h3", {}, `${model} `, el("span", { class: stateClass(experiment.state) }, text(experiment.state))),
      el("p", { class: "summary-line" }, ...facts.map(([k, v]) => el("span", {}, `${fieldLabel(k)}: ${text(v)}`))),
      variantTable(model, experiment.variants, stableVersions[model])));
  }
  const extra = Object.entries(body).filter(([k]) => !["experiments", "events"].includes(k));
  if (extra.length) experimentsBox.append(el("p", { class: "muted" }, extra.map(([k, v]) => `${k}: ${text(v)}`).join(" · ")));
  const events = Array.isArray(body.events) ? [...body.events].reverse() : [];
  eventsList.replaceChildren(...(events.length ? events.map((event) => el("li", {},
    typeof event === "object" && event !== null
      ? Object.entries(event).map(([k, v]) => `${k}: ${text(v)}`).join(" · ") : text(event)))
    : [el("li", { class: "muted" }, "No decisions yet.")]));
}

function experimentsFailed(error) {
  clear(experimentsBox);
  clear(eventsList);
  eventsTitle.hidden = true;
  const admin = error instanceof ApiError && error.needsKey;
  showMessage(admin ? `${error.message}. The experiments need an admin key.` : error.message, "error", experimentsMessage);
}

async function refresh() {
  if (inFlight) return;
  inFlight = true;
  try {
    const [health, models, experiments] = await Promise.allSettled([
      api("/api/v1/health", { accept: [503] }), api("/api/v1/models"), api("/api/v1/experiments")]);
    const failures = [];
    if (health.status === "fulfilled") renderHealth(health.value);
    else failures.push(health.reason);
    if (models.status === "fulfilled") renderModels(models.value);
    else failures.push(models.reason);
    if (experiments.status === "fulfilled") renderExperiments(experiments.value); // after /models: stable versions
    else experimentsFailed(experiments.reason);
    if (failures.length) {
      const needsKey = failures.some((f) => f instanceof ApiError && f.needsKey);
      showError(failures.find((f) => f instanceof ApiError && f.needsKey) || failures[0], undefined, { focus: false });
      if (needsKey && !askedForKey) focusKey();
      askedForKey = needsKey;
    } else {
      showMessage("");
      askedForKey = false;
    }
    refreshedAt.textContent = `last refreshed ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    showError(new Error(`the page could not show the answers: ${error.message}`));
  } finally {
    inFlight = false;
  }
}

onKeyChange(() => {
  askedForKey = false;
  refresh();
});
setInterval(() => {
  if (!document.hidden) refresh();
}, REFRESH_MS);
refresh();

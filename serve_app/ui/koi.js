// The KOI lookup page: suggestions as one types, a prediction of every model and the selected
// model's explanation. Deep links: /ui/?koi=K00752.01&model=xgboost&version=2.1.0.
import { api, ApiError, MODELS, clear, el, focusKey, onKeyChange, showError, showMessage } from "./api.js";
import { renderExplainError, renderExplanation, renderPrediction } from "./koi-result.js";

const form = document.getElementById("lookup-form");
const input = document.getElementById("koi-input");
const modelSelect = document.getElementById("model-select");
const versionInput = document.getElementById("version-input");
const button = document.getElementById("lookup-button");
const details = document.getElementById("features-details");
const featuresInput = document.getElementById("features-input");
const datalist = document.getElementById("koi-suggestions");
const result = document.getElementById("result");

let lastRequest = null;
let sequence = 0;

/** What the form asks for: {koi} or {features}, with the model and the version (or null). */
function readForm() {
  const model = MODELS.includes(modelSelect.value) ? modelSelect.value : "ensemble";
  const version = versionInput.value.trim() || null;
  if (details.open && featuresInput.value.trim()) {
    let features;
    try {
      features = JSON.parse(featuresInput.value);
    } catch (error) {
      throw new Error(`the values are not valid JSON: ${error.message}`);
    }
    if (features === null || typeof features !== "object") {
      throw new Error("the values must be a JSON object of feature name to number (or a list in schema order)");
    }
    return { features, model, version };
  }
  const koi = input.value.trim();
  if (!koi) throw new Error("enter a KOI (K00752.01), a Kepler name (Kepler-227 b) or a KIC id (10797460)");
  return { koi, model, version };
}

async function lookup(request, { push = true } = {}) {
  const mine = ++sequence;
  lastRequest = request;
  const target = request.features ? { features: request.features } : { koi: request.koi };
  const version = request.version ? { version: request.version } : {};
  button.disabled = true;
  result.setAttribute("aria-busy", "true");
  showMessage(request.koi ? `Looking up ${request.koi} …` : "Classifying the values entered …", "info");
  if (push && request.koi) remember(request);
  const [predicted, explained] = await Promise.allSettled([
    api("/api/v1/predict", { method: "POST", body: { ...target, model: "ensemble", ...version, return_all_models: true } }),
    api("/api/v1/explain", { method: "POST", body: { ...target, model: request.model, ...version } }),
  ]);
  if (mine !== sequence) return; // a newer lookup has begun
  button.disabled = false;
  result.removeAttribute("aria-busy");
  clear(result);
  if (predicted.status === "rejected") {
    result.hidden = true;
    showError(predicted.reason);
    return;
  }
  try {
    showMessage("");
    result.hidden = false;
    const shown = renderPrediction(result, predicted.value, request, selectedAnswer(explained, request));
    const section = el("section", { class: "panel explanation", "aria-labelledby": "explanation-title" });
    result.append(section);
    if (explained.status === "fulfilled") {
      renderExplanation(section, explained.value, request.model, shown.koi);
    } else {
      renderExplainError(section, explained.reason);
      showMessage(`Explanation unavailable: ${explained.reason.message}`, "error");
      if (explained.reason instanceof ApiError && explained.reason.needsKey) focusKey();
    }
  } catch (error) {
    result.hidden = false;
    showError(new Error(`the answer could not be shown: ${error.message}`));
  }
}

/** The selected model's own answer, from its explanation: shown should the ensemble's members
 * not include it (a member weighted 0 is not called). */
function selectedAnswer(explained, request) {
  if (explained.status !== "fulfilled" || request.model === "ensemble") return null;
  const body = explained.value;
  const row = (body.predictions || [])[0];
  return row ? { model: body.model || request.model, version: body.version, ...row } : null;
}

/** The lookup in the address bar, for a link to share; never the key. */
function remember(request) {
  const params = new URLSearchParams({ koi: request.koi });
  if (request.model !== "ensemble") params.set("model", request.model);
  if (request.version) params.set("version", request.version);
  const search = `?${params}`;
  if (location.search !== search) history.pushState(null, "", search);
}

function fromLocation() {
  const params = new URLSearchParams(location.search);
  const koi = (params.get("koi") || "").trim().slice(0, 64);
  const model = params.get("model");
  modelSelect.value = MODELS.includes(model) ? model : "ensemble";
  versionInput.value = (params.get("version") || "").trim().slice(0, 64);
  if (!koi) return;
  input.value = koi;
  lookup({ koi, model: modelSelect.value, version: versionInput.value || null }, { push: false });
}

// ---- suggestions as one types ------------------------------------------------------------------
let suggestTimer = null;
let suggestController = null;
const seen = new Map(); // prefix -> matches, so a keystroke back costs nothing

function fillSuggestions(matches) {
  clear(datalist);
  for (const match of matches) {
    const text = [match.kepler_name, match.disposition].filter(Boolean).join(" · ");
    const option = el("option", { value: match.koi });
    if (text) option.label = text;
    datalist.append(option);
  }
}

async function suggest() {
  const prefix = input.value.trim();
  if (!prefix || prefix.length > 64) {
    clear(datalist);
    return;
  }
  if (seen.has(prefix)) {
    fillSuggestions(seen.get(prefix));
    return;
  }
  if (suggestController) suggestController.abort();
  suggestController = new AbortController();
  try {
    const query = new URLSearchParams({ prefix, limit: "10" });
    const body = await api(`/api/v1/kois?${query}`, { signal: suggestController.signal });
    const matches = Array.isArray(body.matches) ? body.matches : [];
    if (seen.size > 200) seen.clear();
    seen.set(prefix, matches);
    if (input.value.trim() === prefix) fillSuggestions(matches);
  } catch (error) {
    if (error && error.name === "AbortError") return;
    if (error instanceof ApiError && error.needsKey) showError(error, undefined, { focus: false });
    // other failures only cost the suggestions; the lookup itself reports its own errors
  }
}

input.addEventListener("input", () => {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(suggest, 180);
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  let request;
  try {
    request = readForm();
  } catch (error) {
    showMessage(error.message, "error");
    return;
  }
  lookup(request);
});

window.addEventListener("popstate", fromLocation);
onKeyChange(() => {
  seen.clear();
  if (lastRequest) lookup(lastRequest, { push: false });
  else showMessage("Key saved for this tab.", "ok");
});
fromLocation();

// What every page shares: calls to /api/v1 with the API key, the key form in the header, the
// message area, and small DOM helpers. Text from data or the user only ever goes in via
// textContent / createTextNode: nothing is parsed as HTML.

const KEY = "kepler-api-key";
const keyListeners = new Set();

export const LABELS = ["CONFIRMED", "CANDIDATE", "FALSE_POSITIVE"];
export const MODELS = ["ensemble", "xgboost", "random_forest", "keras_cnn"];

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY) || null;
  } catch {
    return null; // storage disabled: behave as without a key
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY, key);
    else sessionStorage.removeItem(KEY);
  } catch {
    // storage disabled: the key cannot be kept
  }
}

/** An API answer that is not a success, or no answer at all (status 0). */
export class ApiError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(status ? `${status}: ${detail}` : detail);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }

  get needsKey() {
    return this.status === 401 || this.status === 403;
  }
}

async function errorDetail(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") return body.error;
    if (body && typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through
  }
  const plain = text.trim();
  return plain && plain.length < 300 && !plain.startsWith("<") ? plain : (response.statusText || "request failed");
}

function explain(status, detail, retryAfter) {
  if (status === 401) return `this service needs an API key: enter it above (${detail})`;
  if (status === 403) return `this key may not do this: enter a key that may above (${detail})`;
  if (status === 429 && retryAfter) return `${detail} (try again in ${retryAfter} s)`;
  return detail;
}

/**
 * One API call: JSON in and out, the key sent as a bearer token when there is one. Resolves to
 * the parsed body (or the Response when raw), rejects with ApiError. `accept`: extra statuses
 * whose JSON body is an answer rather than an error (the health check's 503).
 */
export async function api(path, { method = "GET", body, raw = false, signal, accept = [] } = {}) {
  const headers = { Accept: raw ? "*/*" : "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, signal, cache: "no-store", credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, "network error: the service did not answer; check the connection and try again");
  }
  if (!response.ok && !accept.includes(response.status)) {
    const retryAfter = response.headers.get("Retry-After");
    const detail = await errorDetail(response);
    throw new ApiError(response.status, explain(response.status, detail, retryAfter), retryAfter);
  }
  if (raw) return response;
  try {
    return await response.json();
  } catch {
    throw new ApiError(response.status, "the service answered with something that is not JSON");
  }
}

// ---- DOM helpers ------------------------------------------------------------------------------

/** An element with attributes and children; strings become text nodes, never HTML. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** A number for people: 4 significant digits, null as "missing". */
export function formatNumber(value) {
  if (value === null || value === undefined) return "missing";
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return String(value);
  return String(Number(value.toPrecision(4)));
}

export function classSlug(label) {
  return LABELS.includes(label) ? label.toLowerCase().replace("_", "-") : "unknown";
}

// ---- the message area and the key form ------------------------------------------------------------

/** Show text in a message area (default #message); kind: "error", "info" or "ok". */
export function showMessage(text, kind = "info", target = document.getElementById("message")) {
  if (!target) return;
  target.textContent = text || "";
  target.classList.remove("error", "info", "ok");
  if (text) target.classList.add(kind);
  target.hidden = !text;
}

/** Show an error; when it asks for a key, point at the key form. */
export function showError(error, target = document.getElementById("message"), { focus = true } = {}) {
  const text = error instanceof ApiError ? error.message : `error: ${error && error.message ? error.message : error}`;
  showMessage(text, "error", target);
  if (error instanceof ApiError && error.needsKey && focus) focusKey();
}

export function focusKey() {
  const input = document.getElementById("key-input");
  if (input) input.focus();
}

/** Run `callback` each time a key is saved or forgotten (the page reloads what it shows). */
export function onKeyChange(callback) {
  keyListeners.add(callback);
}

function renderKeyState() {
  const state = document.getElementById("key-state");
  if (state) state.textContent = apiKey() ? "key set for this tab" : "no key";
}

function setupKeyForm() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const forget = document.getElementById("key-forget");
  if (!form || !input) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault(); // the key never goes into a URL
    const key = input.value.trim();
    if (!key) {
      input.focus();
      return;
    }
    storeKey(key);
    input.value = "";
    renderKeyState();
    keyListeners.forEach((callback) => callback());
  });
  if (forget) {
    forget.addEventListener("click", () => {
      storeKey(null);
      input.value = "";
      renderKeyState();
      keyListeners.forEach((callback) => callback());
    });
  }
  renderKeyState();
}

setupKeyForm();

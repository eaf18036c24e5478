// The candidates page: the catalogue's CANDIDATEs ranked by out-of-fold P(CONFIRMED), each KOI
// linking to its lookup, and the same ranking as CSV (fetched with the key, saved via a Blob).
import { api, clear, el, onKeyChange, showError, showMessage } from "./api.js";

const form = document.getElementById("candidates-form");
const modelSelect = document.getElementById("candidates-model");
const versionInput = document.getElementById("candidates-version");
const topInput = document.getElementById("top-input");
const loadButton = document.getElementById("candidates-load");
const downloadButton = document.getElementById("download-csv");
const table = document.getElementById("candidates-table");
const summary = document.getElementById("candidates-summary");
const MAX_TOP = 5000;

let sequence = 0;

function query(format) {
  const top = Math.min(MAX_TOP, Math.max(1, Math.round(Number(topInput.value)) || 100));
  topInput.value = String(top);
  const params = new URLSearchParams({ top: String(top) });
  if (modelSelect.value !== "ensemble") params.set("model", modelSelect.value);
  if (versionInput.value.trim()) params.set("version", versionInput.value.trim());
  if (format) params.set("format", format);
  return params;
}

function p3(value) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(3) : "–";
}

function lookupLink(koi, model, version) {
  const params = new URLSearchParams({ koi });
  if (model && model !== "ensemble") params.set("model", model);
  if (version) params.set("version", version);
  return el("a", { href: `/ui/?${params}` }, koi);
}

function render(body) {
  const candidates = Array.isArray(body.candidates) ? body.candidates : [];
  const members = [...new Set(candidates.flatMap((c) => Object.keys(c.members || {})))].sort();
  const head = table.tHead || table.createTHead();
  const rows = table.tBodies[0] || table.createTBody();
  clear(head);
  clear(rows);
  head.append(el("tr", {},
    el("th", { scope: "col", class: "num" }, "Rank"),
    el("th", { scope: "col" }, "KOI"),
    el("th", { scope: "col" }, "Kepler name"),
    el("th", { scope: "col", class: "num" }, "P(CONFIRMED)", el("span", { class: "th-sub" }, body.model || "")),
    ...members.map((m) => el("th", { scope: "col", class: "num", "data-member": m },
      "P(CONFIRMED)", el("span", { class: "th-sub" }, m)))));
  for (const candidate of candidates) {
    rows.append(el("tr", { "data-koi": candidate.koi, title: candidate.scored_by ? `scored by ${candidate.scored_by}` : null },
      el("td", { class: "num" }, String(candidate.rank)),
      el("td", {}, lookupLink(String(candidate.koi), body.model, versionInput.value.trim())),
      el("td", {}, candidate.kepler_name || "–"),
      el("td", { class: "num p-confirmed" }, p3(candidate.p_confirmed)),
      ...members.map((m) => el("td", { class: "num", "data-member": m },
        p3(candidate.members && candidate.members[m] ? candidate.members[m].CONFIRMED : undefined)))));
  }
  if (!candidates.length) {
    rows.append(el("tr", {}, el("td", { colspan: 4 + members.length, class: "muted" }, "No candidates.")));
  }
  summary.textContent = `${body.model || "?"} ${body.version || ""} · catalogue ${body.catalogue_version || "?"} · `
    + `top ${candidates.length} of ${body.candidates_in_catalogue ?? "?"} CANDIDATEs · ranked by ${body.ranked_by || "P(CONFIRMED)"}`;
}

async function load() {
  const mine = ++sequence;
  loadButton.disabled = true;
  showMessage("Loading the ranking …", "info");
  try {
    const body = await api(`/api/v1/candidates?${query()}`);
    if (mine !== sequence) return;
    render(body);
    showMessage("");
  } catch (error) {
    if (mine !== sequence) return;
    showError(error);
  } finally {
    if (mine === sequence) loadButton.disabled = false;
  }
}

async function download() {
  downloadButton.disabled = true;
  try {
    const params = query("csv");
    const response = await api(`/api/v1/candidates?${params}`, { raw: true });
    const blob = await response.blob();
    const url = URL.createObjectURL(new Blob([blob], { type: "text/csv" }));
    const link = el("a", { href: url, download: `kepler-candidates-${modelSelect.value}-top${params.get("top")}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    showMessage(`Saved the top ${params.get("top")} as CSV.`, "ok");
  } catch (error) {
    showError(error);
  } finally {
    downloadButton.disabled = false;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  load();
});
downloadButton.addEventListener("click", download);
onKeyChange(load);
load();

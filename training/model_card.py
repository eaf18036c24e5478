"""A model card per version (MODEL_CARD.md beside the model): what it learned from, how well it
does on stars it never saw, and where not to trust it. Rendered from metadata.json only, so the
card cannot disagree with the registry."""
from __future__ import annotations

from runtimes.schema import DIAGNOSTICS

LIMITATIONS = (
    "Trained and evaluated on KOIs of the Kepler mission only; not for TESS or other surveys.",
    "Labels are archive dispositions at one snapshot: CANDIDATE is a state, not a class of object, and "
    "about one in five 2019 CANDIDATEs was CONFIRMED by 2025.",
    "The split is by host star (sha256 of kepid): no star's KOIs are on both sides, but metrics on other "
    "catalogues or pipelines may be lower.",
)
DIAGNOSTIC_LIMITATIONS = (
    "Missing diagnostics are not neutral: koi_max_mult_ev is missing exactly for KOIs absent from the DR25 "
    "run and koi_bin_oedp_sig exactly where koi_score is missing; those KOIs are mostly CANDIDATE or FALSE "
    "POSITIVE. The model sees training medians in their place, never the gap, so it cannot learn the cohort "
    "from it; a tree may still isolate the exact median value. Metrics on the test KOIs with every "
    "diagnostic measured are given separately.",
    "A request that omits the diagnostics is answered from the table features and medians: less accurate "
    "than with them (see the complete-diagnostics rows).",
    "Diagnostics come from a 2022-12-28 archive pull (DR25 pipeline values), without their error columns.",
)


def _metrics_rows(title: str, evaluations: dict) -> list[str]:
    rows = []
    for labels, e in sorted(evaluations.items()):
        rows.append(f"| {title} | {labels.removeprefix('koi_cumulative_')} | {e['test_samples']} | "
                    f"{e['accuracy']:.3f} | {e['f1_score']:.3f} | {e['roc_auc']:.3f} | "
                    f"{e['expected_calibration_error']:.3f} |")
    return rows


def model_card(metadata: dict) -> str:
    training, schema = metadata["training"], metadata["input_schema"]
    diagnostics = [n for n in schema["feature_names"] if n in DIAGNOSTICS]
    lines = [
        f"# {metadata['model_name']} {metadata['version']}", "",
        f"Framework: {metadata['framework']} ({metadata['framework_version']}). "
        f"Created {metadata['created_at']}.", "",
        "## Data",
        f"- Labels: `koi_disposition` of the NASA Exoplanet Archive KOI cumulative table, snapshot "
        f"`{training['dataset_version']}` (CONFIRMED, CANDIDATE, FALSE_POSITIVE).",
        f"- Features: {schema['features']} ({training.get('feature_set', 'table')}): the 36 table features"
        + (f" and {len(diagnostics)} vetting diagnostics" if diagnostics else "") + "; names in `metadata.json`.",
        "- Never features: koi_score, koi_fpflag_*, koi_pdisposition, koi_comment, kepler_name and ids.",
        f"- Split: {training['split']}. Training KOIs: {training['training_samples']}.",
        f"- Missing values: {training.get('missing_values', 'see preprocessing.json')}.",
    ]
    if "out_of_fold" in training:
        lines.append(f"- Out-of-fold predictions for every KOI in `{training['out_of_fold']['file']}`: "
                     f"{training['out_of_fold']['rule']}.")
    lines += ["", "## Test-star metrics (macro averages; ROC-AUC one-vs-rest)", "",
              "| KOIs | labels | n | accuracy | macro-F1 | ROC-AUC | ECE |", "|---|---|---|---|---|---|---|"]
    lines += _metrics_rows("all test", metadata["evaluations"])
    lines += _metrics_rows("complete diagnostics", metadata.get("evaluations_complete_diagnostics", {}))
    lines += ["", "## Known limitations", ""]
    lines += [f"- {text}" for text in LIMITATIONS + (DIAGNOSTIC_LIMITATIONS if diagnostics else ())]
    return "\n".join(lines) + "\n"

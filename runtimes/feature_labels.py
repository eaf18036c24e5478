"""What each feature is, in words astronomers know: a label and a unit per name of
`runtimes.schema.WITH_DIAGNOSTICS`, for explanations and the web page.

The labels follow the NASA Exoplanet Archive's column labels for the cumulative KOI table (the
`# COLUMN` header of its CSV exports, e.g. "koi_dicco_msky: PRF Δθ_SQ(OOT) [arcsec]"), written
out in plain words; the units are the archive's. Two notes on them:

* The difference-image offsets `koi_dicco_*` are measured from the out-of-transit centroid (OOT);
  the offsets from the KIC position of the star are the `koi_dikco_*` columns, which are not
  features here.
* The archive lists `koi_fwm_stat_sig` in percent, but the bundled values lie between 0 and 1,
  so no unit is shown for it.
The transit epoch is in BKJD, the Kepler mission's Barycentric Julian Date minus 2454833.
Ray-free and import-light: serving and the page both use it.
"""
from __future__ import annotations

from runtimes.schema import DIAGNOSTICS, PARAMETERS, WITH_DIAGNOSTICS

# The 16 KOI table parameters (their _err1/_err2 columns follow below).
_PARAMETERS: dict[str, tuple[str, str | None]] = {
    "koi_period": ("orbital period", "days"),
    "koi_time0bk": ("transit epoch", "BKJD"),
    "koi_impact": ("impact parameter", None),
    "koi_duration": ("transit duration", "hours"),
    "koi_depth": ("transit depth", "ppm"),
    "koi_prad": ("planet radius", "Earth radii"),
    "koi_teq": ("equilibrium temperature", "K"),
    "koi_insol": ("insolation flux", "Earth flux"),
    "koi_model_snr": ("transit signal-to-noise", None),
    "koi_tce_plnt_num": ("TCE planet number", None),
    "koi_steff": ("stellar effective temperature", "K"),
    "koi_slogg": ("stellar surface gravity", "log10(cm/s²)"),
    "koi_srad": ("stellar radius", "solar radii"),
    "ra": ("right ascension", "degrees"),
    "dec": ("declination", "degrees"),
    "koi_kepmag": ("Kepler-band magnitude", "mag"),
}

# The 33 vetting diagnostics, in runtimes.schema.DIAGNOSTICS order.
_DIAGNOSTICS: dict[str, tuple[str, str | None]] = {
    "koi_count": ("number of KOIs on the star", None),
    "koi_gmag": ("g'-band magnitude", "mag"),
    "koi_rmag": ("r'-band magnitude", "mag"),
    "koi_imag": ("i'-band magnitude", "mag"),
    "koi_zmag": ("z'-band magnitude", "mag"),
    "koi_jmag": ("2MASS J-band magnitude", "mag"),
    "koi_hmag": ("2MASS H-band magnitude", "mag"),
    "koi_kmag": ("2MASS K-band magnitude", "mag"),
    "koi_num_transits": ("number of transits", None),
    "koi_max_sngle_ev": ("maximum single event statistic", None),
    "koi_max_mult_ev": ("maximum multiple event statistic", None),
    "koi_bin_oedp_sig": ("odd-even transit depth comparison statistic", None),
    "koi_ldm_coeff4": ("limb darkening coefficient 4", None),
    "koi_ldm_coeff3": ("limb darkening coefficient 3", None),
    "koi_ldm_coeff2": ("limb darkening coefficient 2", None),
    "koi_ldm_coeff1": ("limb darkening coefficient 1", None),
    "koi_sma": ("orbit semi-major axis", "au"),
    "koi_ror": ("planet-star radius ratio", None),
    "koi_dor": ("planet-star distance over star radius", None),
    "koi_incl": ("orbital inclination", "degrees"),
    "koi_smet": ("stellar metallicity [Fe/H]", "dex"),
    "koi_smass": ("stellar mass", "solar masses"),
    "koi_fwm_stat_sig": ("flux-weighted centroid offset significance", None),
    "koi_fwm_sra": ("transit source RA from flux-weighted centroids", "hours"),
    "koi_fwm_sdec": ("transit source Dec from flux-weighted centroids", "degrees"),
    "koi_fwm_srao": ("flux-weighted source RA offset from the out-of-transit centroid", "seconds of RA"),
    "koi_fwm_sdeco": ("flux-weighted source Dec offset from the out-of-transit centroid", "arcsec"),
    "koi_fwm_prao": ("flux-weighted centroid RA shift in transit", "seconds of RA"),
    "koi_fwm_pdeco": ("flux-weighted centroid Dec shift in transit", "arcsec"),
    "koi_dicco_mra": ("difference-image centroid RA offset from the out-of-transit centroid", "arcsec"),
    "koi_dicco_mdec": ("difference-image centroid Dec offset from the out-of-transit centroid", "arcsec"),
    "koi_dicco_msky": ("difference-image centroid offset from the out-of-transit centroid", "arcsec"),
    "koi_srho": ("fitted stellar density", "g/cm³"),
}


def _table() -> dict[str, tuple[str, str | None]]:
    labels: dict[str, tuple[str, str | None]] = {}
    for parameter, has_errors in PARAMETERS:
        label, unit = _PARAMETERS[parameter]
        labels[parameter] = (label, unit)
        if has_errors:
            labels[f"{parameter}_err1"] = (f"{label}, upper uncertainty", unit)
            labels[f"{parameter}_err2"] = (f"{label}, lower uncertainty", unit)
    for name in DIAGNOSTICS:
        labels[name] = _DIAGNOSTICS[name]
    return labels


# feature name -> (label, unit or None), in WITH_DIAGNOSTICS order.
FEATURE_LABELS: dict[str, tuple[str, str | None]] = _table()
assert tuple(FEATURE_LABELS) == WITH_DIAGNOSTICS


def display_name(feature: str) -> str:
    """'koi_dicco_msky' -> 'difference-image centroid offset from the out-of-transit centroid
    (arcsec)': the label, then the unit in parentheses when there is one. A name the table does not
    know is returned as it is."""
    entry = FEATURE_LABELS.get(feature) if isinstance(feature, str) else None
    if entry is None:
        return str(feature)
    label, unit = entry
    return f"{label} ({unit})" if unit else label

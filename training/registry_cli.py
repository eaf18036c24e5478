"""`kepler-registry`: inspect and manage the model registry and the datasets beside the models.

Lives above both the registry and the runtimes because `validate` loads models (and
`dataset-validate` the KOI catalogue); every other verb only moves bytes and metadata.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from registry import RegistryConfig, RegistryError
from registry.errors import AliasConflict, InvalidName, NotFound, VersionExists
from registry.registry import ArtifactRegistry, ModelRegistry

METRICS = ("accuracy", "precision", "recall", "f1_score", "roc_auc", "expected_calibration_error")


def _known(artifacts: ArtifactRegistry, name: str) -> None:
    """A model or dataset name with at least one version, or a message listing the known ones."""
    if not artifacts.versions(name, include_archived=True):
        known = artifacts.names()
        raise NotFound(f"{artifacts.KIND} {name!r} not found in {artifacts.store.description}"
                       + (f" (known: {', '.join(known)})" if known else f" (the registry has no {artifacts.KIND}s)"))


def cmd_list(registry: ModelRegistry, args) -> None:
    names = [args.name] if args.name else registry.models()
    if not names:
        print(f"no models in {registry.store.description}")
    for name in names:
        _known(registry, name)
        summary = registry.summary(name)
        print(f"{name}:")
        for version in summary.versions + summary.archived:
            p = registry.metadata(name, version).performance
            tags = [a for a, v in summary.aliases.items() if v == version]
            state = " (archived)" if version in summary.archived else ""
            print(f"  {version:<9} accuracy {p.accuracy:.3f}  macro-F1 {p.f1_score:.3f}  ROC-AUC {p.roc_auc:.3f}"
                  f"  [{p.evaluated_against}]{state}{'  <- ' + ', '.join(sorted(tags)) if tags else ''}")


def cmd_info(registry: ModelRegistry, args) -> None:
    version = registry.resolve(args.name, args.ref)
    print(json.dumps(registry.metadata(args.name, version).model_dump(), indent=1))


def cmd_compare(registry: ModelRegistry, args) -> None:
    a, b = registry.resolve(args.name, args.a), registry.resolve(args.name, args.b)
    meta_a, meta_b = registry.metadata(args.name, a), registry.metadata(args.name, b)
    labels = sorted(set(meta_a.evaluations) | set(meta_b.evaluations))
    print(f"{args.name}: {a} vs {b} (test stars, macro averages)")
    print(f"{'labels':<28}{'metric':<28}{a:>10}{b:>10}{'change':>10}")
    for against in labels:
        for metric in METRICS:
            va = meta_a.evaluations.get(against, {}).get(metric)
            vb = meta_b.evaluations.get(against, {}).get(metric)
            change = f"{vb - va:+.3f}" if va is not None and vb is not None else ""
            fmt = lambda v: f"{v:.3f}" if v is not None else "-"
            print(f"{against:<28}{metric:<28}{fmt(va):>10}{fmt(vb):>10}{change:>10}")


def cmd_report(registry: ModelRegistry, args) -> None:
    """A Markdown table of every version's test metrics, and optionally a bar chart of them."""
    rows = []
    print("| model | version | labels | test KOIs | accuracy | macro-F1 | ROC-AUC (OvR, macro) | ECE |")
    print("|---|---|---|---|---|---|---|---|")
    for name in registry.models():
        for version in registry.versions(name):
            metadata = registry.metadata(name, version)
            subsets = (("all", metadata.evaluations),
                       ("complete diagnostics", (metadata.model_extra or {}).get("evaluations_complete_diagnostics", {})))
            for subset, evaluations in subsets:
                for against, e in sorted(evaluations.items()):
                    if subset == "all":
                        rows.append((name, version, against, e))
                    print(f"| {name} | {version} | {against.removeprefix('koi_cumulative_')} | {subset} "
                          f"({e['test_samples']}) | {e['accuracy']:.3f} | {e['f1_score']:.3f} | {e['roc_auc']:.3f} | "
                          f"{e['expected_calibration_error']:.3f} |")
    if args.plot and rows:
        from training.plots import metrics_chart

        metrics_chart(rows, Path(args.plot))


def cmd_validate(registry: ModelRegistry, args) -> None:
    from runtimes import load

    version = registry.resolve(args.name, args.ref)
    directory = registry.pull(args.name, version)
    print(f"{args.name} {version}: checksums verified ({directory})")
    from training.data import load_snapshot

    snapshot = load_snapshot()
    test = snapshot.masks()[2]
    X = snapshot.X[test][:64]
    probabilities = load(args.name, directory).predict_proba(X)
    if probabilities.shape != (len(X), 3) or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5):
        raise RegistryError(f"{args.name} {version} loads but predicts malformed probabilities "
                            f"(shape {probabilities.shape})")
    print(f"{args.name} {version}: loads and predicts {len(X)} held-out KOIs; probabilities sum to 1")


def cmd_register(registry: ModelRegistry, args) -> None:
    metadata = registry.publish(args.name, args.version, Path(args.directory))
    print(f"registered {metadata.model_name} {metadata.version} in {registry.store.description}")


def cmd_promote(registry: ModelRegistry, args) -> None:
    previous, alias = registry.promote(args.name, args.alias, args.version)
    print(f"{args.name}: {args.alias} {previous or '(unset)'} -> {alias.version}")


def cmd_archive(registry: ModelRegistry, args) -> None:
    registry.archive(args.name, args.version)
    print(f"{args.name} {args.version}: archived")


def cmd_pull(registry: ModelRegistry, args) -> None:
    version = registry.resolve(args.name, args.ref)
    directory = registry.pull(args.name, version)
    if args.dest:
        dest = Path(args.dest)
        shutil.copytree(directory, dest, dirs_exist_ok=True)
        directory = dest
    print(directory)


def cmd_push(registry: ModelRegistry, args) -> None:
    target = RegistryConfig.from_env(uri=args.to, endpoint_url=args.to_endpoint_url).open()
    for name in args.names or registry.models():
        _known(registry, name)
        for version in registry.versions(name, include_archived=True):
            if target.exists(name, version):
                print(f"{name} {version}: already in {target.store.description}")
            else:
                try:  # the signature covers the manifest, which is identical on both sides
                    target.publish(name, version, registry.pull(name, version), registry.signature(name, version))
                    print(f"{name} {version}: pushed")
                except VersionExists:
                    print(f"{name} {version}: being published there by someone else, skipped")
            if registry.is_archived(name, version) and not target.is_archived(name, version):
                target.archive(name, version)
        for alias, version in registry.aliases(name).items():
            try:
                target.set_alias(name, alias, version, create_only=True)
                print(f"{name}: {alias} -> {version}")
            except AliasConflict:
                print(f"{name}: {alias} already set there ({target.get_alias(name, alias).version}), left as is")


def cmd_datasets(registry: ModelRegistry, args) -> None:
    datasets = registry.datasets
    names = datasets.names()
    if not names:
        print(f"no datasets in {datasets.store.description}")
    for name in names:
        print(f"{name}:")
        aliases = datasets.aliases(name)
        for version in datasets.versions(name):
            files = datasets.metadata(name, version).files
            shapes = ", ".join(f"{f} {s.rows} rows x {len(s.columns)} columns" for f, s in sorted(files.items()))
            tags = sorted(a for a, v in aliases.items() if v == version)
            print(f"  {version:<9} {shapes}{'  <- ' + ', '.join(tags) if tags else ''}")


def cmd_dataset_pull(registry: ModelRegistry, args) -> None:
    _known(registry.datasets, args.name)
    version = registry.datasets.resolve(args.name, args.ref)
    directory = registry.datasets.pull(args.name, version)
    if args.to:
        shutil.copytree(directory, Path(args.to), dirs_exist_ok=True)
        directory = Path(args.to)
    print(directory)


def cmd_dataset_validate(registry: ModelRegistry, args) -> None:
    from registry import verify_directory

    datasets = registry.datasets
    _known(datasets, args.name)
    version = datasets.resolve(args.name, args.ref)
    directory = datasets.pull(args.name, version)
    verify_directory(directory)
    signed = "signature and checksums" if datasets.verify_key is not None else "checksums"
    print(f"{args.name} {version}: {signed} verified ({directory})")
    if args.name == "koi_catalogue":
        _validate_catalogue(directory, version, datasets.metadata(args.name, version))


def _validate_catalogue(directory: Path, version: str, metadata) -> None:
    """Loading checks the columns serving needs (names, dispositions, the 69 features); the rows
    and the column order must also be those the metadata records."""
    from runtimes.catalogue import Catalogue, InvalidCatalogue
    from training.catalogue import CATALOGUE_FILE

    expected = metadata.files[CATALOGUE_FILE]
    try:
        catalogue = Catalogue.load(directory, version)
    except InvalidCatalogue as e:
        raise RegistryError(f"koi_catalogue {version} does not load: {e}") from None
    columns = ["kepoi_name", "kepid", "kepler_name", *catalogue.disposition_columns, *catalogue.feature_names]
    if columns != expected.columns or len(catalogue) != expected.rows:
        raise RegistryError(f"koi_catalogue {version}: {len(catalogue)} rows x {len(columns)} columns, but its "
                            f"metadata records {expected.rows} rows x {len(expected.columns)} columns")
    if metadata.model_extra.get("current_disposition") != catalogue.current_disposition:
        raise RegistryError(f"koi_catalogue {version}: the current disposition is {catalogue.current_disposition}, "
                            f"its metadata says {metadata.model_extra.get('current_disposition')}")
    print(f"koi_catalogue {version}: loads; {len(catalogue)} KOIs x {len(columns)} columns as its metadata records, "
          f"{len(catalogue.candidates())} candidates by {catalogue.current_disposition}")


def cmd_dataset_publish(registry: ModelRegistry, args) -> None:
    from training.catalogue import publish_catalogue

    publish_catalogue(registry, args.version)


def cmd_keygen(registry: ModelRegistry | None, args) -> None:
    from registry.signing import generate_keypair

    generate_keypair(Path(args.private), Path(args.public))
    print(f"private key: {args.private} (mode 600), public key: {args.public}")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="kepler-registry",
                                   description="Inspect and manage the model registry and its datasets.")
    root.add_argument("--registry", help="registry URI: a directory, file:///path or s3://bucket/prefix "
                                         "(default: $KEPLER_REGISTRY_URI or ~/.kepler-serve/registry)")
    root.add_argument("--endpoint-url", help="S3-compatible endpoint URL (default: $KEPLER_S3_ENDPOINT_URL)")
    root.add_argument("--signing-key", help="Ed25519 private key (PEM) to sign what is published "
                                            "(default: $KEPLER_SIGNING_KEY)")
    root.add_argument("--verify-key", help="Ed25519 public key (PEM): refuse unsigned or wrongly signed versions "
                                           "(default: $KEPLER_VERIFY_KEY)")
    verbs = root.add_subparsers(dest="verb", required=True)

    def verb(name, handler, help_text, *arguments):
        sub = verbs.add_parser(name, help=help_text)
        for names, options in arguments:
            sub.add_argument(*names, **options)
        sub.set_defaults(handler=handler)

    name = (("name",), {"help": "model name, e.g. xgboost"})
    ref = (("ref",), {"help": "a version (1.0.0) or an alias (stable, latest)"})
    version = (("version",), {"help": "a semantic version, e.g. 1.1.0"})
    verb("list", cmd_list, "models, versions, metrics and aliases", (("name",), {"nargs": "?"}))
    verb("info", cmd_info, "a version's metadata as JSON", name, ref)
    verb("compare", cmd_compare, "two versions' test metrics side by side", name, (("a",), {}), (("b",), {}))
    verb("report", cmd_report, "every version's test metrics as a Markdown table",
         (("--plot",), {"help": "also write a bar chart (PNG) here"}))
    verb("validate", cmd_validate, "verify checksums, load the model and predict", name, ref)
    verb("register", cmd_register, "publish a directory as a new version", name, version, (("directory",), {}))
    verb("promote", cmd_promote, "move an alias to a version", name, version,
         (("--alias",), {"default": "stable"}))
    verb("archive", cmd_archive, "hide a version from listings (it stays readable)", name, version)
    verb("pull", cmd_pull, "download and verify a version into the local cache", name, ref,
         (("--dest",), {"help": "also copy it here"}))
    verb("keygen", cmd_keygen, "make an Ed25519 key pair for signing versions",
         (("private",), {"help": "where to write the private key (keep it with the publisher only)"}),
         (("public",), {"help": "where to write the public key (give it to serving nodes)"}))
    verb("push", cmd_push, "copy versions and aliases to another registry", (("names",), {"nargs": "*"}),
         (("--to",), {"required": True, "help": "target registry URI"}),
         (("--to-endpoint-url",), {"help": "target's S3-compatible endpoint URL"}))
    dataset = (("name",), {"help": "dataset name, e.g. koi_catalogue"})
    verb("datasets", cmd_datasets, "datasets, versions, row counts and aliases")
    verb("dataset-pull", cmd_dataset_pull, "download and verify a dataset version into the local cache", dataset,
         ref, (("--to",), {"help": "also copy it here"}))
    verb("dataset-validate", cmd_dataset_validate, "verify a dataset version (and load the KOI catalogue)",
         dataset, ref)
    verb("dataset-publish", cmd_dataset_publish, "build and publish the KOI catalogue from the bundled data "
         "(skipped if published)", (("--version",), {"default": "1.0.0", "help": "catalogue version"}))
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        registry = None if args.verb == "keygen" else RegistryConfig.from_env(
            uri=args.registry, endpoint_url=args.endpoint_url, signing_key=args.signing_key,
            verify_key=args.verify_key).open()
        args.handler(registry, args)
    except InvalidName as e:
        print(f"kepler-registry: {e}", file=sys.stderr)
        return 2
    except (RegistryError, KeyError, OSError) as e:
        print(f"kepler-registry: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Validate every Kubernetes manifest of the repository, offline.

Built-in kinds are checked with kubernetes-validate, which bundles the Kubernetes OpenAPI schemas
(no network at validation time), in strict mode: an unknown field is an error, as `kubectl apply`'s
server-side field validation makes it. Kinds defined by a CRD are checked against the
openAPIV3Schema of the CRDs in manifests/crds/ (generated from the Rust types by crdgen), also
rejecting unknown fields unless the schema preserves them. A kind that neither knows is an error.

Usage: scripts/validate-manifests.py [--kubernetes-version 1.33.0] [PATH ...]
"""

import argparse
import copy
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_PATHS = [
    "manifests/crds",
    "manifests/deploy",
    "manifests/examples/seed",
    "manifests/examples/local",
    "manifests/examples/current",
    "manifests/examples/upstream",
]


def yaml_files(paths):
    for path in paths:
        path = pathlib.Path(path)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        else:
            yield path


def documents(path):
    with open(path, encoding="utf-8") as f:
        for index, doc in enumerate(yaml.safe_load_all(f), start=1):
            if doc is not None:
                yield index, doc


def to_json_schema(schema):
    """An OpenAPI v3 structural schema as strict JSON Schema (draft 7)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return node
        for key in ("properties", "patternProperties", "definitions"):
            if key in node:
                node[key] = {k: walk(v) for k, v in node[key].items()}
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                node[key] = walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            if key in node:
                node[key] = [walk(v) for v in node[key]]
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
        if node.get("type") == "object" and "properties" in node and not preserve:
            node.setdefault("additionalProperties", False)
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        for key in list(node):
            if key.startswith("x-kubernetes-"):
                del node[key]
        return node

    return walk(schema)


def load_crds(directory):
    crds = {}
    for path in yaml_files([directory]):
        for _, doc in documents(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                root = to_json_schema(schema)
                # apiVersion, kind and metadata are the API server's, not the CRD's.
                for key in ("apiVersion", "kind", "metadata"):
                    root.setdefault("properties", {})[key] = {}
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                crds[key] = jsonschema.Draft7Validator(root)
    return crds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.33.0")
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args()
    paths = args.paths or [ROOT / p for p in DEFAULT_PATHS]
    crds = load_crds(ROOT / "manifests/crds")
    failures = 0
    checked = 0
    for path in yaml_files(paths):
        for index, doc in documents(path):
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            where = f"{shown}, document {index}"
            api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            name = (doc.get("metadata") or {}).get("name", "")
            label = f"{where}: {kind} {name}"
            checked += 1
            if not isinstance(name, str) or not name:
                print(f"error: {label}: metadata.name is required")
                failures += 1
                continue
            validator = crds.get((api_version, kind))
            if validator is not None:
                errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
                for error in errors:
                    field = ".".join(str(p) for p in error.path) or "(object)"
                    print(f"error: {label}: {field}: {error.message}")
                failures += len(errors)
                continue
            try:
                kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                print(f"error: {label}: no schema for {api_version} {kind} (not built in, no CRD in manifests/crds)")
                failures += 1
            except kubernetes_validate.ValidationError as error:
                field = ".".join(str(p) for p in error.path) or "(object)"
                print(f"error: {label}: {field}: {error.message}")
                failures += 1
    print(f"{checked} manifests checked against Kubernetes {args.kubernetes_version} and {len(crds)} CRD versions: {failures} error(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

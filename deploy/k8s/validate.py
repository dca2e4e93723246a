"""Builds the kustomize base and every overlay and validates the result offline.

``python -m deploy.k8s.validate``: each build (``kubectl kustomize``, else a standalone
``kustomize``) is split into its resources; Kubernetes' own kinds are checked strictly against
the schemas that ``kubernetes-validate`` ships for ``KUBERNETES_VERSION``, custom resources
against the ``openAPIV3Schema`` of their CRD in deploy/k8s/crds/ (made strict the same way: a
field the schema does not name is an error). A kind with no schema is an error too.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CRDS = HERE / "crds"
KUBERNETES_VERSION = "1.32.0"


def builds() -> list[Path]:
    """The base and every overlay: each directory that holds a kustomization.yaml."""
    return [HERE / "base", *sorted(p.parent for p in (HERE / "overlays").glob("*/kustomization.yaml"))]


def kustomize(directory: Path) -> str:
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    else:
        raise SystemExit("neither kubectl nor kustomize found (go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1)")
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever it lists properties and keeps no
    unknown fields (what the API server would prune is an error here)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON schema, for every served version of every CRD kept here."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                    schemas[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return schemas


def problems(text: str, schemas: dict[tuple[str, str], dict[str, Any]]) -> Iterator[str]:
    for document in yaml.safe_load_all(text):
        if not document:
            continue
        where = f"{document.get('kind')} {document.get('metadata', {}).get('name')}"
        schema = schemas.get((document.get("apiVersion"), document.get("kind")))
        if schema is not None:
            for error in jsonschema.Draft7Validator(schema).iter_errors(document):
                yield f"{where}: {'/'.join(map(str, error.absolute_path))}: {error.message}"
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            yield f"{where}: {'/'.join(map(str, error.path))}: {error.message}"
        except kubernetes_validate.SchemaNotFoundError:
            yield f"{where}: no schema for {document.get('apiVersion')} {document.get('kind')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    schemas = crd_schemas()
    failed = False
    for directory in builds():
        text = kustomize(directory)
        found = list(problems(text, schemas))
        count = sum(1 for d in yaml.safe_load_all(text) if d)
        name = directory.relative_to(HERE)
        print(f"{name}: {count} resources, {'valid' if not found else f'{len(found)} problems'}")
        for problem in found:
            print(f"  {problem}")
        failed = failed or bool(found)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

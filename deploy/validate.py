#!/usr/bin/env python3
"""Validates rendered manifests offline: built-in kinds against the Kubernetes OpenAPI schemas
(PyPI kubernetes-validate, strict: unknown fields are errors), Knative kinds against Knative's
published API models (PyPI cloudcoil-models-knative-serving / -eventing). The CRD is checked by
the Rust tests. Usage: kubectl kustomize deploy/overlays/X | deploy/validate.py -
Exits 1 and names every object that fails; prints one line per object."""
import sys
import warnings

import yaml

warnings.filterwarnings("ignore")
import kubernetes_validate  # noqa: E402

KUBERNETES = "1.33.0"


def knative_model(api_version, kind):
    group, version = api_version.split("/")
    package = {
        "serving.knative.dev": "cloudcoil.models.knative_serving.serving",
        "eventing.knative.dev": "cloudcoil.models.knative_eventing.eventing",
        "sources.knative.dev": "cloudcoil.models.knative_eventing.sources",
        "messaging.knative.dev": "cloudcoil.models.knative_eventing.messaging",
    }.get(group)
    if package is None:
        return None
    module = __import__(f"{package}.{version}", fromlist=[kind])
    return getattr(module, kind, None)


def unknown_fields(data, model_json):
    """Pydantic models ignore extra fields; compare the round trip to catch them."""
    missing = []

    def walk(a, b, path):
        if isinstance(a, dict):
            for k, v in a.items():
                if not isinstance(b, dict) or k not in b:
                    missing.append(f"{path}.{k}")
                else:
                    walk(v, b[k], f"{path}.{k}")
        elif isinstance(a, list) and isinstance(b, list):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")

    walk(data, model_json, "")
    return missing


def main():
    source = sys.stdin if sys.argv[1:] in ([], ["-"]) else open(sys.argv[1])
    failed = 0
    for doc in yaml.safe_load_all(source):
        if not doc:
            continue
        api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
        model = knative_model(api, kind) if "knative.dev" in api else None
        try:
            if "knative.dev" in api:
                if model is None:
                    raise ValueError(f"no Knative model for {api} {kind}")
                obj = model.model_validate(doc)
                extra = unknown_fields(doc, obj.model_dump(mode="json", by_alias=True, exclude_none=True))
                if extra:
                    raise ValueError(f"unknown fields {extra}")
            elif kind == "CustomResourceDefinition":
                pass  # the Rust tests own the CRD
            else:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            print(f"ok      {api} {name}")
        except Exception as e:  # noqa: BLE001 - report every failure, then exit 1
            failed += 1
            print(f"INVALID {api} {name}: {str(e).splitlines()[0][:300]}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

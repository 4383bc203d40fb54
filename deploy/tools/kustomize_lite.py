#!/usr/bin/env python3
"""A small kustomize renderer for the features deploy/k8s uses, for machines without
kustomize or kubectl.

    python3 deploy/tools/kustomize_lite.py deploy/k8s/overlays/prod > rendered.yaml

Supported (and nothing else; anything unknown in a kustomization is an error):
resources (files and directories), components, namespace, labels (pairs,
includeSelectors, includeTemplates), configMapGenerator (files, envs, literals,
behavior create/merge/replace, content-hash suffix with name references updated),
patches (strategic merge, from `path` or inline `patch`, `$patch: delete`), images
(newName, newTag). deploy/validate.sh compares its output with `kubectl kustomize`
whenever kubectl is installed, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KNOWN_FIELDS = {
    "apiVersion", "kind", "resources", "components", "namespace", "labels",
    "configMapGenerator", "patches", "images",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume"}
# Strategic-merge keys of the list fields these manifests patch (from the Kubernetes
# API's patchMergeKey); other lists are replaced, as in kustomize.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort",
    "imagePullSecrets": "name", "tolerations": None, "topologySpreadConstraints": "topologyKey",
}
# Kustomize's legacy output order.
KIND_ORDER = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition",
              "ServiceAccount", "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding",
              "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange",
              "PriorityClass", "PersistentVolume", "PersistentVolumeClaim", "Deployment",
              "StatefulSet", "CronJob", "PodDisruptionBudget"]
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class KustomizeError(Exception):
    pass


class Resource:
    """One object, plus what the generator machinery needs to know about it."""

    def __init__(self, obj: dict, generated: bool = False):
        self.obj = obj
        self.generated = generated          # gets a content-hash suffix at the end
        self.original_name = obj["metadata"]["name"]

    @property
    def key(self):
        return (self.obj["kind"], self.original_name)


def load_kustomization(directory: Path) -> dict:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            unknown = set(data) - KNOWN_FIELDS
            if unknown:
                raise KustomizeError(f"{path}: fields this renderer does not support: {sorted(unknown)}")
            return data
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def within(root: Path, path: Path) -> Path:
    """Kustomize's default load restriction: files must be inside the kustomization root."""
    resolved = path.resolve()
    if root.resolve() not in (resolved, *resolved.parents):
        raise KustomizeError(f"{path} is outside the kustomization root {root}")
    return resolved


def build(directory: Path, *, top: bool = True) -> list[Resource]:
    directory = directory.resolve()
    k = load_kustomization(directory)
    resources: list[Resource] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(build(path, top=False))
        else:
            resources.extend(Resource(d) for d in load_docs(within(directory, path)))
    for entry in k.get("components", []):
        resources = apply_component(directory / entry, resources)
    resources = apply_generators(directory, k, resources)
    resources = apply_transformers(directory, k, resources)
    if top:
        resources = finalize(resources)
    return resources


def apply_component(directory: Path, resources: list[Resource]) -> list[Resource]:
    directory = directory.resolve()
    k = load_kustomization(directory)
    if k.get("kind") != "Component":
        raise KustomizeError(f"{directory}: components must be kind Component")
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(build(path, top=False))
        else:
            resources.extend(Resource(d) for d in load_docs(within(directory, path)))
    resources = apply_generators(directory, k, resources)
    return apply_transformers(directory, k, resources)


def read_env_file(path: Path) -> dict[str, str]:
    data = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise KustomizeError(f"{path}: not KEY=VALUE: {line!r}")
        key, value = line.split("=", 1)
        data[key] = value
    return data


def apply_generators(directory: Path, k: dict, resources: list[Resource]) -> list[Resource]:
    for gen in k.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for f in gen.get("files", []):
            key, _, src = f.partition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = within(directory, directory / src).read_text()
        for f in gen.get("envs", []):
            data.update(read_env_file(within(directory, directory / f)))
        for lit in gen.get("literals", []):
            key, value = lit.split("=", 1)
            data[key] = value
        unknown = set(gen) - {"name", "files", "envs", "literals", "behavior"}
        if unknown:
            raise KustomizeError(f"configMapGenerator {gen.get('name')}: unsupported {sorted(unknown)}")
        behavior = gen.get("behavior", "create")
        existing = [r for r in resources if r.key == ("ConfigMap", gen["name"])]
        if behavior == "create":
            if existing:
                raise KustomizeError(f"ConfigMap {gen['name']} exists already (use behavior: merge)")
            obj = {"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": gen["name"]}, "data": data}
            resources.append(Resource(obj, generated=True))
        else:
            if len(existing) != 1:
                raise KustomizeError(f"ConfigMap {gen['name']}: behavior {behavior} needs one in the base")
            target = existing[0]
            if behavior == "merge":
                target.obj.setdefault("data", {}).update(data)
            elif behavior == "replace":
                target.obj["data"] = data
            else:
                raise KustomizeError(f"unknown behavior {behavior}")
    return resources


def strategic_merge(base, patch, field: str | None = None):
    if isinstance(patch, dict) and isinstance(base, dict):
        out = dict(base)
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(patch, list) and isinstance(base, list) and MERGE_KEYS.get(field):
        # kustomize's (kyaml's) order: the patch's items first, in the patch's order (each
        # merged into its match), then the base's items the patch does not name.
        key = MERGE_KEYS[field]
        rest = [copy.deepcopy(item) for item in base]
        out = []
        for item in patch:
            match = next((i for i, b in enumerate(rest) if isinstance(b, dict) and b.get(key) == item.get(key)), None)
            if item.get("$patch") == "delete":
                if match is not None:
                    rest.pop(match)
            elif match is None:
                out.append(copy.deepcopy(item))
            else:
                out.append(strategic_merge(rest.pop(match), item, None))
        return out + rest
    return copy.deepcopy(patch)


def matches(resource: Resource, patch: dict) -> bool:
    group = lambda api: api.split("/")[0] if "/" in api else ""  # noqa: E731
    return (resource.obj["kind"] == patch.get("kind")
            and resource.original_name == patch.get("metadata", {}).get("name")
            and group(resource.obj.get("apiVersion", "")) == group(patch.get("apiVersion", "")))


def apply_transformers(directory: Path, k: dict, resources: list[Resource]) -> list[Resource]:
    for entry in k.get("patches", []):
        unknown = set(entry) - {"path", "patch"}
        if unknown:
            raise KustomizeError(f"patch {entry}: only `path` and `patch` are supported, not {sorted(unknown)}")
        if "path" in entry:
            docs = load_docs(within(directory, directory / entry["path"]))
        else:
            docs = [d for d in yaml.safe_load_all(entry["patch"]) if d]
        for patch in docs:
            targets = [r for r in resources if matches(r, patch)]
            if not targets:
                raise KustomizeError(f"patch for {patch.get('kind')}/{patch.get('metadata', {}).get('name')} matches nothing")
            for r in targets:
                if patch.get("$patch") == "delete":
                    resources.remove(r)
                else:
                    r.obj = strategic_merge(r.obj, patch)
    if "namespace" in k:
        for r in resources:
            if r.obj["kind"] not in CLUSTER_SCOPED:
                r.obj["metadata"]["namespace"] = k["namespace"]
    for entry in k.get("labels", []):
        pairs = {str(a): str(b) for a, b in entry.get("pairs", {}).items()}
        for r in resources:
            r.obj["metadata"].setdefault("labels", {}).update(pairs)
            spec = r.obj.get("spec", {})
            if entry.get("includeSelectors"):
                if "selector" in spec:
                    sel = spec["selector"]
                    (sel.setdefault("matchLabels", {}) if r.obj["kind"] != "Service" else sel).update(pairs)
            if entry.get("includeSelectors") or entry.get("includeTemplates"):
                if "template" in spec:
                    spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    for image in k.get("images", []):
        for r in resources:
            pod = r.obj.get("spec", {}).get("template", {}).get("spec", {})
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                name = c.get("image", "").split("@")[0]
                name = name.rsplit(":", 1)[0] if ":" in name.split("/")[-1] else name
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}" if "newTag" in image \
                        else image.get("newName", image["name"])
    return resources


def config_map_hash(obj: dict) -> str:
    """Kustomize's content hash of a ConfigMap: sha256 over Go's json.Marshal of
    {"data", "kind", "name"} (keys sorted, `<>&` and U+2028/9 escaped as Go does; the
    name is empty at the time kustomize hashes), the first ten hex digits with vowels and
    ambiguous digits swapped for consonants."""
    encoded = {"data": dict(sorted(obj.get("data", {}).items())), "kind": "ConfigMap", "name": ""}
    if obj.get("binaryData"):
        encoded["binaryData"] = dict(sorted(obj["binaryData"].items()))
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def finalize(resources: list[Resource]) -> list[Resource]:
    renames = {}
    for r in resources:
        if r.generated:
            new = f"{r.original_name}-{config_map_hash(r.obj)}"
            r.obj["metadata"]["name"] = new
            renames[r.original_name] = new
    for r in resources:
        pod = r.obj.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        for v in pod.get("volumes", []):
            if "configMap" in v and v["configMap"].get("name") in renames:
                v["configMap"]["name"] = renames[v["configMap"]["name"]]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef and ef["configMapRef"].get("name") in renames:
                    ef["configMapRef"]["name"] = renames[ef["configMapRef"]["name"]]
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref.get("name") in renames:
                    ref["name"] = renames[ref["name"]]

    def order(r: Resource):
        kind = r.obj["kind"]
        if kind in KIND_ORDER:
            rank = KIND_ORDER.index(kind)
        elif kind in ORDER_LAST:
            rank = 1000 + ORDER_LAST.index(kind)
        else:
            rank = len(KIND_ORDER)
        return (rank, kind, r.obj["metadata"].get("namespace", ""), r.obj["metadata"]["name"])

    return sorted(resources, key=order)


def render(directory: str | Path) -> list[dict]:
    return [r.obj for r in build(Path(directory))]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[3], file=sys.stderr)
        return 2
    try:
        docs = render(argv[1])
    except (KustomizeError, OSError, yaml.YAMLError) as e:
        print(f"kustomize_lite: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=True, default_flow_style=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Semantic checks of gamestream's deployment files, run by deploy/validate.sh.

    check_deploy.py render  OUT   render every kustomization to OUT/*.yaml (kubectl
                                  kustomize when installed, else kustomize_lite; both
                                  and compared when kubectl is there)
    check_deploy.py prepare OUT   write inputs for promtool: the dashboard's queries
                                  as a rule file, the k8s scrape config without its
                                  kubernetes_sd block (Debian's promtool lacks k8s SD),
                                  the PrometheusRule's rules as a plain rule file
    check_deploy.py check   OUT   everything else (below); exit 1 on any problem
    check_deploy.py prometheusrule [--write]
                                  compare components/prometheusrule/prometheusrule.yaml
                                  with what alerts.yml generates (exit 1 if they differ);
                                  --write regenerates it

`check` verifies, against the code rather than against a copy of it:
  * every env var the manifests and compose set is one gamestream reads (CONTRACT_ENV
    from src/config/mod.rs, the OTEL_*/RUST_LOG list, GAMESTREAM_<SECTION>__<KEY> for keys
    of config/default.toml), with a value of the right type; the config files use only
    known keys; with GAMESTREAM_BIN, the binary itself loads each config + env set;
  * probes and ports: /health and /ready exist as routes, probes and healthchecks use
    them on the port the daemon listens on; the healthcheck scripts work (run against a
    stub server);
  * Kubernetes wiring: namespace, labels, selectors, HPA target, Service ports (the
    CONTRACT's event-ingestion:8080 too), secrets' keys, securityContext, grace period
    vs shutdown.grace_period, identical env in the init containers; CA files on mounted
    secret keys, and TLS everywhere in prod; the KEDA ScaledObject (instead of the HPA,
    never both): target, CONTRACT consumer groups and topic, TriggerAuthentication
    secrets, the env it reads bootstrap servers from;
  * compose wiring: depends_on, volumes, mounts, build context, ports, grace period;
  * the dashboard: structure, and that every metric it queries is registered in the
    code (src/ and local branches) and listed in observability/dashboard-metrics.txt;
  * the alert rules: the PrometheusRule is alerts.yml's rules exactly; each alert has a
    severity, summary, description and a runbook anchor; alerts_test.yml has a firing
    and a quiet case for each; every metric they use is registered in the code (or
    listed in observability/pending-metrics.txt).

Settings the daemon does not read yet (deploy/tools/pending-settings.txt) are warnings
rather than errors, like pending metrics; listing one the daemon reads is an error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kustomize_lite  # noqa: E402

DEPLOY = Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent
K8S = DEPLOY / "k8s"
OBS = DEPLOY / "observability"
NAMESPACE = "gamemetrics"
POD_LABELS = {"app": "gamestream", "component": "consumer"}
KAFKA_SECRET = "kafka-credentials"
KAFKA_SECRET_KEYS = {"bootstrap-servers", "username", "password"}
KAFKA_SECRET_ENV = {"KAFKA_BOOTSTRAP_SERVERS": "bootstrap-servers", "KAFKA_USERNAME": "username",
                    "KAFKA_PASSWORD": "password"}
# Read by gamestream outside config.rs: the tracing filter and the OpenTelemetry standard.
EXTRA_ENV = {
    "RUST_LOG": None,
    "OTEL_EXPORTER_OTLP_ENDPOINT": None,
    "OTEL_EXPORTER_OTLP_PROTOCOL": {"grpc", "http/protobuf"},
    "OTEL_SERVICE_NAME": None,
    "OTEL_TRACES_SAMPLER": {"always_on", "always_off", "traceidratio", "parentbased_always_on",
                            "parentbased_always_off", "parentbased_traceidratio"},
    "OTEL_TRACES_SAMPLER_ARG": None,
}
ENUMS = {
    "mode": {"all", "ingest", "consume"},
    "kafka.security_protocol": {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL",
                                "plaintext", "ssl", "sasl_plaintext", "sasl_ssl"},
    "postgres.sslmode": {"disable", "prefer", "require", "verify-ca", "verify-full"},
    "producer.compression": {"none", "gzip", "snappy", "lz4", "zstd"},
    "telemetry.log_format": {"text", "json"},
}
DURATION = re.compile(r"^\s*\d+(\.\d+)?\s*(ns|us|µs|ms|s|sec|secs|m|min|mins|h|hr|hrs|d|day|days|w|week|weeks)\s*$")
RENDER_TARGETS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
# Rendered as extra targets: prod plus each optional component.
COMPONENT_TARGETS = {
    "prod-servicemonitor": (K8S / "overlays" / "prod", [K8S / "components" / "servicemonitor"]),
    "prod-prometheusrule": (K8S / "overlays" / "prod", [K8S / "components" / "prometheusrule"]),
    "prod-keda": (K8S / "overlays" / "prod", [K8S / "components" / "keda"]),
}
ALERTS = OBS / "prometheus" / "alerts.yml"
ALERTS_TEST = OBS / "prometheus" / "alerts_test.yml"
PROMETHEUS_RULE = K8S / "components" / "prometheusrule" / "prometheusrule.yaml"
PENDING_SETTINGS = DEPLOY / "tools" / "pending-settings.txt"
# CONTRACT: the old consumers' groups (KEDA reads their lag) and the Services clients use.
CONSUMER_GROUPS = {"event-logger-group", "stats-aggregator-group", "leaderboard-manager-group"}
SERVICE_PORTS = {"gamestream": 80, "event-ingestion": 8080}
# Settings that name a CA file the daemon reads.
CA_FILE_SETTINGS = {"postgres.ssl_root_cert", "kafka.ca_file", "redis.ca_file"}
# Series Prometheus makes itself.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                "unless", "offset", "inf", "nan", "le"}


class Problems:
    def __init__(self):
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.passed: list[str] = []

    def error(self, msg):
        self.errors.append(msg)

    def warn(self, msg):
        if msg not in self.warnings:
            self.warnings.append(msg)

    def ok(self, msg):
        self.passed.append(msg)

    def check(self, cond, msg):
        if not cond:
            self.error(msg)
        return cond


# ------------------------------------------------------------------ the code ---

def config_defaults() -> dict[str, object]:
    """Leaf settings of config/default.toml, dotted, with their default values."""
    data = tomllib.loads((REPO / "config" / "default.toml").read_text())
    out = {}

    def walk(prefix, node):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                walk(path, value)
            else:
                out[path] = value
    walk("", data)
    return out


def config_source() -> str:
    """The module that defines CONTRACT_ENV and ENV_PREFIX (src/config/mod.rs since the
    configuration became a folder; src/config.rs before)."""
    for path in (REPO / "src" / "config" / "mod.rs", REPO / "src" / "config.rs"):
        if path.exists():
            return path.read_text()
    raise SystemExit("src/config/mod.rs: not found")


def contract_env() -> dict[str, str]:
    text = config_source()
    block = re.search(r"CONTRACT_ENV:[^=]*=\s*&\[(.*?)\];", text, re.S)
    if not block:
        raise SystemExit("src/config/mod.rs: CONTRACT_ENV not found")
    return dict(re.findall(r'\(\s*"([A-Z0-9_]+)"\s*,\s*"([a-z0-9_.]+)"\s*\)', block.group(1)))


def env_prefix() -> str:
    m = re.search(r'ENV_PREFIX:\s*&str\s*=\s*"([^"]+)"', config_source())
    return m.group(1) if m else "GAMESTREAM_"


METRIC_MACRO = re.compile(r'\b(?:describe_)?(counter|gauge|histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')


def code_metrics() -> tuple[dict[str, set[str]], list[str]]:
    """Series names each registered metric exposes, from the working tree's src/ and
    every local branch (DEPLOY_METRIC_REFS overrides the refs), as {name: {where}}."""
    found: dict[str, set[str]] = {}
    sources = []

    def add(text, where):
        for kind, name in METRIC_MACRO.findall(text):
            names = [name] + ([f"{name}_bucket", f"{name}_sum", f"{name}_count"] if kind == "histogram" else [])
            for n in names:
                found.setdefault(n, set()).add(where)

    for path in sorted((REPO / "src").rglob("*.rs")):
        add(path.read_text(errors="replace"), "worktree")
    sources.append("worktree src/")
    refs = os.environ.get("DEPLOY_METRIC_REFS")
    if refs is None:
        try:
            refs = subprocess.run(["git", "-C", str(REPO), "for-each-ref", "--format=%(refname:short)", "refs/heads"],
                                  capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            refs = ""
    for ref in refs.split():
        try:
            out = subprocess.run(["git", "-C", str(REPO), "grep", "-h", "-A2", "-E",
                                  r"(counter|gauge|histogram)!\(", ref, "--", "src"],
                                 capture_output=True, text=True).stdout
        except OSError:
            continue
        # Macros split over lines: join each match with the lines after it.
        add(re.sub(r"\(\s*\n\s*", "(", out), ref)
        sources.append(ref)
    return found, sources


def http_routes() -> set[str]:
    routes = set()
    for path in (REPO / "src" / "http").rglob("*.rs"):
        text = path.read_text()
        routes |= {f"/{p}" for p in re.findall(r'path!\(\s*"([a-z0-9_-]+)"\s*\)', text)}
        routes |= set(re.findall(r'path:\s*"(/[a-z0-9_/-]+)"', text))
    return routes


def dockerfile_user() -> str | None:
    users = re.findall(r"^USER\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    return users[-1] if users else None


# ----------------------------------------------------------------- rendering ---

def render_all(out: Path, p: Problems) -> dict[str, list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    kubectl = shutil.which("kubectl")
    kustomize = shutil.which("kustomize")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        targets = dict(RENDER_TARGETS)
        # An overlay + optional components: a kustomization outside the tree using both.
        for name, (overlay, components) in COMPONENT_TARGETS.items():
            comp_dir = Path(tmp) / name
            comp_dir.mkdir()
            (comp_dir / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [os.path.relpath(overlay, comp_dir)],
                "components": [os.path.relpath(c, comp_dir) for c in components]}))
            targets[name] = comp_dir
        for name, directory in targets.items():
            try:
                lite = kustomize_lite.render(directory)
            except Exception as e:  # noqa: BLE001 - report whatever the renderer hit
                p.error(f"render {name}: kustomize_lite: {e}")
                continue
            docs = lite
            tool = "kustomize_lite"
            real_cmd = [kubectl, "kustomize", str(directory)] if kubectl else \
                [kustomize, "build", str(directory)] if kustomize else None
            if real_cmd:
                r = subprocess.run(real_cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    p.error(f"render {name}: {' '.join(real_cmd[:2])} failed: {r.stderr.strip()}")
                    continue
                real = [d for d in yaml.safe_load_all(r.stdout) if d]
                tool = Path(real_cmd[0]).name
                if real != lite:
                    p.error(f"render {name}: kustomize_lite and {tool} disagree (fix tools/kustomize_lite.py)")
                docs = real
            (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=True))
            results[name] = docs
            p.ok(f"rendered {name} with {tool}" + (" (kustomize_lite agrees)" if real_cmd else "")
                 + f": {len(docs)} objects")
    if not kubectl and not kustomize:
        p.warn("neither kubectl nor kustomize installed: rendered with kustomize_lite only")
    return results


def load_rendered(out: Path) -> dict[str, list[dict]]:
    return {f.stem: [d for d in yaml.safe_load_all(f.read_text()) if d] for f in sorted(out.glob("*.yaml"))
            if f.stem in RENDER_TARGETS or f.stem in COMPONENT_TARGETS}


# --------------------------------------------------------------- env checks ---

def pending_settings() -> dict[str, str]:
    """pending-settings.txt: env var -> the setting it will set, for settings the daemon
    does not read yet."""
    out = {}
    for line in PENDING_SETTINGS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, setting = line.partition(" ")
            out[name] = setting.strip()
    return out


class EnvRules:
    def __init__(self):
        self.defaults = config_defaults()
        self.contract = contract_env()
        self.prefix = env_prefix()
        self.pending = pending_settings()

    def reads(self, name: str) -> bool:
        setting = self.setting_of(name)
        return setting is not None and setting in self.defaults

    def check_pending(self, p: Problems):
        for name, setting in self.pending.items():
            ok = re.fullmatch(r"[A-Z][A-Z0-9_]*", name) is not None and re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", setting)
            p.check(ok, f"pending-settings.txt: `{name} {setting}` is not `ENV_VAR section.key`")
            if name.startswith(self.prefix):
                p.check(self.setting_of(name) == setting,
                        f"pending-settings.txt: {name} would set `{self.setting_of(name)}`, not `{setting}`")
            p.check(not self.reads(name), f"pending-settings.txt: gamestream reads {name} now; remove it from the list")

    def setting_of(self, name: str) -> str | None:
        if name in self.contract:
            return self.contract[name]
        if name.startswith(self.prefix):
            return name[len(self.prefix):].lower().replace("__", ".")
        return None

    def check(self, name: str, value: str | None, where: str, p: Problems):
        """value None: comes from a secret or elsewhere; only the name is checked."""
        if name in EXTRA_ENV:
            allowed = EXTRA_ENV[name]
            if value is not None and allowed and value not in allowed:
                p.error(f"{where}: {name}={value!r} is not one of {sorted(allowed)}")
            if name == "OTEL_TRACES_SAMPLER_ARG" and value is not None:
                try:
                    ok = 0.0 <= float(value) <= 1.0
                except ValueError:
                    ok = False
                p.check(ok, f"{where}: OTEL_TRACES_SAMPLER_ARG={value!r} is not a ratio in [0, 1]")
            if name == "OTEL_EXPORTER_OTLP_ENDPOINT" and value is not None:
                p.check(re.match(r"^https?://[^/:]+:\d+/?$", value) is not None,
                        f"{where}: OTEL_EXPORTER_OTLP_ENDPOINT={value!r} is not http(s)://host:port")
            return
        setting = self.setting_of(name)
        if name in self.pending and not self.reads(name):
            p.warn(f"{name} (`{self.pending[name]}`) is set but gamestream does not read it yet "
                   "(pending-settings.txt)")
            return
        if setting is None:
            p.error(f"{where}: {name} is not read by gamestream (not in CONTRACT_ENV, not "
                    f"{self.prefix}<SECTION>__<KEY>, not OTEL_*/RUST_LOG)")
            return
        if setting not in self.defaults:
            p.error(f"{where}: {name} sets `{setting}`, which config/default.toml does not have")
            return
        if value is not None:
            self.check_value(setting, value, f"{where}: {name}", p, from_env=True)

    def check_value(self, setting: str, value, where: str, p: Problems, from_env: bool):
        default = self.defaults[setting]
        if isinstance(default, bool):
            ok = value in ("true", "false") if from_env else isinstance(value, bool)
            p.check(ok, f"{where}={value!r}: `{setting}` is a boolean")
        elif isinstance(default, int):
            ok = re.fullmatch(r"\d+", value) is not None if from_env else isinstance(value, int)
            p.check(ok, f"{where}={value!r}: `{setting}` is an integer")
        elif isinstance(default, list):
            ok = isinstance(value, (str, list))
            p.check(ok, f"{where}={value!r}: `{setting}` is a list (or a comma-separated string)")
        elif isinstance(default, str):
            if not isinstance(value, str):
                p.error(f"{where}={value!r}: `{setting}` is a string")
                return
            if from_env and re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|true|false", value):
                # gamestream parses env values as TOML-ish values first: "12345" becomes a
                # number and the string setting is refused (exit 2).
                p.error(f"{where}={value!r}: `{setting}` is a string, but gamestream reads this value "
                        "as a number/boolean from the environment; use a non-numeric value")
            if DURATION.match(default) and not DURATION.match(value):
                p.error(f"{where}={value!r}: `{setting}` is a duration like {default!r}")
            if setting in ENUMS and value not in ENUMS[setting]:
                p.error(f"{where}={value!r}: `{setting}` is one of {sorted(ENUMS[setting])}")

    def check_toml(self, text: str, where: str, p: Problems) -> dict:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            p.error(f"{where}: not TOML: {e}")
            return {}
        flat = {}

        def walk(prefix, node):
            for key, value in node.items():
                path = f"{prefix}.{key}" if prefix else key
                if isinstance(value, dict):
                    walk(path, value)
                else:
                    flat[path] = value
        walk("", data)
        for setting, value in flat.items():
            if setting not in self.defaults:
                p.error(f"{where}: unknown setting `{setting}` (not in config/default.toml)")
            else:
                self.check_value(setting, value, f"{where}: {setting}", p, from_env=False)
        return flat


def parse_duration(text: str) -> float:
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$", text)
    if not m:
        return float("nan")
    n, unit = float(m.group(1)), m.group(2)
    scale = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600,
             "d": 86400, "day": 86400, "days": 86400}
    return n * scale.get(unit, float("nan"))


# ------------------------------------------------------------ probe checks ---

class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        body = b'{"status":"ok"}'
        self.send_response(200 if self.path in ("/health", "/ready") else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the healthcheck hangs up after the status line

    def log_message(self, *args):
        pass


def run_healthcheck(cmd: list[str], port: int, p: Problems, where: str, expect_ok: bool):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORT": str(port)}
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=10)
        code = r.returncode
    except subprocess.TimeoutExpired:
        code = -1
    if expect_ok:
        p.check(code == 0, f"{where}: healthcheck failed against a server answering /health 200 (exit {code})")
    else:
        p.check(code != 0, f"{where}: healthcheck passed although nothing listens on port {port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- k8s checks ---

def pod_containers(dep: dict) -> list[dict]:
    spec = dep["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec.get("containers", [])


def secrets_example() -> dict[str, dict[str, str]]:
    out = {}
    for doc in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()):
        if doc and doc.get("kind") == "Secret":
            out[doc["metadata"]["name"]] = {k: str(v) for k, v in (doc.get("stringData") or {}).items()}
    return out


def container_env(c: dict, objs: dict, secrets: dict, where: str, p: Problems) -> dict[str, str | None]:
    """The environment a container gets: name -> literal value (None: from a secret)."""
    env: dict[str, str | None] = {}
    for ef in c.get("envFrom", []):
        if "configMapRef" in ef:
            cm = objs.get(("ConfigMap", ef["configMapRef"]["name"]))
            if not p.check(cm is not None, f"{where}: envFrom ConfigMap {ef['configMapRef']['name']} not rendered"):
                continue
            env.update({k: str(v) for k, v in (cm.get("data") or {}).items()})
        elif "secretRef" in ef:
            name = ef["secretRef"]["name"]
            if not p.check(name in secrets, f"{where}: envFrom Secret {name} is not in secrets.example.yaml"):
                continue
            env.update({k: None for k in secrets[name]})
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref:
                s = ref["secretKeyRef"]
                if s["name"] == KAFKA_SECRET:
                    p.check(s["key"] in KAFKA_SECRET_KEYS,
                            f"{where}: {KAFKA_SECRET} has no key {s['key']!r} (CONTRACT: {sorted(KAFKA_SECRET_KEYS)})")
                    p.check(KAFKA_SECRET_ENV.get(e["name"]) == s["key"],
                            f"{where}: {e['name']} comes from {KAFKA_SECRET}/{s['key']}")
                else:
                    p.check(s["name"] in secrets and s["key"] in secrets[s["name"]],
                            f"{where}: secret {s['name']}/{s['key']} is not in secrets.example.yaml")
            elif "configMapKeyRef" in ref:
                cm = objs.get(("ConfigMap", ref["configMapKeyRef"]["name"]))
                if cm is not None:
                    env[e["name"]] = str(cm["data"][ref["configMapKeyRef"]["key"]])
                    continue
            env[e["name"]] = None
    return env


def check_k8s(rendered: dict[str, list[dict]], rules: EnvRules, routes: set[str], p: Problems,
              binary_runs: list):
    secrets = secrets_example()
    for key in secrets.get(KAFKA_SECRET, {}):
        p.check(key in KAFKA_SECRET_KEYS, f"secrets.example.yaml: {KAFKA_SECRET} key {key!r} is not a CONTRACT key")
    uid = dockerfile_user()
    for name, docs in rendered.items():
        w = f"k8s/{name}"
        objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        kinds = {d["kind"] for d in docs}
        for d in docs:
            if d["kind"] != "Namespace":
                p.check(d["metadata"].get("namespace") == NAMESPACE,
                        f"{w}: {d['kind']}/{d['metadata']['name']} not in namespace {NAMESPACE}")
        p.check(("Namespace", NAMESPACE) in objs, f"{w}: no Namespace {NAMESPACE}")
        deps = [d for d in docs if d["kind"] == "Deployment"]
        if not p.check(len(deps) == 1, f"{w}: expected one Deployment, got {len(deps)}"):
            continue
        dep = deps[0]
        tmpl = dep["spec"]["template"]
        pod_labels = tmpl["metadata"].get("labels", {})
        for k, v in POD_LABELS.items():
            p.check(pod_labels.get(k) == v, f"{w}: pod template label {k}={v} missing")
            p.check(dep["metadata"].get("labels", {}).get(k) == v, f"{w}: Deployment label {k}={v} missing")
        sel = dep["spec"]["selector"].get("matchLabels", {})
        p.check(sel and all(pod_labels.get(k) == v for k, v in sel.items()), f"{w}: selector does not match pods")
        for kind in ("Service", "PodDisruptionBudget", "ServiceMonitor"):
            for d in (d for d in docs if d["kind"] == kind):
                s = d["spec"]["selector"]
                s = s.get("matchLabels", s) if kind != "Service" else s
                p.check(s and all(pod_labels.get(k) == v for k, v in s.items()),
                        f"{w}: {kind}/{d['metadata']['name']} selector {s} does not select the pods")
        p.check("PodDisruptionBudget" in kinds, f"{w}: no PodDisruptionBudget")
        hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
        for h in hpas:
            ref = h["spec"]["scaleTargetRef"]
            p.check(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"],
                    f"{w}: HPA targets {ref}")
            p.check(h["apiVersion"] == "autoscaling/v2", f"{w}: HPA is not autoscaling/v2")
            p.check(1 <= h["spec"].get("minReplicas", 1) <= h["spec"]["maxReplicas"], f"{w}: HPA min > max")
            p.check(any(m.get("resource", {}).get("name") == "cpu" for m in h["spec"].get("metrics", [])),
                    f"{w}: HPA does not scale on CPU")
            p.check("replicas" not in dep["spec"], f"{w}: Deployment sets replicas although an HPA owns them")
        scaled = [d for d in docs if d["kind"] == "ScaledObject"]
        if name != "dev":
            # One autoscaler: KEDA creates an HPA of its own, and two would fight.
            p.check(len(hpas) + len(scaled) == 1,
                    f"{w}: expected one autoscaler (an HPA or a KEDA ScaledObject), got {len(hpas)} HPA(s) "
                    f"and {len(scaled)} ScaledObject(s)")
        p.check(not scaled or "replicas" not in dep["spec"],
                f"{w}: Deployment sets replicas although a ScaledObject owns them")

        spec = tmpl["spec"]
        psc = spec.get("securityContext", {})
        p.check(psc.get("runAsNonRoot") is True, f"{w}: pod securityContext.runAsNonRoot is not true")
        if uid and uid.split(":")[0].isdigit():
            p.check(str(psc.get("runAsUser")) == uid.split(":")[0],
                    f"{w}: runAsUser {psc.get('runAsUser')} differs from the image's USER {uid}")
        p.check(bool(spec.get("topologySpreadConstraints")), f"{w}: no topologySpreadConstraints")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        containers = pod_containers(dep)
        main = next((c for c in spec["containers"] if c["name"] == "gamestream"), None)
        if not p.check(main is not None, f"{w}: no container named gamestream"):
            continue
        # The same environment everywhere: every command validates the whole config.
        for c in containers:
            for field in ("env", "envFrom", "volumeMounts"):
                p.check(c.get(field) == main.get(field), f"{w}: container {c['name']} {field} differs from gamestream's")
        commands = [" ".join(a for a in c.get("args", []) if not a.startswith("--config") and not a.startswith("/"))
                    for c in containers]
        p.check(any(cmd.strip() == "migrate" for cmd in commands), f"{w}: nothing runs `gamestream migrate`")
        p.check(any(cmd.strip() == "topics create" for cmd in commands), f"{w}: nothing runs `gamestream topics create`")
        p.check(commands[-1].strip().startswith("serve"), f"{w}: main container does not run `serve`")

        # Config file: --config points into a mounted ConfigMap that has the file.
        config_text = None
        for c in containers:
            cw = f"{w}: container {c['name']}"
            sc = c.get("securityContext", {})
            p.check(sc.get("readOnlyRootFilesystem") is True, f"{cw}: root filesystem not read-only")
            p.check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation not false")
            p.check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: capabilities not drop [ALL]")
            res = c.get("resources", {})
            p.check(res.get("requests") and res.get("limits"), f"{cw}: requests and limits must be set")
            args = c.get("args", [])
            if "--config" in args:
                path = args[args.index("--config") + 1]
                mount = next((m for m in c.get("volumeMounts", [])
                              if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
                if p.check(mount is not None, f"{cw}: --config {path} is not on a mounted volume"):
                    vol = volumes.get(mount["name"], {})
                    cm = objs.get(("ConfigMap", vol.get("configMap", {}).get("name")))
                    key = path[len(mount["mountPath"].rstrip("/")) + 1:]
                    if p.check(cm is not None and key in cm.get("data", {}),
                               f"{cw}: --config {path}: no ConfigMap key {key!r} behind it"):
                        config_text = cm["data"][key]
        cfg = rules.check_toml(config_text, f"{w}: config file", p) if config_text else {}

        env = container_env(main, objs, secrets, f"{w}: gamestream env", p)
        for var, value in sorted(env.items()):
            rules.check(var, value, f"{w}: env", p)
        for var in KAFKA_SECRET_ENV:
            p.check(var in env, f"{w}: {var} not set (from {KAFKA_SECRET})")

        # Ports and probes.
        ports = {pt.get("name"): pt["containerPort"] for pt in main.get("ports", [])}
        listen = int(env.get("PORT") or cfg.get("http.port") or rules.defaults["http.port"])
        p.check(listen in ports.values(), f"{w}: daemon listens on {listen} (PORT/http.port) but containerPorts are {ports}")

        def probe_port(probe):
            port = probe["httpGet"]["port"]
            return ports.get(port) if isinstance(port, str) else port
        expected = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
        for probe_name, path in expected.items():
            probe = main.get(probe_name)
            if not p.check(probe and "httpGet" in probe, f"{w}: {probe_name} missing (httpGet)"):
                continue
            p.check(probe["httpGet"]["path"] == path, f"{w}: {probe_name} path {probe['httpGet']['path']} != {path}")
            p.check(path in routes, f"{w}: {probe_name} path {path} is not a route in src/http")
            p.check(probe_port(probe) == listen, f"{w}: {probe_name} port {probe['httpGet']['port']} != {listen}")
        ann = tmpl["metadata"].get("annotations", {})
        p.check(ann.get("prometheus.io/scrape") == "true", f"{w}: prometheus.io/scrape annotation missing")
        p.check(str(ann.get("prometheus.io/port")) == str(listen), f"{w}: prometheus.io/port != {listen}")
        p.check(ann.get("prometheus.io/path") == "/metrics" and "/metrics" in routes,
                f"{w}: prometheus.io/path is not the /metrics route")
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        for svc_name, svc_port in SERVICE_PORTS.items():
            svc = services.get(svc_name)
            p.check(svc is not None and any(sp["port"] == svc_port for sp in svc["spec"]["ports"]),
                    f"{w}: no Service {svc_name} on port {svc_port}")
        for svc in services.values():
            for sp in svc["spec"]["ports"]:
                tp = sp.get("targetPort")
                p.check(ports.get(tp) == listen if isinstance(tp, str) else tp == listen,
                        f"{w}: Service {svc['metadata']['name']} port {sp.get('name')} targets {tp}, "
                        "not the daemon's port")
        for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
            want = sm["spec"]["selector"].get("matchLabels", {})
            selected = [svc for svc in services.values()
                        if all(svc["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
            # Two Services over the same pods would scrape every pod twice.
            p.check(len(selected) == 1, f"{w}: ServiceMonitor selects {len(selected)} Services "
                    f"({[x['metadata']['name'] for x in selected]}), expected exactly one")
            for svc in selected:
                for ep in sm["spec"]["endpoints"]:
                    p.check(ep.get("port") in {sp.get("name") for sp in svc["spec"]["ports"]},
                            f"{w}: ServiceMonitor port {ep.get('port')} is not a Service port name")
                    p.check(ep.get("path", "/metrics") == "/metrics", f"{w}: ServiceMonitor path")

        # Grace period: preStop sleep + shutdown.grace_period < terminationGracePeriodSeconds.
        grace = env.get("GAMESTREAM_SHUTDOWN__GRACE_PERIOD") or cfg.get("shutdown.grace_period") \
            or rules.defaults["shutdown.grace_period"]
        pre = main.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        tgps = spec.get("terminationGracePeriodSeconds", 30)
        p.check(pre + parse_duration(grace) < tgps,
                f"{w}: terminationGracePeriodSeconds {tgps} <= preStop {pre}s + shutdown.grace_period {grace}")
        prod = name == "prod" or name.startswith("prod-")
        if prod:
            p.check(env.get("LOG_FORMAT") == "json", f"{w}: prod logs are not JSON (LOG_FORMAT)")
            p.check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"), f"{w}: prod has no OTEL_EXPORTER_OTLP_ENDPOINT")
        check_tls(w, prod, main, volumes, env, cfg, rules, secrets, p)
        for so in scaled:
            check_keda(w, so, docs, dep, main, env, cfg, rules, secrets, p)

        # What the binary itself makes of it (secret values from secrets.example.yaml).
        literal_env = {k: v for k, v in env.items() if v is not None}
        for sname, keys in secrets.items():
            for ef in main.get("envFrom", []):
                if ef.get("secretRef", {}).get("name") == sname:
                    literal_env.update(keys)
        for e in main.get("env", []):
            s = e.get("valueFrom", {}).get("secretKeyRef")
            if s and s["name"] in secrets and s["key"] in secrets[s["name"]]:
                literal_env[e["name"]] = secrets[s["name"]][s["key"]]
        binary_runs.append((w, config_text, literal_env))
        p.ok(f"{w}: {len(containers)} containers, {len(env)} env vars, probes on :{listen}")


def setting_values(env: dict[str, str | None], cfg: dict, rules: EnvRules) -> dict[str, str | None]:
    """The value of each setting as the container gets it: env over the config file over
    the defaults (None: from a secret)."""
    values: dict[str, str | None] = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in rules.defaults.items()}
    values.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in cfg.items()})
    for var, value in env.items():
        setting = rules.setting_of(var) or rules.pending.get(var)
        if setting:
            values[setting] = value
    return values


def check_tls(w: str, prod: bool, main: dict, volumes: dict, env: dict, cfg: dict, rules: EnvRules,
              secrets: dict, p: Problems):
    """CA files are keys of mounted Secrets (listed in secrets.example.yaml); prod uses TLS
    with verified certificates to Kafka, Postgres and Redis (DESIGN.md, invariant 10)."""
    values = setting_values(env, cfg, rules)
    mounts = main.get("volumeMounts", [])
    for setting in sorted(CA_FILE_SETTINGS):
        path = values.get(setting)
        if not path or path == '""':
            continue
        mount = next((m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        if not p.check(mount is not None, f"{w}: {setting} = {path} is not on a mounted volume"):
            continue
        vol = volumes.get(mount["name"], {})
        rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
        sources = [vol] if "secret" in vol else [s for s in vol.get("projected", {}).get("sources", []) if "secret" in s]
        found = None
        for src in sources:
            sec = src["secret"]
            sname = sec.get("secretName") or sec.get("name")
            items = sec.get("items")
            key = next((i["key"] for i in items if i["path"] == rel), None) if items else rel
            if key is not None:
                found = (sname, key)
        if p.check(found is not None, f"{w}: {setting} = {path}: no Secret key is mounted there"):
            sname, key = found
            p.check(key in secrets.get(sname, {}),
                    f"{w}: {setting} = {path} is Secret {sname} key {key}, which secrets.example.yaml lacks")
    if not prod:
        return
    protocol = (values.get("kafka.security_protocol") or "").upper()
    p.check(protocol in ("SSL", "SASL_SSL"), f"{w}: prod talks to Kafka without TLS ({protocol})")
    p.check(values.get("postgres.sslmode") == "verify-full",
            f"{w}: prod does not verify Postgres' certificate (sslmode {values.get('postgres.sslmode')})")
    p.check(values.get("redis.tls") == "true", f"{w}: prod talks to Redis without TLS (redis.tls)")
    for setting in sorted(CA_FILE_SETTINGS):
        p.check(values.get(setting) not in (None, "", '""'), f"{w}: prod sets no CA file ({setting})")


def check_keda(w: str, so: dict, docs: list[dict], dep: dict, main: dict, env: dict, cfg: dict,
               rules: EnvRules, secrets: dict, p: Problems):
    """The KEDA ScaledObject: what it scales, the CONTRACT groups and topic, how it logs in."""
    sw = f"{w}: ScaledObject/{so['metadata']['name']}"
    spec = so["spec"]
    ref = spec["scaleTargetRef"]
    p.check(ref.get("kind", "Deployment") == "Deployment" and ref["name"] == dep["metadata"]["name"],
            f"{sw}: targets {ref}, not the Deployment")
    p.check(ref.get("envSourceContainerName", main["name"]) == main["name"],
            f"{sw}: envSourceContainerName is not the gamestream container")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    # Never zero: the same pods serve HTTP ingest.
    p.check(1 <= lo <= hi, f"{sw}: minReplicaCount {lo} / maxReplicaCount {hi} (need 1 <= min <= max)")
    values = setting_values(env, cfg, rules)
    topic = values.get("topics.player_events")
    protocol = (values.get("kafka.security_protocol") or "").upper()
    partitions = int(values.get("topics.player_events_partitions") or 0)
    kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
    groups = [t["metadata"].get("consumerGroup") for t in kafka]
    p.check(sorted(groups) == sorted(CONSUMER_GROUPS),
            f"{sw}: kafka triggers on groups {groups}, expected the CONTRACT's {sorted(CONSUMER_GROUPS)}")
    thresholds = set()
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    for t in kafka:
        m = t["metadata"]
        tw = f"{sw}: trigger {m.get('consumerGroup')}"
        p.check(m.get("topic") == topic, f"{tw}: topic {m.get('topic')} is not {topic}")
        lag = m.get("lagThreshold", "")
        p.check(isinstance(lag, str) and lag.isdigit() and int(lag) > 0, f"{tw}: lagThreshold {lag!r} is not a positive integer string")
        thresholds.add(lag)
        p.check(m.get("allowIdleConsumers", "false") == "false", f"{tw}: allowIdleConsumers (pods beyond partitions consume nothing)")
        var = m.get("bootstrapServersFromEnv")
        p.check(var is not None or m.get("bootstrapServers"), f"{tw}: no bootstrap servers")
        if var is not None:
            p.check(var == "KAFKA_BOOTSTRAP_SERVERS" and var in env,
                    f"{tw}: bootstrapServersFromEnv {var} is not the container's KAFKA_BOOTSTRAP_SERVERS")
        sasl, tls = m.get("sasl", "none"), m.get("tls", "disable")
        p.check((tls == "enable") == (protocol in ("SSL", "SASL_SSL")),
                f"{tw}: tls {tls} does not match the daemon's security protocol {protocol}")
        p.check((sasl == "scram_sha512") == protocol.startswith("SASL_"),
                f"{tw}: sasl {sasl} does not match {protocol} (CONTRACT: SASL/SCRAM-SHA-512)")
        auth = auths.get(t.get("authenticationRef", {}).get("name"))
        if not p.check(auth is not None, f"{tw}: authenticationRef {t.get('authenticationRef')} is not rendered"):
            continue
        params = set()
        for r in auth["spec"].get("secretTargetRef", []):
            params.add(r["parameter"])
            if r["name"] == KAFKA_SECRET:
                p.check(r["key"] in KAFKA_SECRET_KEYS, f"{tw}: {KAFKA_SECRET} has no key {r['key']!r} (CONTRACT)")
            else:
                p.check(r["key"] in secrets.get(r["name"], {}),
                        f"{tw}: Secret {r['name']} key {r['key']} is not in secrets.example.yaml")
        if sasl != "none":
            p.check({"username", "password"} <= params, f"{tw}: SASL without username and password")
    p.check(len(thresholds) <= 1, f"{sw}: the kafka triggers' lagThresholds differ: {sorted(thresholds)}")
    p.check(any(t["type"] == "cpu" for t in spec["triggers"]), f"{sw}: no cpu trigger (ingest scales on CPU)")
    if partitions and lo >= partitions:
        p.warn(f"{sw}: minReplicaCount {lo} >= {partitions} partitions: the lag triggers can never add a pod")


# ------------------------------------------------------------- compose checks ---

def check_compose(rules: EnvRules, routes: set[str], p: Problems, binary_runs: list):
    path = DEPLOY / "docker-compose.yml"
    raw = path.read_text()
    c = yaml.safe_load(raw)
    services = c["services"]
    volumes = set((c.get("volumes") or {}).keys())
    for sname, svc in services.items():
        w = f"compose: {sname}"
        deps = svc.get("depends_on", {})
        for dep, cond in (deps.items() if isinstance(deps, dict) else [(d, {}) for d in deps]):
            if not p.check(dep in services, f"{w}: depends_on unknown service {dep}"):
                continue
            condition = cond.get("condition", "service_started")
            if condition == "service_healthy":
                p.check("healthcheck" in services[dep] or dep in ("gamestream", "setup"),
                        f"{w}: waits for {dep} to be healthy, but {dep} has no healthcheck")
            if condition == "service_completed_successfully":
                p.check(services[dep].get("restart", "no") == "no", f"{w}: {dep} is one-shot but restarts")
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith((".", "/")):
                p.check((DEPLOY / src).exists(), f"{w}: bind mount {src} does not exist")
            else:
                p.check(src in volumes, f"{w}: volume {src} not declared")
        if "build" in svc:
            b = svc["build"]
            ctx = (DEPLOY / b["context"]).resolve()
            p.check((ctx / b["dockerfile"]).is_file(), f"{w}: build dockerfile {b['dockerfile']} not in {ctx}")
    # gamestream and its one-shot setup.
    for sname in ("gamestream", "setup"):
        svc = services.get(sname)
        if not p.check(svc is not None, f"compose: no service {sname}"):
            continue
        env = {k: (None if v is None else str(v)) for k, v in (svc.get("environment") or {}).items()}
        for var, value in sorted(env.items()):
            if value is not None and "${" in value:
                value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)  # the default of ${VAR:-default}
            rules.check(var, value, f"compose: {sname}: environment", p)
        binary_runs.append((f"compose/{sname}", None,
                            {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in env.items() if v is not None}))
    gs = services["gamestream"]
    env = gs.get("environment", {})
    port = int(env.get("PORT", rules.defaults["http.port"]))
    p.check(any(str(m).split(":")[-1] == str(port) for m in gs.get("ports", [])),
            f"compose: gamestream publishes no port mapping to {port}")
    networks = gs.get("networks") or {}
    aliases = (networks.get("default") or {}).get("aliases", []) if isinstance(networks, dict) else []
    p.check("event-ingestion" in aliases,
            "compose: gamestream has no network alias event-ingestion (CONTRACT: clients post to event-ingestion:8080)")
    grace = parse_duration(env.get("GAMESTREAM_SHUTDOWN__GRACE_PERIOD", rules.defaults["shutdown.grace_period"]))
    p.check(parse_duration(gs.get("stop_grace_period", "10s")) > grace,
            f"compose: gamestream stop_grace_period must exceed shutdown.grace_period ({grace}s)")
    setup_cmd = " ".join(services["setup"].get("entrypoint", []) + services["setup"].get("command", []))
    p.check("gamestream migrate" in setup_cmd and "gamestream topics create" in setup_cmd,
            "compose: setup does not run migrate and topics create")
    p.check(services["gamestream"]["depends_on"].get("setup", {}).get("condition") == "service_completed_successfully",
            "compose: gamestream does not wait for setup to complete")
    otel = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    p.check(otel.startswith("http://tempo:4317"), f"compose: OTEL endpoint {otel!r} is not tempo's OTLP gRPC port")
    # Prometheus scrapes gamestream where it listens.
    prom = yaml.safe_load((OBS / "prometheus" / "prometheus.yml").read_text())
    targets = [t for j in prom["scrape_configs"] if j["job_name"] == "gamestream"
               for sc in j.get("static_configs", []) for t in sc["targets"]]
    p.check(targets == [f"gamestream:{port}"], f"prometheus.yml: gamestream target {targets} != gamestream:{port}")
    # Tempo receivers where gamestream sends.
    tempo = yaml.safe_load((OBS / "tempo" / "tempo.yaml").read_text())
    protos = tempo["distributor"]["receivers"]["otlp"]["protocols"]
    p.check(protos.get("grpc", {}).get("endpoint") == "0.0.0.0:4317", "tempo.yaml: OTLP gRPC not on 0.0.0.0:4317")
    p.check(protos.get("http", {}).get("endpoint") == "0.0.0.0:4318", "tempo.yaml: OTLP HTTP not on 0.0.0.0:4318")
    p.check(tempo["storage"]["trace"]["backend"] == "local", "tempo.yaml: storage backend is not local")
    p.check(tempo["server"]["http_listen_port"] == 3200, "tempo.yaml: query port is not 3200")
    # Grafana: provisioning mounted where Grafana reads it; dashboards where the provider looks.
    gv = services["grafana"]["volumes"]
    provider = yaml.safe_load((OBS / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml").read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    p.check(any(v.startswith("./observability/grafana/dashboards:" + dash_path) for v in gv),
            f"compose: grafana does not mount the dashboards at {dash_path}")
    p.check(any(v.startswith("./observability/grafana/provisioning:/etc/grafana/provisioning") for v in gv),
            "compose: grafana does not mount the provisioning directory")
    # Healthchecks: compose's and the Dockerfile's, run against a stub server.
    hc = gs["healthcheck"]["test"]
    cmd = [a.replace("$$", "$") for a in (hc[1:] if hc[0] == "CMD" else ["sh", "-c", hc[1]])]
    m = re.search(r"HEALTHCHECK[^\n]*\\\n\s+CMD (\[.*\])", (DEPLOY / "Dockerfile").read_text())
    docker_cmd = json.loads(m.group(1)) if p.check(m, "Dockerfile: no exec-form HEALTHCHECK") else None
    for where, command in (("compose gamestream healthcheck", cmd), ("Dockerfile HEALTHCHECK", docker_cmd)):
        if not command:
            continue
        text = " ".join(command)
        p.check("/health" in text and "/health" in routes, f"{where}: does not GET /health")
        p.check("${PORT:-8080}" in text, f"{where}: does not use ${{PORT:-8080}}")
        port_ok = free_port()
        server = HTTPServer(("127.0.0.1", port_ok), StubHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            run_healthcheck(command, port_ok, p, where, expect_ok=True)
        finally:
            server.shutdown()
            server.server_close()
        run_healthcheck(command, free_port(), p, where, expect_ok=False)
    p.ok(f"compose: {len(services)} services; healthchecks ran against a stub server")


# -------------------------------------------------------------- observability ---

def dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads((OBS / "grafana" / "dashboards" / "gamestream.json").read_text())
    out = []
    for panel in d["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t["expr"]))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            m = re.match(r"label_values\((.*),\s*\w+\)$", q)
            if m:
                out.append((f"variable {v['name']}", m.group(1)))
    return out


def substitute_grafana(expr: str) -> str:
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
            .replace("$instance", ".*").replace("$sink", ".*").replace("$job", "gamestream"))


def metric_names(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # strings
    e = re.sub(r"\{[^}]*\}", "", e)                          # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                         # ranges
    e = re.sub(r"\boffset\s+-?[0-9a-z]+", "", e)             # offset 5m
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        token = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or token.lower() in PROMQL_WORDS:
            continue
        names.add(token)
    return names


def check_observability(p: Problems, metrics: dict[str, set[str]], metric_sources: list[str]):
    path = OBS / "grafana" / "dashboards" / "gamestream.json"
    d = json.loads(path.read_text())
    p.check(d.get("uid") == "gamestream", "dashboard: uid is not gamestream")
    ids = [pn["id"] for pn in d["panels"]]
    p.check(len(ids) == len(set(ids)), "dashboard: duplicate panel ids")
    cells = {}
    for pn in d["panels"]:
        g = pn["gridPos"]
        p.check(g["x"] + g["w"] <= 24, f"dashboard: panel {pn['title']!r} wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                p.check((x, y) not in cells, f"dashboard: {pn['title']!r} overlaps {cells.get((x, y))!r}")
                cells[(x, y)] = pn["title"]
        if pn["type"] != "row":
            p.check(pn.get("datasource", {}).get("uid") == "${datasource}",
                    f"dashboard: panel {pn['title']!r} does not use the $datasource variable")
            p.check(bool(pn.get("targets")), f"dashboard: panel {pn['title']!r} has no query")
    variables = {v["name"] for v in d["templating"]["list"]}
    queried: set[str] = set()
    for title, expr in dashboard_exprs():
        for var in re.findall(r"\$([A-Za-z_]\w*)", expr):
            p.check(var.startswith("__") or var in variables, f"dashboard: {title!r} uses undefined ${var}")
        queried |= metric_names(substitute_grafana(expr))
    queried -= PROMETHEUS_OWN
    listed = {line.strip() for line in (OBS / "dashboard-metrics.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    p.check(listed == queried, "dashboard-metrics.txt differs from the dashboard's metrics: "
            f"missing {sorted(queried - listed)}, extra {sorted(listed - queried)}")
    pending = {line.strip() for line in (OBS / "pending-metrics.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    alerted = check_alerts(p)
    for name in pending:
        p.check(re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name) is not None,
                f"pending-metrics.txt: {name!r} is not a metric name")
        p.check(name in queried or name in alerted,
                f"pending-metrics.txt: {name} is used by neither the dashboard nor alerts.yml; remove it")
    for v in d["templating"]["list"]:
        if v.get("type") == "query":
            p.check(v.get("definition") == v.get("query", {}).get("query"),
                    f"dashboard: variable {v['name']}: definition and query differ")
    # The datasource's trace → metrics queries count too.
    ds = yaml.safe_load((OBS / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text())
    uids = {x["uid"] for x in ds["datasources"]}
    p.check({"prometheus", "tempo"} <= uids, "datasources.yaml: prometheus and tempo uids expected")
    p.check(d["templating"]["list"][0]["current"]["value"] in uids, "dashboard: default datasource not provisioned")
    ds_metrics = set()
    for x in ds["datasources"]:
        for q in x.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", []):
            ds_metrics |= metric_names(q["query"].replace("$$__tags", "").replace("$__tags", ""))
        for key in ("tracesToMetrics", "serviceMap"):
            ref = x.get("jsonData", {}).get(key, {}).get("datasourceUid")
            if ref:
                p.check(ref in uids, f"datasources.yaml: {x['name']} {key} points at unknown uid {ref}")
    for name in sorted(queried | ds_metrics | alerted):
        user = "dashboard queries" if name in queried | ds_metrics else "alerts.yml uses"
        if name in metrics:
            p.check(name not in pending, f"pending-metrics.txt: {name} is registered now; remove it from the list")
        elif name in pending:
            p.warn(f"{user} {name}, which no code registers yet (pending-metrics.txt)")
        else:
            p.error(f"{user} {name}, which no code registers ({', '.join(metric_sources)})")
    p.ok(f"dashboard: {len(d['panels'])} panels, {len(queried)} metrics queried, "
         f"{len(queried - pending)} registered in code")


PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/observability/prometheus/alerts.yml: do not edit. Change the
# rules there, then run
#   python3 deploy/tools/check_deploy.py prometheusrule --write
# (deploy/validate.sh and `make test` fail while the two differ). Needs the Prometheus
# Operator's CRDs (monitoring.coreos.com); added by components/prometheusrule.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: gamestream
  # Explicit: an overlay that adds this component may not set a namespace itself.
  namespace: gamemetrics
  labels:
    app: gamestream
    component: consumer
    # kube-prometheus-stack selects rules by its release label by default; set it to
    # your release name (or configure ruleSelectorNilUsesHelmValues).
    release: kube-prometheus-stack
spec:
"""


def prometheus_rule_text() -> str:
    """The PrometheusRule: the header above, then alerts.yml from `groups:` on, indented
    by two spaces under `spec:` (comments and all, so the thresholds' notes come along)."""
    lines = ALERTS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    return PROMETHEUS_RULE_HEADER + "".join(("  " + line if line else "") + "\n" for line in lines[start:])


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def check_alerts(p: Problems) -> set[str]:
    """alerts.yml, its PrometheusRule and its tests; returns the metrics the rules use."""
    # The PrometheusRule is alerts.yml, exactly.
    p.check(PROMETHEUS_RULE.read_text() == prometheus_rule_text(),
            f"{PROMETHEUS_RULE.relative_to(REPO)} differs from what alerts.yml generates: run "
            "`python3 deploy/tools/check_deploy.py prometheusrule --write`")
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    p.check(rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"],
            "prometheusrule.yaml: spec.groups differ from alerts.yml's groups")
    rules = alert_rules()
    names = [r.get("alert") for r in rules]
    p.check(all(names) and len(names) == len(set(names)), f"alerts.yml: alert names missing or repeated: {names}")
    used: set[str] = set()
    for r in rules:
        a = r.get("alert", "?")
        p.check(r.get("labels", {}).get("severity") in ("warning", "critical"),
                f"alerts.yml: {a}: severity label is not warning or critical")
        ann = r.get("annotations", {})
        for key in ("summary", "description"):
            p.check(bool(ann.get(key)), f"alerts.yml: {a}: no {key} annotation")
        p.check(ann.get("runbook") == f"README.md#alert-{a.lower()}",
                f"alerts.yml: {a}: runbook annotation is not README.md#alert-{a.lower()}")
        used |= metric_names(r["expr"])
    # Every alert fires in some test and stays quiet in another.
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    p.check(tests.get("rule_files") == [ALERTS.name], f"alerts_test.yml: rule_files is not [{ALERTS.name}]")
    fires, quiet = set(), set()
    for t in tests.get("tests", []):
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    for a in names:
        p.check(a in fires, f"alerts_test.yml: no test where {a} fires")
        p.check(a in quiet, f"alerts_test.yml: no test where {a} stays quiet")
    p.check(fires | quiet <= set(names), f"alerts_test.yml: tests of unknown alerts {sorted((fires | quiet) - set(names))}")
    # The runbooks: the README's "Alerts" section, once it is there.
    readme = (REPO / "README.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.*)$", readme, re.M)}
    missing = [a for a in names if f"alert-{a.lower()}" not in anchors]
    if missing:
        p.warn(f"README.md has no runbook heading for {len(missing)} alert(s) (\"Alert: <name>\"): "
               f"{', '.join(missing)}; the runbook links dangle until it does")
    p.ok(f"alerts: {len(rules)} rules, each with a firing and a quiet test; PrometheusRule matches alerts.yml")
    return used - PROMETHEUS_OWN


def write_promtool_inputs(out: Path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": substitute_grafana(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())]}]}
    ds = yaml.safe_load((OBS / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text())
    n = len(rules["groups"][0]["rules"])
    for x in ds["datasources"]:
        for q in x.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", []):
            rules["groups"][0]["rules"].append({"record": f"dashboard:query_{n}",
                                                "expr": q["query"].replace("{$$__tags}", '{job="gamestream"}')})
            n += 1
    (out / "dashboard-rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    # kubernetes_sd_configs → static_configs, so the relabelling and the rest are checked.
    cfg = yaml.safe_load((OBS / "prometheus" / "prometheus-kubernetes.yml").read_text())
    for job in cfg["scrape_configs"]:
        sd = job.pop("kubernetes_sd_configs", None)
        if sd is not None:
            job["static_configs"] = [{"targets": ["placeholder:8080"]}]
    (out / "prometheus-kubernetes-nosd.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # What the Prometheus Operator loads: the PrometheusRule's spec as a rule file.
    spec = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]
    (out / "prometheusrule-rules.yml").write_text(yaml.safe_dump(spec, sort_keys=False))


def check_kubernetes_sd(p: Problems):
    """Debian's promtool has no kubernetes_sd; check the block's shape here."""
    cfg = yaml.safe_load((OBS / "prometheus" / "prometheus-kubernetes.yml").read_text())
    allowed = {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata"}
    roles = {"pod", "node", "service", "endpoints", "endpointslice", "ingress"}
    job = next((j for j in cfg["scrape_configs"] if j["job_name"] == "gamestream"), None)
    if not p.check(job is not None, "prometheus-kubernetes.yml: no gamestream job"):
        return
    for sd in job.get("kubernetes_sd_configs", []):
        p.check(set(sd) <= allowed, f"prometheus-kubernetes.yml: unknown kubernetes_sd keys {set(sd) - allowed}")
        p.check(sd.get("role") in roles, f"prometheus-kubernetes.yml: role {sd.get('role')}")
        p.check(sd.get("namespaces", {}).get("names") == [NAMESPACE], "prometheus-kubernetes.yml: namespace")
        for s in sd.get("selectors", []):
            p.check(set(s) <= {"role", "label", "field"} and s.get("role") in roles,
                    f"prometheus-kubernetes.yml: selector {s}")
            if "label" in s:
                want = ",".join(f"{k}={v}" for k, v in POD_LABELS.items())
                p.check(s["label"] == want, f"prometheus-kubernetes.yml: selector label {s['label']} != {want}")
    anns = {r["source_labels"][-1] for r in job.get("relabel_configs", []) if "source_labels" in r}
    for a in ("scrape", "port", "path"):
        p.check(f"__meta_kubernetes_pod_annotation_prometheus_io_{a}" in anns,
                f"prometheus-kubernetes.yml: prometheus.io/{a} annotation not used")


# ----------------------------------------------------------- the binary itself ---

def binary_check(runs: list, p: Problems):
    binary = os.environ.get("GAMESTREAM_BIN")
    if not binary:
        p.warn("GAMESTREAM_BIN not set: the gamestream binary did not load the configs (set it to run that check)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for where, config_text, env in runs:
            args = [binary]
            if config_text:
                cfg = Path(tmp) / "gamestream.toml"
                cfg.write_text(config_text)
                args += ["--config", str(cfg)]
            # Unreachable broker, short timeout: exit 1 (connection refused) means the
            # configuration loaded; exit 2 means gamestream refused it.
            args += ["--set", 'kafka.bootstrap_servers="127.0.0.1:1"', "--set", 'kafka.operation_timeout="200ms"',
                     "topics", "list"]
            run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
            try:
                r = subprocess.run(args, env=run_env, capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                p.error(f"{where}: gamestream did not return within 60 s")
                continue
            if r.returncode == 2:
                p.error(f"{where}: gamestream refuses the configuration: {r.stderr.strip()}")
            else:
                p.ok(f"{where}: gamestream loads the config file and env (exit {r.returncode}: broker unreachable, as arranged)")


# ----------------------------------------------------------------------- main ---

def report(p: Problems) -> int:
    for msg in p.passed:
        print(f"  ok    {msg}")
    for msg in p.warnings:
        print(f"  WARN  {msg}")
    for msg in p.errors:
        print(f"  FAIL  {msg}")
    print(f"  {len(p.errors)} problem(s), {len(p.warnings)} warning(s)")
    return 1 if p.errors else 0


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[1] == "prometheusrule":
        text = prometheus_rule_text()
        if argv[2:] == ["--write"]:
            PROMETHEUS_RULE.write_text(text)
            print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}")
            return 0
        if argv[2:]:
            print(__doc__, file=sys.stderr)
            return 2
        if PROMETHEUS_RULE.read_text() != text:
            print(f"{PROMETHEUS_RULE.relative_to(REPO)} differs from what alerts.yml generates; run "
                  f"`python3 deploy/tools/check_deploy.py prometheusrule --write`", file=sys.stderr)
            return 1
        print(f"{PROMETHEUS_RULE.relative_to(REPO)} matches alerts.yml")
        return 0
    if len(argv) != 3 or argv[1] not in ("render", "prepare", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[2])
    p = Problems()
    if argv[1] == "render":
        render_all(out, p)
        return report(p)
    if argv[1] == "prepare":
        out.mkdir(parents=True, exist_ok=True)
        write_promtool_inputs(out)
        return 0
    rules = EnvRules()
    rules.check_pending(p)
    routes = http_routes()
    for r in ("/health", "/ready", "/metrics"):
        p.check(r in routes, f"src/http: no route {r}")
    metrics, sources = code_metrics()
    runs: list = []
    rendered = load_rendered(out)
    p.check(set(RENDER_TARGETS) <= set(rendered), f"rendered manifests missing in {out} (run render first)")
    check_k8s(rendered, rules, routes, p, runs)
    check_compose(rules, routes, p, runs)
    check_observability(p, metrics, sources)
    check_kubernetes_sd(p)
    binary_check(runs, p)
    return report(p)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

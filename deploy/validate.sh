#!/usr/bin/env bash
# Validates everything under deploy/ as files: no Docker engine or cluster needed.
#
#   deploy/validate.sh            run every check; exit 1 if any failed
#
# Installs its validators idempotently (PyPI into a venv under .stack/deploy-tools; the
# Debian package of Prometheus is unpacked there for promtool, without installing it):
#   yamllint         every YAML file under deploy/
#   ShellCheck       this script
#   hadolint         deploy/Dockerfile
#   kustomize        renders base, dev, prod, and prod + each optional component
#                    (servicemonitor, prometheusrule, keda) with kubectl kustomize or
#                    kustomize when installed, and always tools/kustomize_lite.py; the
#                    two must agree
#   kubernetes-validate --strict   the rendered objects against the Kubernetes 1.30 and
#                    1.37 schemas (1.30: oldest with the native preStop sleep)
#   check-jsonschema the custom resources (ServiceMonitor, PrometheusRule, KEDA
#                    ScaledObject and TriggerAuthentication: tools/schemas) and
#                    docker-compose.yml (compose-spec)
#   promtool         prometheus.yml, the k8s scrape config, every dashboard query, the
#                    alert rules (alerts.yml and the PrometheusRule's copy), and their
#                    unit tests (observability/prometheus/alerts_test.yml)
#   tools/check_deploy.py   env vars, probes, ports, wiring, metrics (see its docstring)
#
# Settings (environment):
#   DEPLOY_TOOLS_DIR   where the validators live (default: <repo>/.stack/deploy-tools)
#   GAMESTREAM_BIN     a gamestream binary: also let it load every config + env set
#                      (default: $CARGO_TARGET_DIR or <repo>/target, release then debug)
#   DEPLOY_K8S_VERSIONS  Kubernetes schema versions (default "1.30.0 1.37.0")
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$DEPLOY/.." && pwd)
TOOLS_DIR=${DEPLOY_TOOLS_DIR:-$REPO/.stack/deploy-tools}
VENV=$TOOLS_DIR/venv
K8S_VERSIONS=${DEPLOY_K8S_VERSIONS:-1.30.0 1.37.0}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

log() { printf '[validate] %s\n' "$*"; }
die() {
    printf '[validate] error: %s\n' "$*" >&2
    exit 1
}

# ------------------------------------------------------------------ tools ---

install_python_tools() {
    local req=$DEPLOY/tools/requirements.txt stamp=$VENV/.requirements.sha256 want
    want=$(sha256sum "$req" | cut -d' ' -f1)
    if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return
    fi
    command -v python3 >/dev/null || die "python3 is needed"
    log "installing validators into $VENV"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
}

# promtool: from PATH, else Debian's prometheus package unpacked (tools/promtool.sh).
find_promtool() {
    DEPLOY_TOOLS_DIR=$TOOLS_DIR "$DEPLOY/tools/promtool.sh" || die "no promtool"
}

find_gamestream() {
    if [[ -n ${GAMESTREAM_BIN:-} ]]; then
        [[ -x $GAMESTREAM_BIN ]] || die "GAMESTREAM_BIN=$GAMESTREAM_BIN is not executable"
        echo "$GAMESTREAM_BIN"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$REPO/target} profile
    for profile in release debug; do
        if [[ -x $target/$profile/gamestream ]]; then
            echo "$target/$profile/gamestream"
            return
        fi
    done
}

# ------------------------------------------------------------------ steps ---

declare -a RESULTS=()
FAILED=0

# step NAME COMMAND...: runs it, prints its output, records PASS or FAIL.
step() {
    local name=$1
    shift
    log "==> $name"
    if "$@"; then
        RESULTS+=("PASS  $name")
    else
        RESULTS+=("FAIL  $name")
        FAILED=1
    fi
}

k8s_validate() {
    local version rc=0
    for version in $K8S_VERSIONS; do
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$OUT"/k8s/*.yaml || rc=1
    done
    [[ $rc -eq 0 ]] && echo "all rendered objects valid against Kubernetes $K8S_VERSIONS (strict)"
    return $rc
}

promtool_checks() {
    local rc=0
    "$PROMTOOL" check config "$DEPLOY/observability/prometheus/prometheus.yml" || rc=1
    "$PROMTOOL" check config "$OUT/promtool/prometheus-kubernetes-nosd.yml" || rc=1
    "$PROMTOOL" check rules "$OUT/promtool/dashboard-rules.yml" || rc=1
    "$PROMTOOL" check rules "$DEPLOY/observability/prometheus/alerts.yml" || rc=1
    "$PROMTOOL" check rules "$OUT/promtool/prometheusrule-rules.yml" || rc=1
    return $rc
}

crd_schemas() {
    local rc=0 pair schema file
    for pair in servicemonitor:servicemonitor/servicemonitor.yaml \
        prometheusrule:prometheusrule/prometheusrule.yaml \
        scaledobject:keda/scaledobject.yaml \
        triggerauthentication:keda/triggerauthentication.yaml; do
        schema=$DEPLOY/tools/schemas/${pair%%:*}.schema.json
        file=$DEPLOY/k8s/components/${pair#*:}
        check-jsonschema --schemafile "$schema" "$file" || rc=1
    done
    return $rc
}

compose_config() {
    # The real parser too, where Docker Compose is installed (it needs no engine).
    if docker compose version >/dev/null 2>&1; then
        docker compose -f "$DEPLOY/docker-compose.yml" config --quiet && echo "docker compose config: ok"
    else
        echo "docker compose not installed: compose-spec schema only"
    fi
}

main() {
    install_python_tools
    PROMTOOL=$(find_promtool)
    local gamestream
    gamestream=$(find_gamestream)
    if [[ -n $gamestream ]]; then
        export GAMESTREAM_BIN=$gamestream
        log "gamestream binary: $gamestream (built $(date -r "$gamestream" '+%F %T'))"
    fi
    export PATH=$VENV/bin:$PATH

    step "yamllint" yamllint --strict -c "$DEPLOY/.yamllint.yaml" "$DEPLOY"
    step "shellcheck validate.sh, tools/promtool.sh" shellcheck "$DEPLOY/validate.sh" "$DEPLOY/tools/promtool.sh"
    step "hadolint Dockerfile" hadolint "$DEPLOY/Dockerfile"
    step "kustomize render (base, dev, prod, prod + servicemonitor / prometheusrule / keda)" \
        python "$DEPLOY/tools/check_deploy.py" render "$OUT/k8s"
    step "kubernetes-validate --strict" k8s_validate
    step "CRD schemas (ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication)" crd_schemas
    step "compose-spec schema" check-jsonschema --builtin-schema vendor.compose-spec \
        "$DEPLOY/docker-compose.yml"
    step "docker compose config" compose_config
    step "promtool inputs" python "$DEPLOY/tools/check_deploy.py" prepare "$OUT/promtool"
    step "promtool check (scrape configs, dashboard queries, alert rules)" promtool_checks
    step "promtool test rules (alerts_test.yml)" \
        "$PROMTOOL" test rules "$DEPLOY/observability/prometheus/alerts_test.yml"
    step "semantic checks (env, probes, wiring, metrics)" \
        python "$DEPLOY/tools/check_deploy.py" check "$OUT/k8s"

    log "summary:"
    printf '  %s\n' "${RESULTS[@]}"
    if [[ $FAILED -ne 0 ]]; then
        log "FAILED"
        exit 1
    fi
    log "all checks passed"
}

main "$@"

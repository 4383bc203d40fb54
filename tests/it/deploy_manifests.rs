//! The deployment files against the code (issue 7): every env var the Kubernetes
//! manifests and docker-compose set is one gamestream reads, and gamestream accepts the
//! config file with that environment; probe paths answer on a running daemon and the
//! ports match; the kustomize overlays render (prod with the KEDA component too, whose
//! triggers read the consumer groups the daemon mirrors), with Service `event-ingestion`
//! on port 8080 over the ingest pods (CONTRACT); the dashboard's metric list is current.
//!
//! `deploy/validate.sh` checks much more (schemas, promtool, wiring); this test keeps
//! the essentials in `make test`, so a renamed setting or route breaks the build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use gamestream::config::{self, CONTRACT_ENV, ENV_PREFIX, LogFormat, Sources};

/// Read by gamestream outside `config.rs`: the log filter and the OpenTelemetry standard.
const OTHER_ENV: &[&str] = &[
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `KEY=VALUE` lines of a kustomize env file.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: {l}", path.display()));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn unquote(v: &str) -> String {
    v.trim().trim_matches('"').to_owned()
}

/// `stringData` of each Secret in secrets.example.yaml: name → key → value.
fn example_secrets() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = read(&deploy().join("k8s/secrets.example.yaml"));
    let mut out = BTreeMap::new();
    for doc in text.split("\n---") {
        let Some(name) = doc
            .lines()
            .find_map(|l| l.strip_prefix("  name: "))
            .map(str::trim)
        else {
            continue;
        };
        let mut data = BTreeMap::new();
        let mut in_data = false;
        for line in doc.lines() {
            if line.starts_with("stringData:") {
                in_data = true;
            } else if in_data && line.starts_with("  ") && !line.trim_start().starts_with('#') {
                if let Some((k, v)) = line.trim().split_once(": ") {
                    data.insert(k.to_owned(), unquote(v));
                }
            } else if !line.starts_with("  ") && !line.trim_start().starts_with('#') {
                in_data = false;
            }
        }
        out.insert(name.to_owned(), data);
    }
    out
}

/// The Deployment's explicit env entries (all from secretKeyRef): VAR → (secret, key).
fn deployment_secret_env() -> BTreeMap<String, (String, String)> {
    let text = read(&deploy().join("k8s/base/deployment.yaml"));
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut secret = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- name: ") {
            // Upper-case names are env entries; containers and volumes are lower-case.
            current = name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                .then(|| name.to_owned());
            secret = None;
        } else if let Some(var) = &current {
            if let Some(name) = line.strip_prefix("name: ") {
                secret = Some(name.to_owned());
            } else if let (Some(s), Some(key)) = (&secret, line.strip_prefix("key: ")) {
                out.insert(var.clone(), (s.clone(), key.to_owned()));
            }
        }
    }
    out
}

/// A pod name, for the env entries the downward API fills in.
const POD_NAME: &str = "gamestream-7d4b9c5f6-x2k4p";

/// The Deployment's env entries from the downward API (`fieldRef`): VAR → a sample value.
fn deployment_field_env() -> BTreeMap<String, String> {
    let text = read(&deploy().join("k8s/base/deployment.yaml"));
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- name: ") {
            current = Some(name.to_owned());
        } else if let (Some(var), Some(field)) = (&current, line.strip_prefix("fieldPath: ")) {
            assert_eq!(
                field, "metadata.name",
                "{var}: only the pod name is expected"
            );
            out.insert(var.clone(), POD_NAME.to_owned());
        }
    }
    out
}

/// The environment a gamestream container of an overlay gets, with the secrets'
/// example values.
fn k8s_env(overlay: &str) -> BTreeMap<String, String> {
    let mut env = env_file(&deploy().join("k8s/base/gamestream.env"));
    env.extend(env_file(
        &deploy().join(format!("k8s/overlays/{overlay}/gamestream.env")),
    ));
    let secrets = example_secrets();
    // envFrom: secretRef gamestream-db (its keys are variable names).
    let db = secrets
        .get("gamestream-db")
        .expect("gamestream-db in secrets.example.yaml");
    env.extend(db.clone());
    env.extend(deployment_field_env());
    for (var, (secret, key)) in deployment_secret_env() {
        let value = secrets
            .get(&secret)
            .and_then(|s| s.get(&key))
            .unwrap_or_else(|| panic!("{var}: {secret}/{key} is not in secrets.example.yaml"));
        env.insert(var, value.clone());
    }
    env
}

/// The `x-gamestream-env` block of docker-compose.yml (`${VAR:-default}` → default).
fn compose_env() -> BTreeMap<String, String> {
    let text = read(&deploy().join("docker-compose.yml"));
    let block = text
        .split("x-gamestream-env: &gamestream-env\n")
        .nth(1)
        .expect("x-gamestream-env block");
    block
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| {
            let v = unquote(v);
            let v = match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                Some(inner) => inner.split_once(":-").map_or("", |(_, d)| d).to_owned(),
                None => v,
            };
            (k.to_owned(), v)
        })
        .collect()
}

fn assert_read_by_gamestream(
    env: &BTreeMap<String, String>,
    file: Option<PathBuf>,
    what: &str,
) -> config::Config {
    for name in env.keys() {
        let known = CONTRACT_ENV.iter().any(|(n, _)| n == name)
            || OTHER_ENV.contains(&name.as_str())
            || name.starts_with(ENV_PREFIX);
        assert!(
            known,
            "{what}: {name} is not an environment variable gamestream reads"
        );
    }
    // Unknown GAMESTREAM_ keys, wrong types and bad values are refused here.
    config::load(&Sources {
        file,
        env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        overrides: vec![],
    })
    .unwrap_or_else(|e| panic!("{what}: gamestream refuses the configuration: {e}"))
}

fn container_port() -> u16 {
    let text = read(&deploy().join("k8s/base/deployment.yaml"));
    let ports: Vec<u16> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("containerPort: "))
        .map(|p| p.parse().expect("containerPort"))
        .collect();
    assert_eq!(ports.len(), 1, "one containerPort expected: {ports:?}");
    ports[0]
}

#[test]
fn manifest_and_compose_env_is_read_by_gamestream() {
    let base_toml = deploy().join("k8s/base/gamestream.toml");
    for overlay in ["dev", "prod"] {
        let env = k8s_env(overlay);
        let config =
            assert_read_by_gamestream(&env, Some(base_toml.clone()), &format!("k8s/{overlay}"));
        assert_eq!(
            config.http.port,
            container_port(),
            "k8s/{overlay}: the daemon's port is the containerPort"
        );
        assert_eq!(
            config.lease.member_id, POD_NAME,
            "k8s/{overlay}: the lease member id is the pod name"
        );
        if overlay == "prod" {
            assert_eq!(
                config.telemetry.log_format,
                LogFormat::Json,
                "prod logs JSON"
            );
        }
    }
    let env = compose_env();
    assert!(env.contains_key("KAFKA_BOOTSTRAP_SERVERS"), "{env:?}");
    let config = assert_read_by_gamestream(&env, None, "docker-compose.yml");
    let compose = read(&deploy().join("docker-compose.yml"));
    let mapping = format!("\"{0}:{0}\"", config.http.port);
    assert!(compose.contains(&mapping), "compose publishes {mapping}");
}

/// Paths the probes, healthchecks and scrape annotations use.
fn probe_paths() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let deployment = read(&deploy().join("k8s/base/deployment.yaml"));
    for line in deployment.lines().map(str::trim) {
        if let Some(p) = line
            .strip_prefix("path: ")
            .or_else(|| line.strip_prefix("prometheus.io/path: "))
        {
            paths.insert(p.to_owned());
        }
    }
    for file in ["Dockerfile", "docker-compose.yml"] {
        let text = read(&deploy().join(file));
        for part in text.split("GET ").skip(1) {
            let path = part.split_whitespace().next().unwrap_or_default();
            if path.starts_with('/') {
                paths.insert(path.to_owned());
            }
        }
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_paths_answer_on_a_running_daemon() {
    let paths = probe_paths();
    assert!(
        paths.contains("/health") && paths.contains("/ready") && paths.contains("/metrics"),
        "{paths:?}"
    );
    let env = crate::common::TestEnv::new().await;
    let shutdown = gamestream::shutdown::Shutdown::new();
    let running = gamestream::daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let client = reqwest::Client::new();
    for path in &paths {
        let response = client
            .get(format!("http://{}{path}", running.http_addr))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(
            response.status(),
            200,
            "GET {path} (a probe or healthcheck uses it)"
        );
    }
    shutdown.trigger();
    running.stop().await;
}

/// `kubectl kustomize`, `kustomize build`, or the bundled renderer (python3 + PyYAML).
fn render(dir: &Path) -> String {
    let candidates: [(&str, Vec<String>); 3] = [
        (
            "kubectl",
            vec!["kustomize".into(), dir.display().to_string()],
        ),
        ("kustomize", vec!["build".into(), dir.display().to_string()]),
        (
            "python3",
            vec![
                deploy()
                    .join("tools/kustomize_lite.py")
                    .display()
                    .to_string(),
                dir.display().to_string(),
            ],
        ),
    ];
    let mut tried = Vec::new();
    for (program, args) in candidates {
        match Command::new(program).args(&args).output() {
            Ok(out) if out.status.success() => {
                return String::from_utf8(out.stdout).expect("utf-8");
            }
            Ok(out) => tried.push(format!(
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => tried.push(format!("{program}: {e}")),
        }
    }
    panic!(
        "no kustomize renderer worked for {} (install kubectl, kustomize, or python3 with PyYAML):\n{}",
        dir.display(),
        tried.join("\n")
    );
}

#[test]
fn kustomize_overlays_render() {
    for overlay in ["dev", "prod"] {
        let out = render(&deploy().join("k8s/overlays").join(overlay));
        for needle in [
            "kind: Deployment",
            "kind: Service\n",
            "kind: PodDisruptionBudget",
            "namespace: gamemetrics",
            "component: consumer",
            "name: kafka-credentials",
            "path: /health",
            "path: /ready",
        ] {
            assert!(
                out.contains(needle),
                "{overlay}: rendered output lacks {needle:?}"
            );
        }
        assert_eq!(
            out.contains("kind: HorizontalPodAutoscaler"),
            overlay == "prod",
            "{overlay}: HPA in prod only"
        );
    }
}

/// `deploy/validate.sh`'s semantic checks (env, probes, ports, wiring, the dashboard's
/// layout and metrics, alerts), which need only Python: a dashboard panel laid over
/// another, or a metric the dashboard reads that the daemon no longer exports, fails
/// `make test`, not only the longer validate.sh.
#[test]
fn the_semantic_deploy_checks_pass() {
    let out = tempfile::tempdir().expect("tempdir");
    let tool = deploy().join("tools/check_deploy.py");
    for step in ["render", "check"] {
        let run = Command::new("python3")
            .arg(&tool)
            .arg(step)
            .arg(out.path())
            .output()
            .expect("python3");
        assert!(
            run.status.success(),
            "check_deploy.py {step} failed:\n{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
}

/// The documents of a rendered overlay, each as its non-blank lines.
fn documents(rendered: &str) -> Vec<Vec<String>> {
    let mut docs = vec![Vec::new()];
    for line in rendered.lines() {
        if line == "---" {
            docs.push(Vec::new());
        } else if !line.trim().is_empty() {
            docs.last_mut()
                .expect("one document at least")
                .push(line.to_owned());
        }
    }
    docs.retain(|d| !d.is_empty());
    docs
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn top_indent(lines: &[String]) -> usize {
    lines.iter().map(|l| indent(l)).min().unwrap_or(0)
}

/// The lines under `key:` among the least indented of `lines`: a mapping, or a sequence
/// (kustomize writes a sequence's `- ` at its key's indentation).
fn block(lines: &[String], key: &str) -> Vec<String> {
    let top = top_indent(lines);
    let header = format!("{key}:");
    let Some(at) = lines
        .iter()
        .position(|l| indent(l) == top && l.trim() == header)
    else {
        return Vec::new();
    };
    lines[at + 1..]
        .iter()
        .take_while(|l| indent(l) > top || l.trim_start().starts_with("- "))
        .take_while(|l| indent(l) >= top)
        .cloned()
        .collect()
}

/// The items of a sequence block, each as a mapping (its `- ` turned into indentation).
fn items(lines: &[String]) -> Vec<Vec<String>> {
    let top = top_indent(lines);
    let mut out: Vec<Vec<String>> = Vec::new();
    for line in lines {
        match line.trim_start().strip_prefix("- ") {
            Some(rest) if indent(line) == top => {
                out.push(vec![format!("{}{rest}", " ".repeat(top + 2))]);
            }
            _ => {
                if let Some(item) = out.last_mut() {
                    item.push(line.clone());
                }
            }
        }
    }
    out
}

/// The `key: value` scalars among the least indented of `lines`.
fn scalars(lines: &[String]) -> BTreeMap<String, String> {
    let top = top_indent(lines);
    lines
        .iter()
        .filter(|l| indent(l) == top)
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| (k.to_owned(), unquote(v)))
        .collect()
}

/// What keeps CONTRACT clients from reaching the daemon in a rendered overlay: Service
/// `event-ingestion` in namespace `gamemetrics`, on port 8080, targeting the daemon's
/// container port and selecting the Deployment's pods (which run HTTP ingestion).
fn event_ingestion_problems(docs: &[Vec<String>]) -> Vec<String> {
    let named = |kind: &str, name: &str| -> Vec<&Vec<String>> {
        docs.iter()
            .filter(|d| {
                scalars(d).get("kind").map(String::as_str) == Some(kind)
                    && scalars(&block(d, "metadata"))
                        .get("name")
                        .map(String::as_str)
                        == Some(name)
            })
            .collect()
    };
    let mut problems = Vec::new();
    let (deployment, service) = match (
        named("Deployment", "gamestream").as_slice(),
        named("Service", "event-ingestion").as_slice(),
    ) {
        ([deployment], [service]) => ((*deployment).clone(), (*service).clone()),
        (deployments, services) => {
            return vec![format!(
                "{} Deployment gamestream and {} Service event-ingestion, expected one each",
                deployments.len(),
                services.len()
            )];
        }
    };
    let namespace = scalars(&block(&service, "metadata"))
        .get("namespace")
        .cloned();
    if namespace.as_deref() != Some("gamemetrics") {
        problems.push(format!(
            "Service event-ingestion is in namespace {namespace:?}"
        ));
    }
    let template = block(&block(&deployment, "spec"), "template");
    let pod_labels = scalars(&block(&block(&template, "metadata"), "labels"));
    let container_ports: BTreeMap<String, String> =
        items(&block(&block(&template, "spec"), "containers"))
            .iter()
            .filter(|c| scalars(c).get("name").map(String::as_str) == Some("gamestream"))
            .flat_map(|c| items(&block(c, "ports")))
            .map(|p| scalars(&p))
            .filter_map(|p| Some((p.get("name")?.clone(), p.get("containerPort")?.clone())))
            .collect();
    let daemon = container_port().to_string();
    let spec = block(&service, "spec");
    let reaches_daemon = items(&block(&spec, "ports"))
        .iter()
        .map(|p| scalars(p))
        .any(|p| {
            let target = p.get("targetPort").cloned().unwrap_or_default();
            p.get("port").map(String::as_str) == Some("8080")
                && (target == daemon || container_ports.get(&target) == Some(&daemon))
        });
    if !reaches_daemon {
        problems.push(format!(
            "Service event-ingestion has no port 8080 to the daemon's port {daemon} \
             (container ports {container_ports:?})"
        ));
    }
    let selector = scalars(&block(&spec, "selector"));
    if selector.is_empty() || selector.iter().any(|(k, v)| pod_labels.get(k) != Some(v)) {
        problems.push(format!(
            "Service event-ingestion selects {selector:?}, not the pods ({pod_labels:?})"
        ));
    }
    problems
}

/// CONTRACT clients post to Service `event-ingestion` on port 8080 in namespace
/// `gamemetrics`: every overlay renders it, beside `gamestream`, over the ingest pods. The
/// check is shown to fail on a render without it, on another port, or selecting no pod.
#[test]
fn clients_reach_the_daemon_through_service_event_ingestion() {
    for overlay in ["dev", "prod"] {
        let docs = documents(&render(&deploy().join("k8s/overlays").join(overlay)));
        let problems = event_ingestion_problems(&docs);
        assert!(problems.is_empty(), "{overlay}: {problems:#?}");
        let is_it = |d: &Vec<String>| d.iter().any(|l| l == "  name: event-ingestion");
        let without: Vec<_> = docs.iter().filter(|d| !is_it(d)).cloned().collect();
        let edited = |from: &str, to: &str| -> Vec<Vec<String>> {
            docs.iter()
                .map(|d| {
                    d.iter()
                        .map(|l| {
                            if is_it(d) && l.trim() == from {
                                l.replace(from, to)
                            } else {
                                l.clone()
                            }
                        })
                        .collect()
                })
                .collect()
        };
        for (what, broken) in [
            ("without it", without),
            ("on port 80", edited("port: 8080", "port: 80")),
            (
                "targeting port 9090",
                edited("targetPort: http", "targetPort: 9090"),
            ),
            (
                "selecting other pods",
                edited("component: consumer", "component: ingestion"),
            ),
        ] {
            assert!(
                !event_ingestion_problems(&broken).is_empty(),
                "{overlay}: the check passes a render {what}"
            );
        }
    }
}

/// `prod` with the KEDA component, as `deploy/k8s/components/keda` says to add it: a
/// kustomization of its own (in a temporary directory) naming both.
fn render_prod_with_keda() -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    // Relative paths from the temporary directory (kustomize wants them relative).
    let up = "../".repeat(dir.path().components().count() - 1);
    let rel = |p: PathBuf| format!("{up}{}", p.display().to_string().trim_start_matches('/'));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
            rel(deploy().join("k8s/overlays/prod")),
            rel(deploy().join("k8s/components/keda")),
        ),
    )
    .expect("write kustomization.yaml");
    render(dir.path())
}

/// The KEDA ScaledObject scales on the lag of the three old consumer groups in the raw
/// topic, which the daemon mirrors by default (`group_offsets`), and replaces the HPA.
#[test]
fn keda_scaled_object_reads_the_mirrored_groups() {
    let out = render_prod_with_keda();
    assert!(
        out.contains("kind: ScaledObject"),
        "no ScaledObject:\n{out}"
    );
    assert!(
        out.contains("kind: TriggerAuthentication"),
        "no TriggerAuthentication"
    );
    assert!(
        !out.contains("kind: HorizontalPodAutoscaler"),
        "KEDA's ScaledObject replaces the HPA: both rendered"
    );
    let values = |key: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .collect()
    };
    let defaults = config::load(&Sources {
        file: None,
        env: vec![
            ("KAFKA_BOOTSTRAP_SERVERS".into(), "k:9092".into()),
            ("DB_HOST".into(), "db".into()),
        ],
        overrides: vec![],
    })
    .expect("the defaults load");
    let groups: BTreeSet<String> = values("consumerGroup:").into_iter().collect();
    let mirrored: BTreeSet<String> = gamestream::catalogue::LEGACY_GROUPS
        .iter()
        .map(|g| format!("{}{g}", defaults.group_offsets.group_prefix))
        .collect();
    assert_eq!(groups, mirrored, "the kafka triggers' groups");
    assert_eq!(values("consumerGroup:").len(), 3, "one trigger per group");
    let topics: BTreeSet<String> = values("topic:").into_iter().collect();
    assert_eq!(
        topics,
        BTreeSet::from([defaults.topics.player_events.clone()]),
        "the kafka triggers' topic"
    );
    assert!(
        defaults.group_offsets.mirror,
        "the groups KEDA reads are mirrored by default"
    );
}

#[test]
fn dashboard_metric_list_is_current() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(
        &deploy().join("observability/grafana/dashboards/gamestream.json"),
    ))
    .expect("dashboard JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            {
                if ["gamestream_", "events_", "http_request_", "producer_"]
                    .iter()
                    .any(|p| token.starts_with(p))
                {
                    queried.insert(token.to_owned());
                }
            }
        }
    }
    let listed: BTreeSet<String> = read(&deploy().join("observability/dashboard-metrics.txt"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        listed, queried,
        "deploy/observability/dashboard-metrics.txt is out of date"
    );
}

/// The alert rules (`deploy/observability/prometheus/alerts.yml`) pass `promtool check
/// rules` and their unit tests (`alerts_test.yml`: every alert fires in one case and
/// stays quiet in another), and the Prometheus Operator's copy
/// (`deploy/k8s/components/prometheusrule/prometheusrule.yaml`) is generated from them.
/// promtool comes from PATH or Debian's package, through `deploy/tools/promtool.sh` as
/// in `deploy/validate.sh`. Self-contained: it uses no helper of this file.
#[test]
fn alert_rules_pass_promtool_tests() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules_dir = deploy.join("observability/prometheus");
    let helper = std::process::Command::new("bash")
        .arg(deploy.join("tools/promtool.sh"))
        .output()
        .expect("run deploy/tools/promtool.sh");
    assert!(
        helper.status.success(),
        "deploy/tools/promtool.sh found no promtool (without one on PATH it fetches Debian's \
         prometheus package with apt-get):\n{}",
        String::from_utf8_lossy(&helper.stderr)
    );
    let promtool = String::from_utf8(helper.stdout).expect("promtool path is UTF-8");
    let promtool = promtool.trim();
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new(promtool)
            .args(args)
            .current_dir(&rules_dir)
            .output()
            .unwrap_or_else(|e| panic!("{promtool}: {e}"));
        assert!(
            out.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // prometheusrule.yaml: a header, then alerts.yml from `groups:` on, under `spec:`.
    let alerts = std::fs::read_to_string(rules_dir.join("alerts.yml")).expect("alerts.yml");
    let rule_path = deploy.join("k8s/components/prometheusrule/prometheusrule.yaml");
    let rule = std::fs::read_to_string(&rule_path).expect("prometheusrule.yaml");
    let mut body = String::from("\nspec:\n");
    for line in alerts.lines().skip_while(|l| !l.starts_with("groups:")) {
        if !line.is_empty() {
            body.push_str("  ");
            body.push_str(line);
        }
        body.push('\n');
    }
    assert!(
        body.contains("groups:") && rule.ends_with(&body),
        "{} is not generated from alerts.yml: run \
         `python3 deploy/tools/check_deploy.py prometheusrule --write`",
        rule_path.display()
    );
}

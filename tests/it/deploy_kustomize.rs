//! The Kustomize manifests in deploy/kustomize: the base and every overlay render with `kubectl kustomize`,
//! every rendered object validates against Kubernetes 1.33's schemas (`kubernetes-validate --strict`,
//! offline), the objects carry what the deployment depends on (the token from the Secret `lumen-secrets` in
//! the server's environment and as the agents' token file), and the config files pass `lumen config check`
//! (the server's with the token, as deployed). Needs kubectl, kubernetes-validate and python3 with PyYAML.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::deploy::server_check_needs_the_token;
use crate::yaml::{yaml_documents, yaml_file};

const BASE: &str = "base";
const DEV: &str = "overlays/dev";
const PROD: &str = "overlays/prod";
const K3S: &str = "overlays/k3s";
const S3: &str = "overlays/s3";
const DISTRIBUTED: &str = "overlays/distributed";
const ALL: [&str; 6] = [BASE, DEV, PROD, K3S, S3, DISTRIBUTED];

fn kustomize_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kustomize").join(sub)
}

/// `kubectl kustomize DIR`, asserting success.
fn render(sub: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(kustomize_dir(sub))
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
    assert!(out.status.success(), "kubectl kustomize {sub} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `kubernetes-validate -k 1.33.0 --strict FILE`, asserting success and that every object was checked
/// against a schema (an unknown kind is only a warning to the tool).
fn validate(file: &Path, objects: usize, what: &str) {
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.33.0", "--strict"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubernetes-validate: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} does not validate:\n{text}");
    let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
    assert_eq!(passed, objects, "{what}: {objects} objects, {passed} validated:\n{text}");
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], k: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = kind(docs, k).into_iter().filter(|d| d["metadata"]["name"] == name).collect();
    assert_eq!(found.len(), 1, "expected one {k} {name}, found {}", found.len());
    found[0]
}

/// The ConfigMap whose generated name starts with `prefix` (kustomize appends a content hash).
fn config_map<'a>(docs: &'a [Value], prefix: &str) -> &'a Value {
    let found: Vec<&Value> = kind(docs, "ConfigMap")
        .into_iter()
        .filter(|d| d["metadata"]["name"].as_str().unwrap_or("").starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "expected one ConfigMap {prefix}-<hash>");
    found[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// A CPU quantity in millicores: "50m", "1", "0.5".
fn millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0).round() as u64,
    }
}

/// A memory quantity in bytes: "64Mi", "2Gi", "512Ki", or plain bytes.
fn bytes(q: &str) -> u64 {
    for (suffix, factor) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    q.parse().unwrap()
}

/// The one container of a workload's pod template.
fn container(workload: &Value) -> &Value {
    let containers = workload["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container expected");
    &containers[0]
}

/// Checks requests ≤ limits and, when given, requests ≤ (max millicores, max bytes).
fn check_resources(c: &Value, what: &str, max_requests: Option<(u64, u64)>) {
    let r = &c["resources"];
    let (rc, rm) = (millicores(str_of(&r["requests"]["cpu"], what)), bytes(str_of(&r["requests"]["memory"], what)));
    let (lc, lm) = (millicores(str_of(&r["limits"]["cpu"], what)), bytes(str_of(&r["limits"]["memory"], what)));
    assert!(rc <= lc && rm <= lm, "{what}: requests above limits: {r}");
    if let Some((max_cpu, max_mem)) = max_requests {
        assert!(rc <= max_cpu && rm <= max_mem, "{what}: requests {r} above {max_cpu}m / {max_mem} bytes");
    }
}

/// An HTTP probe's path, and the container port number it targets (resolving a named port).
fn probe(c: &Value, which: &str) -> (String, u64) {
    let get = &c[which]["httpGet"];
    let path = str_of(&get["path"], which).to_string();
    let port = match &get["port"] {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{which} names port {name}, which the container lacks"))["containerPort"]
            .as_u64()
            .unwrap(),
        other => panic!("{which} has no port: {other}"),
    };
    (path, port)
}

/// The `[server] retention` of the server's rendered config.
fn retention(docs: &[Value]) -> String {
    let toml_text = str_of(&config_map(docs, "lumen-server-config")["data"]["config.toml"], "config.toml");
    let table: toml::Table = toml::from_str(toml_text).unwrap();
    table["server"]["retention"].as_str().unwrap().to_string()
}

fn volume<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The `env` entry `name` of a container, which must come from a key of the Secret `lumen-secrets` (the
/// pod does not start without it); the key.
fn secret_env<'a>(c: &'a Value, name: &str, what: &str) -> &'a str {
    let entry =
        c["env"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{what}: no {name}"));
    let key_ref = &entry["valueFrom"]["secretKeyRef"];
    assert_eq!(key_ref["name"], "lumen-secrets", "{what}: {name} secret name");
    assert_eq!(key_ref["optional"], false, "{what}: {name} secret optional");
    str_of(&key_ref["key"], name)
}

fn mount<'a>(c: &'a Value, path: &str) -> &'a Value {
    c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"))
}

#[test]
fn every_kustomization_renders_and_validates_against_kubernetes_1_33() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ALL {
        let yaml = render(sub);
        let objects = yaml_documents(&yaml).len();
        assert!(objects >= 9, "{sub}: only {objects} objects rendered");
        let file = dir.path().join(format!("{}.yaml", sub.replace('/', "-")));
        std::fs::write(&file, &yaml).unwrap();
        validate(&file, objects, sub);
    }
    // The Secret's example is not rendered but must be a valid Secret too.
    validate(&kustomize_dir("base/secret.example.yaml"), 1, "base/secret.example.yaml");
}

#[test]
fn the_secret_example_holds_every_key_the_manifests_reference() {
    let example = yaml_file(&kustomize_dir("base/secret.example.yaml"));
    assert_eq!(example["metadata"]["name"], "lumen-secrets");
    let data = example["stringData"].as_object().unwrap();
    for sub in ALL {
        let docs = yaml_documents(&render(sub));
        let mut keys = Vec::new();
        let workloads = [kind(&docs, "StatefulSet"), kind(&docs, "DaemonSet"), kind(&docs, "Deployment")].concat();
        for workload in workloads {
            let spec = &workload["spec"]["template"]["spec"];
            for c in spec["containers"].as_array().unwrap() {
                for e in c["env"].as_array().into_iter().flatten() {
                    let key_ref = &e["valueFrom"]["secretKeyRef"];
                    if key_ref["name"] == "lumen-secrets" {
                        keys.push(str_of(&key_ref["key"], "key").to_string());
                    }
                }
            }
            for v in spec["volumes"].as_array().into_iter().flatten() {
                if v["secret"]["secretName"] == "lumen-secrets" {
                    for item in v["secret"]["items"].as_array().expect("a Secret volume lists its items") {
                        keys.push(str_of(&item["key"], "key").to_string());
                    }
                }
            }
        }
        assert!(keys.contains(&"auth-token".to_string()), "{sub}: the token is not wired: {keys:?}");
        for key in keys {
            assert!(data.contains_key(&key), "{sub}: secret.example.yaml lacks the key {key}");
        }
    }
    // The example's token is a placeholder the server refuses (under 16 characters), not a usable token.
    assert!(example["stringData"]["auth-token"].as_str().unwrap().len() < 16);
    let readme = std::fs::read_to_string(kustomize_dir("README.md")).unwrap();
    assert!(readme.contains("--from-literal=auth-token=\"$(openssl rand -hex 32)\""), "README: how to make it");
}

#[test]
fn rendered_manifests_hold_what_the_deployment_needs() {
    for sub in ALL {
        let docs = yaml_documents(&render(sub));
        let what = |s: &str| format!("{sub}: {s}");

        // Every object is part of lumen and, unless cluster-scoped, in namespace lumen; no Secret is committed.
        for d in &docs {
            let k = str_of(&d["kind"], "kind");
            assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/part-of"], "lumen", "{}", what(k));
            if !matches!(k, "Namespace" | "ClusterRole" | "ClusterRoleBinding") {
                assert_eq!(d["metadata"]["namespace"], "lumen", "{}", what(k));
            }
        }
        assert!(kind(&docs, "Secret").is_empty(), "{}", what("a Secret is rendered"));
        // The data volume lives in the namespace: Argo CD must neither delete it with the Application nor prune it.
        let namespace = one(&docs, "Namespace", "lumen");
        let sync_options = namespace["metadata"]["annotations"]["argocd.argoproj.io/sync-options"].as_str();
        assert_eq!(sync_options, Some("Delete=false,Prune=false"), "{}", what("Namespace sync options"));

        // The server.
        let sts = one(&docs, "StatefulSet", "lumen");
        let replicas = if sub == DISTRIBUTED { 3 } else { 1 };
        assert_eq!(sts["spec"]["replicas"], replicas, "{}", what("replicas"));
        let pod = &sts["spec"]["template"];
        let ann = &pod["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/scrape"], "true", "{}", what("server scrape annotation"));
        assert_eq!(ann["prometheus.io/port"], "9700", "{}", what("server scrape port"));
        // With tokens on, the agent scrapes the server with its token only when the pod asks for it.
        assert_eq!(ann["lumen.io/scrape-token"], "true", "{}", what("server scrape-token annotation"));
        let sec = &pod["spec"]["securityContext"];
        assert_eq!(sec["runAsNonRoot"], true, "{}", what("server runAsNonRoot"));
        assert_eq!(sec["runAsUser"], 65532, "{}", what("server runAsUser"));
        assert_eq!(sec["fsGroup"], 65532, "{}", what("server fsGroup"));
        let c = container(sts);
        assert_eq!(c["image"], "ghcr.io/lumen-project/lumen:0.1.0", "{}", what("server image"));
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{}", what("server root fs"));
        assert_eq!(probe(c, "livenessProbe"), ("/health".to_string(), 9700), "{}", what("server liveness"));
        assert_eq!(probe(c, "readinessProbe"), ("/ready".to_string(), 9700), "{}", what("server readiness"));
        assert_eq!(secret_env(c, "LUMEN_MQTT_LISTENER_PASSWORD", &what("server")), "mqtt-password");
        // Authentication: the server listens on 0.0.0.0, so it needs the token, from the Secret only.
        assert_eq!(secret_env(c, "LUMEN_AUTH_TOKEN", &what("server")), "auth-token");
        let server_toml = str_of(&config_map(&docs, "lumen-server-config")["data"]["config.toml"], "config.toml");
        let server_table: toml::Table = toml::from_str(server_toml).unwrap();
        assert_eq!(server_table["server"]["http_addr"].as_str(), Some("0.0.0.0:9700"), "{}", what("http_addr"));
        for key in ["auth_file", "allow_unauthenticated"] {
            assert!(server_table["server"].get(key).is_none(), "{}", what(&format!("server.{key} is set")));
        }
        let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args, ["server", "--config", "/etc/lumen/config.toml"], "{}", what("server args"));
        let config_volume = str_of(&mount(c, "/etc/lumen")["name"], "mount name");
        let server_config = config_map(&docs, "lumen-server-config");
        assert_eq!(volume(sts, config_volume)["configMap"]["name"], server_config["metadata"]["name"]);
        assert!(server_config["data"]["config.toml"].is_string(), "{}", what("server config.toml"));
        let data = str_of(&mount(c, "/var/lib/lumen")["name"], "mount name");
        let claim = sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["metadata"]["name"] == data)
            .unwrap_or_else(|| panic!("{}", what("/var/lib/lumen is not a volumeClaimTemplate")));
        let storage = str_of(&claim["spec"]["resources"]["requests"]["storage"], "storage").to_string();
        let storage_class = claim["spec"]["storageClassName"].as_str().map(String::from);
        // The disk budget: about 80% of the volume this overlay requests (the rest is headroom for the WAL and
        // compaction), parsed as the server parses it.
        let budget = server_table["server"]
            .get("retention_max_disk")
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("{}", what("no server.retention_max_disk")));
        let budget_bytes = budget.parse::<bytesize::ByteSize>().unwrap_or_else(|e| panic!("{}", what(&e))).as_u64();
        let volume_bytes = bytes(&storage);
        assert!(
            (volume_bytes * 75..=volume_bytes * 85).contains(&(budget_bytes * 100)),
            "{}",
            what(&format!("retention_max_disk {budget} is not about 80% of the {storage} volume"))
        );
        // The same MQTT topic templates as Docker Compose.
        let compose_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose/lumen.toml");
        let compose: toml::Table = toml::from_str(&std::fs::read_to_string(compose_path).unwrap()).unwrap();
        assert_eq!(server_table["mqtt"]["topics"], compose["mqtt"]["topics"], "{}", what("mqtt.topics"));

        let svc = one(&docs, "Service", "lumen");
        let mut ports: Vec<(String, u64)> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["port"].as_u64().unwrap()))
            .collect();
        ports.sort();
        let expected = [("http", 9700u64), ("mqtt", 1883), ("otlp-grpc", 4317)].map(|(n, p)| (n.to_string(), p));
        assert_eq!(ports, expected, "{}", what("Service lumen ports"));
        assert_eq!(svc["spec"]["selector"], sts["spec"]["selector"]["matchLabels"], "{}", what("Service selector"));

        // The agent.
        let ds = one(&docs, "DaemonSet", "lumen-agent");
        let pod = &ds["spec"]["template"];
        assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9701", "{}", what("agent scrape port"));
        assert_eq!(pod["spec"]["serviceAccountName"], "lumen-agent", "{}", what("agent service account"));
        let tolerates_all = pod["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none());
        assert!(tolerates_all, "{}", what("the agent does not tolerate every taint"));
        let c = container(ds);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{}", what("agent root fs"));
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{}", what("agent escalation"));
        assert_eq!(probe(c, "livenessProbe"), ("/health".to_string(), 9701), "{}", what("agent liveness"));
        assert_eq!(probe(c, "readinessProbe"), ("/ready".to_string(), 9701), "{}", what("agent readiness"));
        let node_name = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "NODE_NAME")
            .unwrap_or_else(|| panic!("{}", what("no NODE_NAME")));
        assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName", "{}", what("NODE_NAME"));
        let pods = mount(c, "/var/log/pods");
        assert_eq!(pods["readOnly"], true, "{}", what("/var/log/pods is not read-only"));
        let pods_volume = volume(ds, str_of(&pods["name"], "mount name"));
        assert_eq!(pods_volume["hostPath"]["path"], "/var/log/pods", "{}", what("pods hostPath"));
        let state = volume(ds, str_of(&mount(c, "/var/lib/lumen-agent")["name"], "mount name"));
        assert_eq!(state["hostPath"]["path"], "/var/lib/lumen-agent", "{}", what("state hostPath"));
        assert_eq!(state["hostPath"]["type"], "DirectoryOrCreate", "{}", what("state hostPath type"));
        let agent_config = config_map(&docs, "lumen-agent-config");
        let config_volume = str_of(&mount(c, "/etc/lumen")["name"], "mount name");
        assert_eq!(volume(ds, config_volume)["configMap"]["name"], agent_config["metadata"]["name"]);
        // The agent's token: the file its config names is the Secret's auth-token key, mounted read-only.
        let agent_table: toml::Table =
            toml::from_str(str_of(&agent_config["data"]["config.toml"], "agent config.toml")).unwrap();
        let token_file = agent_table["agent"]
            .get("bearer_token_file")
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("{}", what("the agent has no bearer_token_file")));
        let (dir, file) = token_file.rsplit_once('/').unwrap();
        let token_mount = mount(c, dir);
        assert_eq!(token_mount["readOnly"], true, "{}", what("the token mount is not read-only"));
        let token_volume = &volume(ds, str_of(&token_mount["name"], "mount name"))["secret"];
        assert_eq!(token_volume["secretName"], "lumen-secrets", "{}", what("token Secret"));
        assert_eq!(token_volume["optional"], false, "{}", what("token Secret optional"));
        let items = token_volume["items"].as_array().unwrap_or_else(|| panic!("{}", what("token items")));
        assert_eq!(items.len(), 1, "{}", what("only the token is mounted into the agent"));
        assert_eq!((&items[0]["key"], &items[0]["path"]), (&Value::from("auth-token"), &Value::from(file)));
        assert!(c["env"].as_array().unwrap().iter().all(|e| e["name"] != "LUMEN_AUTH_TOKEN"), "{}", what("agent env"));

        // The agent's RBAC: get/list/watch on pods and nodes, bound to its ServiceAccount.
        one(&docs, "ServiceAccount", "lumen-agent");
        let role = one(&docs, "ClusterRole", "lumen-agent");
        for resource in ["pods", "nodes"] {
            for verb in ["get", "list", "watch"] {
                let allowed = role["rules"].as_array().unwrap().iter().any(|r| {
                    r["apiGroups"].as_array().unwrap().iter().any(|g| g == "")
                        && r["resources"].as_array().unwrap().iter().any(|x| x == resource)
                        && r["verbs"].as_array().unwrap().iter().any(|x| x == verb)
                });
                assert!(allowed, "{}", what(&format!("the agent may not {verb} {resource}")));
            }
        }
        let binding = one(&docs, "ClusterRoleBinding", "lumen-agent");
        assert_eq!(binding["roleRef"]["name"], "lumen-agent", "{}", what("roleRef"));
        let subject = &binding["subjects"][0];
        assert_eq!(subject["kind"], "ServiceAccount", "{}", what("subject kind"));
        assert_eq!(subject["name"], "lumen-agent", "{}", what("subject name"));
        assert_eq!(subject["namespace"], "lumen", "{}", what("subject namespace"));

        // Resources: homelab-sized requests everywhere but prod.
        let small = sub != PROD;
        check_resources(container(sts), &what("server"), small.then_some((250, 256 << 20)));
        check_resources(container(ds), &what("agent"), small.then_some((50, 64 << 20)));

        // What each overlay changes.
        match sub {
            BASE => {
                assert_eq!(retention(&docs), "30d");
                assert_eq!(storage, "10Gi");
                assert_eq!(storage_class, None);
            }
            DEV => {
                assert_eq!(retention(&docs), "3d");
                assert!(bytes(&storage) <= 10 << 30, "dev volume {storage}");
            }
            PROD => {
                assert_eq!(retention(&docs), "90d");
                assert_eq!(storage, "100Gi");
                assert_eq!(storage_class.as_deref(), Some("fast-ssd"));
                // Larger than the base.
                let r = &container(sts)["resources"]["requests"];
                assert!(bytes(str_of(&r["memory"], "memory")) > 256 << 20, "prod server requests {r}");
            }
            K3S => {
                assert_eq!(retention(&docs), "30d");
                assert_eq!(storage_class.as_deref(), Some("local-path"));
                let ingress = one(&docs, "Ingress", "lumen");
                assert_eq!(ingress["spec"]["ingressClassName"], "traefik");
                let rule = &ingress["spec"]["rules"][0];
                assert_eq!(rule["host"], "lumen.local");
                let path = &rule["http"]["paths"][0];
                assert_eq!(path["path"], "/");
                assert_eq!(path["backend"]["service"]["name"], "lumen");
                assert_eq!(path["backend"]["service"]["port"]["number"], 9700);
                let mqtt = one(&docs, "Service", "lumen-mqtt");
                assert_eq!(mqtt["spec"]["ports"][0]["port"], 1883);
                assert_eq!(mqtt["spec"]["selector"], sts["spec"]["selector"]["matchLabels"]);
            }
            S3 | DISTRIBUTED => {
                assert_eq!(retention(&docs), "365d");
                assert_eq!(storage, "10Gi");
                let config: toml::Table =
                    toml::from_str(str_of(&config_map(&docs, "lumen-server-config")["data"]["config.toml"], "config"))
                        .unwrap();
                let st = &config["storage"];
                assert_eq!(st["backend"].as_str(), Some("s3"));
                assert!(st.get("access_key_id_file").is_none(), "credentials come from the Secret's env");
                // The cache stays below the disk budget (the server refuses it otherwise; checked below).
                assert_eq!(st["cache_max_bytes"].as_str(), Some("5GiB"));
                let c = container(sts);
                for (var, key) in
                    [("AWS_ACCESS_KEY_ID", "access-key-id"), ("AWS_SECRET_ACCESS_KEY", "secret-access-key")]
                {
                    let e = c["env"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|e| e["name"] == var)
                        .unwrap_or_else(|| panic!("no {var}"));
                    let r = &e["valueFrom"]["secretKeyRef"];
                    assert_eq!(
                        (r["name"].as_str(), r["key"].as_str(), r["optional"].as_bool()),
                        (Some("lumen-bucket"), Some(key), Some(false))
                    );
                }
                // Query nodes: a Deployment on the same config and bucket, `--role query`, a cache volume
                // that holds cache_max_bytes, the token and the bucket's credentials, a Service of their own
                // that the writer's Service does not share.
                let query = one(&docs, "Deployment", "lumen-query");
                let qc = container(query);
                let args: Vec<&str> = qc["args"].as_array().unwrap().iter().map(|a| str_of(a, "arg")).collect();
                let urls = if sub == DISTRIBUTED {
                    // Every ingest pod by its DNS name under the headless Service the StatefulSet names; each
                    // pod an ingest node named by its host name (no node name set).
                    assert_eq!(sts["spec"]["serviceName"], "lumen-nodes");
                    let nodes = one(&docs, "Service", "lumen-nodes");
                    assert_eq!(nodes["spec"]["clusterIP"], "None");
                    assert_eq!(nodes["spec"]["publishNotReadyAddresses"], true);
                    let writes = one(&docs, "Service", "lumen");
                    assert_eq!(writes["spec"]["publishNotReadyAddresses"], false, "writes to ready pods only");
                    assert_eq!(writes["spec"]["sessionAffinity"], "ClientIP");
                    for (k, v) in nodes["spec"]["selector"].as_object().unwrap() {
                        assert_eq!(
                            &sts["spec"]["template"]["metadata"]["labels"][k], v,
                            "lumen-nodes selects the ingest pods"
                        );
                    }
                    let role = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "LUMEN_ROLE").cloned();
                    assert_eq!(role.map(|e| e["value"].clone()), Some(Value::from("ingest")));
                    let envs = c["env"].as_array().unwrap();
                    assert!(!envs.iter().any(|e| e["name"] == "LUMEN_NODE_NAME"), "the host name is the node name");
                    let rules =
                        qc["env"].as_array().unwrap().iter().find(|e| e["name"] == "LUMEN_RULES_ON_QUERY_NODES");
                    assert_eq!(
                        rules.map(|e| e["value"].clone()),
                        Some(Value::from("true")),
                        "the query nodes run the rules"
                    );
                    let urls = (0..3)
                        .map(|i| format!("http://lumen-{i}.lumen-nodes.lumen.svc:9700"))
                        .collect::<Vec<_>>()
                        .join(",");
                    let peers = envs.iter().find(|e| e["name"] == "LUMEN_INGEST_URLS").map(|e| e["value"].clone());
                    assert_eq!(peers, Some(Value::from(urls.as_str())), "each ingest pod knows every other");
                    // The compactor: the same image, config, token and bucket credentials, `--role compactor`.
                    let compactor = one(&docs, "Deployment", "lumen-compactor");
                    let cc = container(compactor);
                    let args: Vec<&str> = cc["args"].as_array().unwrap().iter().map(|a| str_of(a, "arg")).collect();
                    assert_eq!(args, ["server", "--config", "/etc/lumen/config.toml", "--role", "compactor"]);
                    assert_eq!(cc["image"], c["image"]);
                    assert_eq!(
                        volume(compactor, "config")["configMap"]["name"],
                        volume(sts, "config")["configMap"]["name"]
                    );
                    assert_eq!(secret_env(cc, "LUMEN_AUTH_TOKEN", "compactor"), "auth-token");
                    let cenv: Vec<&str> =
                        cc["env"].as_array().unwrap().iter().map(|e| str_of(&e["name"], "env")).collect();
                    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                        assert!(cenv.contains(&var), "the compactor lacks {var}: {cenv:?}");
                    }
                    assert_eq!(mount(cc, "/var/lib/lumen")["name"], "data");
                    assert_eq!(probe(cc, "readinessProbe").0, "/ready");
                    check_resources(cc, "compactor", None);
                    let labels = &compactor["spec"]["template"]["metadata"]["labels"];
                    for svc in ["lumen", "lumen-query", "lumen-nodes"] {
                        let selector = one(&docs, "Service", svc)["spec"]["selector"].as_object().unwrap();
                        assert!(selector.iter().any(|(k, v)| &labels[k] != v), "{svc} selects the compactor");
                    }
                    urls
                } else {
                    "http://lumen:9700".to_string()
                };
                assert_eq!(
                    args,
                    ["server", "--config", "/etc/lumen/config.toml", "--role", "query", "--ingest-url", urls.as_str()]
                );
                // The URL it asks for what the writer has not synced is the writer's Service.
                let writer = one(&docs, "Service", "lumen");
                assert_eq!(writer["spec"]["ports"][0]["port"], 9700);
                assert_eq!(writer["spec"]["selector"]["app.kubernetes.io/component"], "server");
                assert_eq!(qc["image"], c["image"], "the writer's image");
                assert_eq!(
                    volume(query, "config")["configMap"]["name"],
                    volume(sts, "config")["configMap"]["name"],
                    "the writer's config"
                );
                assert_eq!(secret_env(qc, "LUMEN_AUTH_TOKEN", "query"), "auth-token");
                let envs: Vec<&str> = qc["env"].as_array().unwrap().iter().map(|e| str_of(&e["name"], "env")).collect();
                for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                    assert!(envs.contains(&var), "query nodes lack {var}: {envs:?}");
                }
                assert!(!envs.contains(&"LUMEN_MQTT_LISTENER_PASSWORD"), "query nodes run no MQTT endpoint");
                let cache = volume(query, "data");
                let size = bytes(str_of(&cache["emptyDir"]["sizeLimit"], "the cache's sizeLimit"));
                assert!(size > 5 << 30, "the cache volume ({size} bytes) must hold cache_max_bytes and a fetch");
                assert_eq!(mount(qc, "/var/lib/lumen")["name"], "data");
                assert_eq!(probe(qc, "readinessProbe").0, "/ready");
                check_resources(qc, "query", None);
                let pod_labels = &query["spec"]["template"]["metadata"]["labels"];
                let service = one(&docs, "Service", "lumen-query");
                assert_eq!(service["spec"]["ports"][0]["port"], 9700);
                for (k, v) in service["spec"]["selector"].as_object().unwrap() {
                    assert_eq!(&pod_labels[k], v, "lumen-query selects the query pods");
                }
                let writer_selector = one(&docs, "Service", "lumen")["spec"]["selector"].as_object().unwrap();
                assert!(
                    writer_selector.iter().any(|(k, v)| &pod_labels[k] != v),
                    "the writer's Service `lumen` must not send shippers' writes to query pods"
                );
            }
            _ => unreachable!(),
        }
    }
}

fn config_check(file: &Path) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_lumen")).args(["config", "check", "--config"]).arg(file).output().unwrap();
    assert!(out.status.success(), "lumen config check {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kustomize_config_files_pass_config_check() {
    // The server's configs listen on 0.0.0.0: they pass with the token the pod gets, and not without it.
    for file in
        ["base/config/server.toml", "overlays/dev/server.toml", "overlays/prod/server.toml", "overlays/s3/server.toml"]
    {
        server_check_needs_the_token(&kustomize_dir(file), file);
    }
    config_check(&kustomize_dir("base/config/agent.toml"));
    // And what the overlays actually put into the ConfigMaps.
    let dir = tempfile::tempdir().unwrap();
    for sub in ALL {
        let docs = yaml_documents(&render(sub));
        if sub == S3 || sub == DISTRIBUTED {
            // The ingest nodes, the query nodes and the compactor run the same file, each with its role.
            let file = dir.path().join("s3-server.toml");
            std::fs::write(&file, str_of(&config_map(&docs, "lumen-server-config")["data"]["config.toml"], "config"))
                .unwrap();
            for role in [
                &["--role", "ingest", "--node-name", "lumen-0"][..],
                &["--role", "query"],
                &["--role", "compactor", "--node-name", "lumen-compactor-x"],
            ] {
                let out = Command::new(env!("CARGO_BIN_EXE_lumen"))
                    .arg("server")
                    .args(role)
                    .args(["--check", "--config"])
                    .arg(&file)
                    .env("LUMEN_AUTH_TOKEN", super::deploy::DEPLOY_TOKEN)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "s3 {role:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        for prefix in ["lumen-server-config", "lumen-agent-config"] {
            let file = dir.path().join(format!("{}-{prefix}.toml", sub.replace('/', "-")));
            std::fs::write(&file, str_of(&config_map(&docs, prefix)["data"]["config.toml"], prefix)).unwrap();
            if prefix == "lumen-server-config" {
                server_check_needs_the_token(&file, &format!("{sub}: {prefix}"));
            } else {
                config_check(&file);
            }
        }
    }
}

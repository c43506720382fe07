//! The Helm chart in deploy/helm/lumen, checked without a helm binary: Chart.yaml's fields, values.yaml
//! against values.schema.json (and bad values rejected by it), the templates' action syntax, the YAML
//! skeleton of the manifest templates, the token wiring (server environment, agent token file, Grafana data
//! sources), the optional query nodes (a Deployment on the server's config and bucket), and the config files the chart renders with its default values passing `lumen config check`
//! (the server's with the token, as deployed). Needs python3 with PyYAML and jsonschema.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::deploy::server_check_needs_the_token;
use crate::yaml::yaml_documents;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/lumen")
}

fn read(rel: &str) -> String {
    let path = chart().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs a python3 script with `stdin` as its input and the given arguments, asserting success; its stdout.
fn python(script: &str, args: &[&Path], stdin: &str) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    // Python reads all of stdin before it writes, so writing first cannot deadlock; the handle is dropped
    // at the end of the statement, which closes the pipe.
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn yaml_file(rel: &str) -> Value {
    let mut docs = yaml_documents(&read(rel));
    assert_eq!(docs.len(), 1, "{rel} holds one YAML document");
    docs.remove(0)
}

/// The template files (name, text), in name order.
fn templates() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(chart().join("templates"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn chart_yaml_names_the_chart_and_its_versions() {
    let chart_yaml = yaml_file("Chart.yaml");
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["name"], "lumen");
    assert_eq!(chart_yaml["version"], "0.1.0");
    // A string, not a number: Helm wants appVersion quoted.
    assert_eq!(chart_yaml["appVersion"], "0.1.0");
    assert_eq!(chart_yaml["kubeVersion"], ">=1.25.0-0");
    assert!(!chart_yaml["description"].as_str().unwrap_or("").is_empty(), "Chart.yaml needs a description");
}

#[test]
fn values_validate_against_the_schema_and_bad_values_do_not() {
    // Each mutation of the default values must be rejected; the script names any that is accepted.
    let script = r#"
import copy, json, sys, yaml, jsonschema
values = yaml.safe_load(open(sys.argv[1]))
schema = json.load(open(sys.argv[2]))
jsonschema.Draft7Validator.check_schema(schema)
jsonschema.validate(values, schema)

def set_(path, value):
    def apply(v):
        *parents, last = path.split(".")
        for p in parents:
            v = v[p]
        v[last] = value
    return apply

def delete(path):
    def apply(v):
        *parents, last = path.split(".")
        for p in parents:
            v = v[p]
        del v[last]
    return apply

bad = {
    "negative port": set_("server.service.ports.http", -1),
    "port beyond 65535": set_("server.service.ports.mqtt", 70000),
    "port as a string": set_("server.service.ports.otlpGrpc", "4317"),
    "unknown key under server": set_("server.replica", 2),
    "no server replica": set_("server.replicas", 0),
    "unknown top-level key": set_("serverr", {}),
    "unknown key under agent": set_("agent.podDir", "/var/log/pods"),
    "service type not in the enum": set_("server.service.type", "ExternalName"),
    "pull policy not in the enum": set_("image.pullPolicy", "Sometimes"),
    "log format not in the enum": set_("log.format", "xml"),
    "enabled not a boolean": set_("agent.enabled", "yes"),
    "empty secret name": set_("mqtt.listener.existingSecret", ""),
    "missing secret name": delete("mqtt.listener.existingSecret"),
    "missing server section": delete("server"),
    "bad retention": set_("server.retention", "a month"),
    "relative pods dir": set_("agent.podsDir", "var/log/pods"),
    "scrape target not a URL": set_("agent.scrapeTargets", ["127.0.0.1:9100"]),
    "broker URL not mqtt": set_("mqtt.broker.url", "http://broker:1883"),
    "settings holding a table": set_("server.settings", {"limits": {"a": 1}}),
    "negative grace period": set_("server.terminationGracePeriodSeconds", -5),
    "bad volume size": set_("server.persistence.size", "ten gigs"),
    "bad disk budget": set_("server.retentionMaxDisk", "most of it"),
    "negative disk budget": set_("server.retentionMaxDisk", "-1GiB"),
    "missing auth section": delete("auth"),
    "storage backend not in the enum": set_("storage.backend", "gcs"),
    "s3 without a bucket": set_("storage.backend", "s3"),
    "keepCommits of 0": set_("storage.keepCommits", 0),
    "sync interval without a unit": set_("storage.syncInterval", "10"),
    "cache bound not a size": set_("storage.cacheMaxBytes", "half the disk"),
    "empty token secret name": set_("auth.existingSecret", ""),
    "auth enabled not a boolean": set_("auth.enabled", "yes"),
    "unknown key under auth": set_("auth.token", "0123456789abcdef"),
    "token env not a variable name": set_("grafana.datasource.tokenEnv", "$LUMEN_AUTH_TOKEN"),
    "tenant with a slash": set_("grafana.datasource.tenant", "a/b"),
    "negative query replicas": set_("query.replicas", -1),
    "query replicas not an integer": set_("query.replicas", 1.5),
    "unknown key under query": set_("query.replica", 2),
    "bad query cache volume size": set_("query.cacheVolumeSize", "8 gigs"),
    "missing query section": delete("query"),
}
accepted = []
for name, mutate in bad.items():
    v = copy.deepcopy(values)
    mutate(v)
    try:
        jsonschema.validate(v, schema)
        accepted.append(name)
    except jsonschema.ValidationError:
        pass

# Documented overrides stay valid.
good = copy.deepcopy(values)
good["server"]["settings"] = {"max_labels_per_stream": 20, "max_request_size": "32 MiB"}
good["server"]["resources"]["limits"].pop("cpu")
good["mqtt"]["broker"].update(url="mqtts://broker.example:8883", username="lumen", existingSecret="broker-secret")
good["agent"]["scrapeTargets"] = ["http://127.0.0.1:9100/metrics"]
good["agent"]["settings"] = {"tenant": "home", "pod_labels": ["app"], "honor_labels": True}
good["ingress"].update(enabled=True, className="nginx", host="lumen.home.arpa")
good["server"]["service"]["type"] = "LoadBalancer"
good["global"] = {"imageRegistry": "registry.example"}
good["auth"].update(existingSecret="lumen-token", tokenKey="token")
good["grafana"]["datasource"].update(tenant="home", tokenEnv="LUMEN_TOKEN")
good["server"]["retentionMaxDisk"] = "40GiB"
good["server"]["persistence"]["size"] = "50Gi"
jsonschema.validate(good, schema)
# The documented opt-out: no token, but then explicitly unauthenticated.
off = copy.deepcopy(values)
off["auth"]["enabled"] = False
off["server"]["settings"] = {"allow_unauthenticated": True}
jsonschema.validate(off, schema)
# No disk budget at all, explicitly.
no_budget = copy.deepcopy(values)
no_budget["server"]["retentionMaxDisk"] = "0"
jsonschema.validate(no_budget, schema)
# A bucket: s3 with a bucket name, endpoint, Secret.
s3 = copy.deepcopy(values)
s3["storage"].update({"backend": "s3", "bucket": "lumen", "endpoint": "http://minio.minio:9000",
                      "allowHttp": True, "existingSecret": "lumen-bucket", "cacheMaxBytes": "4GiB"})
jsonschema.validate(s3, schema)
# Query nodes on that bucket, spread over nodes.
query = copy.deepcopy(s3)
query["query"].update({"replicas": 2, "cacheVolumeSize": "16Gi", "podAnnotations": {"team": "obs"},
                       "nodeSelector": {"disk": "ssd"}, "tolerations": [{"operator": "Exists"}],
                       "affinity": {"podAntiAffinity": {}}})
query["query"]["resources"]["limits"]["memory"] = "1Gi"
jsonschema.validate(query, schema)
print(json.dumps({"accepted": accepted, "checked": len(bad)}))
"#;
    let values = chart().join("values.yaml");
    let schema = chart().join("values.schema.json");
    let out = python(script, &[values.as_path(), schema.as_path()], "");
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["accepted"], serde_json::json!([]), "the schema accepts bad values: {}", result["accepted"]);
    assert_eq!(result["checked"], 39);
}

#[test]
fn the_schema_closes_the_value_sections() {
    let schema: Value = serde_json::from_str(&read("values.schema.json")).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    for section in
        ["image", "server", "auth", "storage", "query", "mqtt", "agent", "serviceAccount", "rbac", "grafana", "ingress"]
    {
        assert_eq!(schema["properties"][section]["additionalProperties"], false, "{section} is open");
    }
    // Every top-level value of values.yaml is described by the schema, and the other way round, but for
    // `global`, which Helm passes down from a parent chart.
    let values = yaml_file("values.yaml");
    let mut in_values: Vec<&String> = values.as_object().unwrap().keys().collect();
    let mut in_schema: Vec<&String> =
        schema["properties"].as_object().unwrap().keys().filter(|k| k.as_str() != "global").collect();
    in_values.sort();
    in_schema.sort();
    assert_eq!(in_values, in_schema);
}

#[test]
fn every_value_is_documented_with_a_comment() {
    // Each line setting a scalar or an empty collection follows a comment line (or belongs to a list,
    // or to a section whose comment covers it: the resources' cpu and memory, the probes of a list).
    let text = read("values.yaml");
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((_, value)) = trimmed.split_once(':') else { continue };
        if value.trim().is_empty() {
            continue; // a section heading
        }
        let is_leaf_of_resources = matches!(trimmed.split(':').next(), Some("cpu" | "memory"));
        if is_leaf_of_resources {
            continue;
        }
        let previous = lines[..i].iter().rev().find(|l| !l.trim().is_empty()).copied().unwrap_or("");
        assert!(
            previous.trim_start().starts_with('#'),
            "values.yaml line {}: `{}` has no comment above it",
            i + 1,
            line.trim()
        );
    }
}

/// The actions of a template: the text between `{{` and `}}`, with the trim markers.
fn actions(name: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").unwrap_or_else(|| panic!("{name}: a `{{{{` is never closed"));
        let inner = &after[..end];
        assert!(!inner.contains("{{"), "{name}: `{{{{` inside an action: {inner}");
        found.push(inner.to_string());
        rest = &after[end + 2..];
    }
    found
}

#[test]
fn template_actions_balance_and_use_the_trim_markers_correctly() {
    for (name, text) in templates() {
        assert_eq!(text.matches("{{").count(), text.matches("}}").count(), "{name}: `{{{{` and `}}}}` counts differ");
        let mut depth: i64 = 0;
        for inner in actions(&name, &text) {
            // `{{-` and `-}}` trim only when a space separates them from the action ({{-3}} is a number).
            if let Some(after) = inner.strip_prefix('-') {
                assert!(after.starts_with([' ', '\n', '\t']), "{name}: `{{{{-` without a space: {{{{{inner}}}}}");
            }
            if let Some(before) = inner.strip_suffix('-') {
                assert!(before.ends_with([' ', '\n', '\t']), "{name}: `-}}}}` without a space: {{{{{inner}}}}}");
            }
            let body = inner.trim_start_matches('-').trim_end_matches('-').trim();
            if body.starts_with("/*") {
                assert!(body.ends_with("*/"), "{name}: an unclosed comment: {body}");
                continue;
            }
            let word = body.split_whitespace().next().unwrap_or("");
            match word {
                "if" | "with" | "range" | "define" | "block" => depth += 1,
                "end" => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "{name}: an `end` without its block");
        }
        assert_eq!(depth, 0, "{name}: a block is never ended");
    }
}

/// The template with every line that is only an action (control flow, `include ... | nindent`,
/// `toYaml`) dropped and every other action replaced by a placeholder.
fn skeleton(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("{{") && trimmed.ends_with("}}") && trimmed.matches("{{").count() == 1 {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            out.push_str("placeholder");
            let end = rest[start..].find("}}").unwrap() + start + 2;
            rest = &rest[end..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

#[test]
fn manifest_templates_are_yaml_once_the_actions_are_placeholders() {
    // Sound for these templates because every action either fills a scalar or stands alone on its line
    // (whose output, indented by nindent, is a block of its own); both branches of an if/else stay in,
    // which YAML tolerates. _helpers.tpl and NOTES.txt are not YAML.
    let expected: &[(&str, &[&str])] = &[
        ("agent-configmap.yaml", &["ConfigMap"]),
        ("agent-daemonset.yaml", &["DaemonSet"]),
        ("compactor-deployment.yaml", &["Deployment"]),
        ("grafana-datasource.yaml", &["ConfigMap"]),
        ("ingress.yaml", &["Ingress"]),
        ("query-deployment.yaml", &["Deployment", "Service"]),
        ("rbac.yaml", &["ClusterRole", "ClusterRoleBinding"]),
        ("server-configmap.yaml", &["ConfigMap"]),
        ("server-service.yaml", &["Service", "Service"]),
        ("server-statefulset.yaml", &["StatefulSet"]),
        ("serviceaccount.yaml", &["ServiceAccount"]),
    ];
    let names: Vec<String> = templates().into_iter().map(|(n, _)| n).filter(|n| n.ends_with(".yaml")).collect();
    let listed: Vec<String> = expected.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names, listed, "a template is not checked here");
    for (name, kinds) in expected {
        let docs = yaml_documents(&skeleton(&read(&format!("templates/{name}"))));
        let found: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap_or("?")).collect();
        assert_eq!(found, kinds.to_vec(), "{name}");
    }
}

#[test]
fn query_nodes_follow_the_bucket_on_the_servers_config() {
    // Off by default (the single server answers everything), and only with the server and a bucket.
    let values = yaml_file("values.yaml");
    assert_eq!(values["query"]["replicas"], 0, "no query nodes unless asked for");
    assert_eq!(values["query"]["cacheVolumeSize"], "8Gi");
    let text = read("templates/query-deployment.yaml");
    assert!(
        text.starts_with("{{- if and .Values.server.enabled (gt (int .Values.query.replicas) 0) }}\n"),
        "query-deployment.yaml is not gated on server.enabled and query.replicas > 0"
    );
    assert!(
        text.contains("{{- if ne .Values.storage.backend \"s3\" }}\n{{- fail \"query.replicas > 0: query nodes follow a bucket: set storage.backend=s3"),
        "query-deployment.yaml does not refuse query nodes without a bucket"
    );
    // The skeleton keeps both branches of every `if`: the whole Deployment and Service.
    let docs = yaml_documents(&skeleton(&text));
    let (deployment, service) = (&docs[0], &docs[1]);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!([
            "server",
            "--config",
            "/etc/lumen/config.toml",
            "--role",
            "query",
            "--ingest-url",
            "placeholder"
        ]),
        "a query node runs `lumen server --role query` on the server's config file, asking the server"
    );
    assert!(
        text.contains(r#""--ingest-url", {{ include "lumen.ingestUrls" . | quote }}]"#),
        "query nodes ask the server's Service for what it has not synced"
    );
    let env: Vec<&str> = container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        env,
        ["LUMEN_AUTH_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LUMEN_RULES_ON_QUERY_NODES"],
        "the token and the bucket's keys only"
    );
    let ports: Vec<&str> = container["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(ports, ["http"]);
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    // The server's ConfigMap; the data directory is an emptyDir (a cache refilled from the bucket).
    let volume = |name: &str| pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned();
    assert_eq!(volume("config").unwrap()["configMap"]["name"], "placeholder-server-config");
    assert!(text.contains("            name: {{ include \"lumen.fullname\" . }}-server-config\n"));
    assert!(read("templates/server-configmap.yaml").contains("name: {{ include \"lumen.fullname\" . }}-server-config"));
    assert!(volume("data").unwrap()["emptyDir"].is_object(), "the data volume is not an emptyDir");
    assert!(text.contains("          emptyDir:\n            sizeLimit: {{ .Values.query.cacheVolumeSize | quote }}"));
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["name"] == "data" && m["mountPath"] == "/var/lib/lumen"), "no data directory");
    // The query Service selects the query pods, the server's Service the server's pod only: writes sent to
    // the server's Service never reach a query node (which would refuse them).
    let component = serde_json::json!({"app.kubernetes.io/component": "query"});
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], component);
    assert_eq!(deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"], "query");
    assert_eq!(service["spec"]["selector"], component);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["ports"][0]["name"], "http");
    let server_component = serde_json::json!({"app.kubernetes.io/component": "server"});
    let server_service = yaml_documents(&skeleton(&read("templates/server-service.yaml")));
    assert_eq!(server_service[0]["spec"]["selector"], server_component, "the server's Service would select query pods");
    let statefulset = yaml_documents(&skeleton(&read("templates/server-statefulset.yaml")));
    assert_eq!(statefulset[0]["spec"]["selector"]["matchLabels"], server_component);
    // Documented: what they do, their lag, where Grafana points; NOTES.txt lists them only when they run.
    let readme = read("README.md");
    for needle in ["### Query nodes", "--role query", "query.replicas", "`<fullname>-query`", "storage.syncInterval"] {
        assert!(readme.contains(needle), "README.md lacks `{needle}`");
    }
    let notes = read("templates/NOTES.txt");
    assert!(notes.contains("{{- if gt (int .Values.query.replicas) 0 }}"));
    assert!(notes.contains("http://{{ $fullname }}-query.{{ $ns }}.svc:"));
}

#[test]
fn the_grafana_data_sources_are_loki_and_prometheus_with_the_sidecar_label() {
    let text = read("templates/grafana-datasource.yaml");
    // With query nodes, Grafana queries them rather than the server.
    assert!(
        text.contains("{{- if gt (int .Values.query.replicas) 0 }}\n{{- $service = printf \"%s-query\" $service }}"),
        "grafana-datasource.yaml does not point at the query nodes when they run"
    );
    for needle in [
        "kind: ConfigMap",
        "lumen-datasources.yaml: |",
        "apiVersion: 1",
        "datasources:",
        "type: loki",
        "type: prometheus",
        "uid: lumen-logs",
        "uid: lumen-metrics",
        "name: Lumen Logs",
        "name: Lumen Metrics",
        "{{ .Values.grafana.datasource.label }}: {{ .Values.grafana.datasource.labelValue | quote }}",
    ] {
        assert!(text.contains(needle), "grafana-datasource.yaml lacks `{needle}`");
    }
    // With auth on, both send basic auth: the tenant, and the token Grafana expands from its environment
    // ("$LUMEN_AUTH_TOKEN"), so that the token is never in the ConfigMap.
    for needle in [
        "{{- if .Values.auth.enabled }}",
        "basicAuth: true",
        "basicAuthUser: {{ .Values.grafana.datasource.tenant | quote }}",
        "secureJsonData:",
        "basicAuthPassword: {{ printf \"$%s\" .Values.grafana.datasource.tokenEnv | quote }}",
    ] {
        assert_eq!(text.matches(needle).count(), 2, "grafana-datasource.yaml: `{needle}` in both data sources");
    }
    assert!(!text.contains("auth.existingSecret") && !text.contains("tokenKey"), "the ConfigMap reads no Secret");
    let values = yaml_file("values.yaml");
    let datasource = &values["grafana"]["datasource"];
    assert_eq!(datasource["enabled"], true);
    assert_eq!(datasource["label"], "grafana_datasource");
    assert_eq!(datasource["labelValue"], "1");
    assert_eq!(datasource["tenant"], "default");
    assert_eq!(datasource["tokenEnv"], "LUMEN_AUTH_TOKEN");
    let notes = read("templates/NOTES.txt");
    assert!(notes.contains("envValueFrom"), "NOTES.txt says how Grafana gets the token");
}

#[test]
fn the_chart_references_the_secret_and_never_creates_one() {
    for (name, text) in templates() {
        assert!(!text.contains("kind: Secret"), "{name} creates a Secret");
    }
    // The write Service: ready pods only, and a client keeps its pod (retries reach the node that stored).
    let service = read("templates/server-service.yaml");
    assert!(service.contains(
        "  publishNotReadyAddresses: {{ le (int .Values.server.replicas) 1 }}\n  {{- if gt (int .Values.server.replicas) 1 }}\n  sessionAffinity: ClientIP\n  {{- end }}\n"
    ));
    let helpers = read("templates/_helpers.tpl");
    assert!(helpers.contains("required"), "the secret name is not `required`");
    assert!(
        helpers.contains("{{- define \"lumen.authSecretName\" -}}\n{{- required "),
        "the token's Secret name is not `required`"
    );
    let values = yaml_file("values.yaml");
    assert_eq!(values["mqtt"]["listener"]["existingSecret"], "lumen-secrets");
    assert_eq!(values["mqtt"]["listener"]["passwordKey"], "mqtt-password");
    let statefulset = read("templates/server-statefulset.yaml");
    assert!(statefulset.contains("LUMEN_MQTT_LISTENER_PASSWORD") && statefulset.contains("secretKeyRef"));
    let notes = read("templates/NOTES.txt");
    assert!(notes.contains("kubectl create secret generic"), "NOTES.txt does not say how to create the Secret");
    assert!(notes.contains("--from-literal={{ .Values.auth.tokenKey }}=\"$(openssl rand -hex 32)\""));
    assert!(notes.contains("SealedSecret") && notes.contains("SOPS"));
    let readme = read("README.md");
    assert!(readme.contains("helm install lumen deploy/helm/lumen -n lumen --create-namespace"));
    assert!(readme.contains("--from-literal=mqtt-password="));
    assert!(readme.contains("--from-literal=auth-token=\"$(openssl rand -hex 32)\""));
}

#[test]
fn authentication_is_on_with_the_token_from_the_secret() {
    let values = yaml_file("values.yaml");
    assert_eq!(
        values["auth"],
        serde_json::json!({"enabled": true, "existingSecret": "lumen-secrets", "tokenKey": "auth-token"})
    );
    // The server: LUMEN_AUTH_TOKEN from the Secret, never optional.
    let server = read("templates/server-statefulset.yaml");
    for needle in [
        "{{- if or .Values.auth.enabled .Values.mqtt.listener.enabled .Values.mqtt.broker.existingSecret .Values.storage.existingSecret (gt (int .Values.server.replicas) 1) }}\n          env:",
        "            - name: LUMEN_AUTH_TOKEN\n              valueFrom:\n                secretKeyRef:\n                  name: {{ include \"lumen.authSecretName\" . }}\n                  key: {{ .Values.auth.tokenKey }}\n                  optional: false",
        // Without a token the server would not start (it listens on 0.0.0.0): the chart says so at once.
        "{{- fail ",
        "\"allow_unauthenticated\"",
    ] {
        assert!(server.contains(needle), "server-statefulset.yaml lacks `{needle}`");
    }
    // The query nodes: the same token, the same way; no MQTT password (they run no MQTT).
    let query = read("templates/query-deployment.yaml");
    for needle in [
        "{{- if or .Values.auth.enabled .Values.storage.existingSecret (gt (int .Values.server.replicas) 1) }}\n          env:",
        "            - name: LUMEN_AUTH_TOKEN\n              valueFrom:\n                secretKeyRef:\n                  name: {{ include \"lumen.authSecretName\" . }}\n                  key: {{ .Values.auth.tokenKey }}\n                  optional: false",
    ] {
        assert!(query.contains(needle), "query-deployment.yaml lacks `{needle}`");
    }
    for needle in ["LUMEN_MQTT", "mqttSecretName", ".Values.mqtt.", "lumen.secretsDir"] {
        assert!(!query.contains(needle), "query-deployment.yaml names `{needle}`: query nodes run no MQTT");
    }
    // The agents: the token key alone, mounted read-only where agent.bearer_token_file points.
    let agent = read("templates/agent-daemonset.yaml");
    for needle in [
        "            - name: secrets\n              mountPath: {{ include \"lumen.secretsDir\" . }}\n              readOnly: true",
        "        - name: secrets\n          secret:\n            secretName: {{ include \"lumen.authSecretName\" . }}\n            optional: false",
        "              - key: {{ .Values.auth.tokenKey }}\n                path: {{ .Values.auth.tokenKey }}",
    ] {
        assert!(agent.contains(needle), "agent-daemonset.yaml lacks `{needle}`");
    }
    assert!(!agent.contains("LUMEN_AUTH_TOKEN"), "the agent reads the token from a file, not the environment");
    let helpers = read("templates/_helpers.tpl");
    assert!(helpers.contains(
        "{{- $_ := set $agent \"bearer_token_file\" (printf \"%s/%s\" (include \"lumen.secretsDir\" .) .Values.auth.tokenKey) }}"
    ));
    // The rendered agent config (AGENT_CONFIG) names that file; the server config none of the token.
    let agent_config: toml::Table = toml::from_str(AGENT_CONFIG).unwrap();
    let bearer_token_file = agent_config["agent"].get("bearer_token_file").and_then(toml::Value::as_str);
    assert_eq!(bearer_token_file, Some("/etc/lumen-secrets/auth-token"));
    assert!(!SERVER_CONFIG.contains("auth_file") && !SERVER_CONFIG.contains("allow_unauthenticated"));
    let readme = read("README.md");
    assert!(readme.contains("LUMEN_AUTH_TOKEN") && readme.contains("auth.existingSecret"));
}

/// What the server's pod and a query node's pod both carry: the hardened user and root filesystem, the
/// probes, and the scrape annotations of port 9700.
const SERVER_POD: [&str; 7] = [
    "runAsUser: 65532",
    "runAsNonRoot: true",
    "readOnlyRootFilesystem: true",
    "path: /health",
    "path: /ready",
    "prometheus.io/scrape: \"true\"",
    "prometheus.io/port: \"9700\"",
];

#[test]
fn the_workloads_carry_what_the_deployment_depends_on() {
    let server = read("templates/server-statefulset.yaml");
    for needle in SERVER_POD.iter().copied().chain([
        "kind: StatefulSet",
        "prometheus.io/path: /metrics",
        "lumen.io/scrape-token: \"true\"",
        "containerPort: 9700",
        "containerPort: 4317",
        "containerPort: 1883",
        "mountPath: /var/lib/lumen",
        "volumeClaimTemplates:",
        "args: [\"server\", \"--config\", \"/etc/lumen/config.toml\"]",
    ]) {
        assert!(server.contains(needle), "server-statefulset.yaml lacks `{needle}`");
    }
    let agent = read("templates/agent-daemonset.yaml");
    for needle in [
        "kind: DaemonSet",
        "name: NODE_NAME",
        "fieldPath: spec.nodeName",
        "type: DirectoryOrCreate",
        "readOnly: true",
        "path: /health",
        "path: /ready",
        "prometheus.io/port: \"9701\"",
        "containerPort: 9701",
        "args: [\"agent\", \"--config\", \"/etc/lumen/config.toml\"]",
        // The reason the agent runs as root is written next to it.
        "# Root, but only to read other containers' logs",
    ] {
        assert!(agent.contains(needle), "agent-daemonset.yaml lacks `{needle}`");
    }
    let rbac = read("templates/rbac.yaml");
    assert!(
        rbac.contains("resources: [\"pods\", \"nodes\"]") && rbac.contains("verbs: [\"get\", \"list\", \"watch\"]")
    );
    let query = read("templates/query-deployment.yaml");
    for needle in SERVER_POD.iter().copied().chain([
        "kind: Deployment",
        "name: {{ include \"lumen.fullname\" . }}-query",
        "replicas: {{ int .Values.query.replicas }}",
        "lumen.io/scrape-token: \"true\"",
        // The server's config, so a change of it rolls the query pods too.
        "checksum/config: {{ include \"lumen.serverConfig\" . | sha256sum }}",
        "containerPort: 9700",
        "mountPath: /var/lib/lumen",
        "args: [\"server\", \"--config\", \"/etc/lumen/config.toml\", \"--role\", \"query\", \"--ingest-url\",",
        "{{- toYaml .Values.query.resources | nindent 12 }}",
    ]) {
        assert!(query.contains(needle), "query-deployment.yaml lacks `{needle}`");
    }
    // HTTP only, and no volume of its own to claim.
    for needle in ["containerPort: 4317", "containerPort: 1883", "volumeClaimTemplates", "persistentVolumeClaim"] {
        assert!(!query.contains(needle), "query-deployment.yaml holds `{needle}`");
    }
    let service = read("templates/server-service.yaml");
    for port in ["name: http", "name: otlp-grpc", "name: mqtt"] {
        assert!(service.contains(port), "server-service.yaml lacks `{port}`");
    }
    let values = yaml_file("values.yaml");
    assert_eq!(values["image"]["repository"], "ghcr.io/lumen-project/lumen");
    assert_eq!(values["server"]["service"]["ports"], serde_json::json!({"http": 9700, "otlpGrpc": 4317, "mqtt": 1883}));
    assert_eq!(
        values["server"]["resources"],
        serde_json::json!({"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    assert_eq!(
        values["agent"]["resources"],
        serde_json::json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}})
    );
    assert_eq!(values["query"]["resources"], values["server"]["resources"], "a query node is sized as the server");
}

/// The server's config.toml as "lumen.serverConfig" renders it with the default values and release
/// `lumen` (traced by hand through _helpers.tpl: the keys of a table come out in key order).
const SERVER_CONFIG: &str = r#"# Lumen server configuration, rendered by the lumen Helm chart from its values.
# Every key and its default: deploy/config.example.toml.

[log]
format = "text"
level = "info"

[server]
data_dir = "/var/lib/lumen"
http_addr = "0.0.0.0:9700"
mqtt_listen = "0.0.0.0:1883"
otlp_grpc_addr = "0.0.0.0:4317"
retention = "30d"
retention_max_disk = "8GiB"
# The token is not in this file: LUMEN_AUTH_TOKEN, from the Secret lumen-secrets (key auth-token).

[mqtt]
topics = ["devices/{site}/{device}/telemetry","spBv1.0/#"]

[mqtt.listener]
username = "devices"
# From the Secret lumen-secrets (key mqtt-password), mounted as a file.
password_file = "/etc/lumen-secrets/mqtt-password"
"#;

/// The agent's config.toml as "lumen.agentConfig" renders it with the default values and release `lumen`.
const AGENT_CONFIG: &str = r#"# Lumen agent configuration, rendered by the lumen Helm chart from its values.
# Every key and its default: deploy/config.example.toml.

[log]
format = "text"
level = "info"

[agent]
bearer_token_file = "/etc/lumen-secrets/auth-token"
data_dir = "/var/lib/lumen-agent"
http_addr = "0.0.0.0:9701"
node_metrics = true
pods_dir = "/var/log/pods"
proc_dir = "/host/proc"
scrape_interval = "15s"
scrape_targets = []
server = "http://lumen:9700"
sys_dir = "/host/sys"
"#;

/// The server's config with server.settings, a broker with its Secret, topics and server.extraConfig as
/// values.yaml describes them: the appended tables must not clash with the rendered ones.
const SERVER_CONFIG_WITH_EXTRAS: &str = r#"[log]
format = "json"
level = "info"

[server]
data_dir = "/var/lib/lumen"
http_addr = "0.0.0.0:9700"
max_labels_per_stream = 20
max_request_size = "32 MiB"
mqtt_listen = "0.0.0.0:1883"
otlp_grpc_addr = "0.0.0.0:4317"
retention = "90d"
retention_max_disk = "8 GiB"

[mqtt]
topics = ["devices/{site}/{device}/telemetry","spBv1.0/#"]

[mqtt.listener]
username = "devices"
password_file = "/etc/lumen-secrets/mqtt-password"

[mqtt.broker]
url = "mqtts://broker.example:8883"
username = "lumen"
password_file = "/etc/lumen-secrets/mqtt-broker-password"

# server.extraConfig
[store]
zstd_level = 5

[[mqtt.templates]]
topic = "home/{room}/temperature"
format = "plain"
labels = { site = "home" }
"#;

/// The server's config with `storage.backend: s3`, a bucket on a MinIO in the cluster and its Secret, and
/// `storage.cacheMaxBytes: 4GiB` (below the default disk budget of 8GiB).
const SERVER_CONFIG_WITH_STORAGE: &str = r#"[log]
format = "text"
level = "info"

[server]
data_dir = "/var/lib/lumen"
http_addr = "0.0.0.0:9700"
mqtt_listen = "0.0.0.0:1883"
otlp_grpc_addr = "0.0.0.0:4317"
retention = "30d"
retention_max_disk = "8GiB"

[mqtt]
topics = ["devices/{site}/{device}/telemetry","spBv1.0/#"]

[storage]
backend = "s3"
bucket = "lumen"
prefix = "home"
endpoint = "http://minio.minio:9000"
region = ""
allow_http = true
sync_interval = "10s"
keep_commits = 3
cache_max_bytes = "4GiB"
# The credentials are not in this file: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, from the Secret lumen-bucket.
"#;

/// The agent's config with agent.settings (tenant, a list, a boolean) and an [agent.parse] extraConfig.
const AGENT_CONFIG_WITH_EXTRAS: &str = r#"[log]
format = "text"
level = "info"

[agent]
bearer_token_file = "/etc/lumen-secrets/auth-token"
data_dir = "/var/lib/lumen-agent"
honor_labels = true
http_addr = "0.0.0.0:9701"
node_metrics = false
pod_labels = ["app"]
pods_dir = "/var/log/pods"
scrape_interval = "30s"
scrape_targets = ["http://127.0.0.1:9100/metrics"]
server = "http://lumen:9700"
tenant = "home"

# agent.extraConfig
[agent.parse]
format = "auto"
exclude_namespaces = ["kube-system"]
"#;

fn config_check(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, text).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_lumen")).args(["config", "check", "--config"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{what} fails `lumen config check`: {}", String::from_utf8_lossy(&out.stderr));
}

/// A server config listens on 0.0.0.0: it passes `lumen server --check` with LUMEN_AUTH_TOKEN (as the pod
/// gets it from the Secret), and not without.
fn server_check(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, text).unwrap();
    server_check_needs_the_token(&file, what);
}

#[test]
fn the_rendered_config_files_pass_lumen_config_check() {
    server_check(SERVER_CONFIG, "the server's default config");
    config_check(AGENT_CONFIG, "the agent's default config");
    server_check(SERVER_CONFIG_WITH_EXTRAS, "the server's config with settings and extraConfig");
    config_check(AGENT_CONFIG_WITH_EXTRAS, "the agent's config with settings and extraConfig");
    server_check(SERVER_CONFIG_WITH_STORAGE, "the server's config with storage.backend s3");
    let storage: toml::Table = toml::from_str(SERVER_CONFIG_WITH_STORAGE).unwrap();
    assert!(!SERVER_CONFIG_WITH_STORAGE.contains("key_id_file"), "the credentials come from the Secret's env");
    assert_eq!(storage["storage"]["backend"].as_str(), Some("s3"));

    // The hand-rendered text follows from the helpers and the defaults: the fixed parts are in
    // _helpers.tpl, the variable ones in values.yaml.
    let helpers = read("templates/_helpers.tpl");
    for needle in [
        "\"data_dir\" \"/var/lib/lumen\"",
        "\"http_addr\" \"0.0.0.0:9700\"",
        "\"otlp_grpc_addr\" \"0.0.0.0:4317\"",
        "$mqttListen = \"0.0.0.0:1883\"",
        "\"http_addr\" \"0.0.0.0:9701\"",
        "\"proc_dir\" \"/host/proc\"",
        "\"sys_dir\" \"/host/sys\"",
        "/etc/lumen-secrets",
        "# Lumen server configuration, rendered by the lumen Helm chart from its values.",
        "# Lumen agent configuration, rendered by the lumen Helm chart from its values.",
        "# From the Secret {{ include \"lumen.mqttSecretName\" . }} (key {{ .Values.mqtt.listener.passwordKey }}), mounted as a file.",
        "# The token is not in this file: LUMEN_AUTH_TOKEN, from the Secret {{ include \"lumen.authSecretName\" . }} (key {{ .Values.auth.tokenKey }}).",
        "printf \"http://%s:%v\"",
        "{{- $_ := set $server \"retention_max_disk\" (include \"lumen.retentionMaxDisk\" .) -}}",
        "{{- define \"lumen.retentionMaxDisk\" -}}",
        "{{- if .Values.server.retentionMaxDisk -}}",
        "{{- if eq .Values.storage.backend \"s3\" }}",
        "bucket = {{ required \"storage.bucket is required with storage.backend s3\" .Values.storage.bucket | toJson }}",
        "allow_http = {{ .Values.storage.allowHttp }}",
        "keep_commits = {{ .Values.storage.keepCommits }}",
        "{{- with .Values.storage.cacheMaxBytes }}\ncache_max_bytes = {{ toJson . }}",
        "# The credentials are not in this file: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, from the Secret {{ .Values.storage.existingSecret }}.",
    ] {
        assert!(helpers.contains(needle), "_helpers.tpl lacks `{needle}`");
    }
    let values = yaml_file("values.yaml");
    assert_eq!(values["log"], serde_json::json!({"level": "info", "format": "text"}));
    assert_eq!(values["server"]["retention"], "30d");
    // The disk budget is derived from the volume: 80% of 10Gi is the "8GiB" of SERVER_CONFIG.
    assert_eq!(values["server"]["retentionMaxDisk"], "");
    assert_eq!(values["server"]["persistence"]["size"], "10Gi");
    assert_eq!(values["mqtt"]["listener"]["enabled"], true);
    assert_eq!(values["mqtt"]["listener"]["username"], "devices");
    // The same templates as Docker Compose's lumen.toml.
    assert_eq!(values["mqtt"]["topics"], serde_json::json!(["devices/{site}/{device}/telemetry", "spBv1.0/#"]));
    assert_eq!(values["mqtt"]["broker"]["url"], "");
    assert_eq!(values["server"]["extraConfig"], "");
    assert_eq!(values["agent"]["server"], "");
    assert_eq!(values["agent"]["podsDir"], "/var/log/pods");
    assert_eq!(values["agent"]["stateDir"], "/var/lib/lumen-agent");
    assert_eq!(values["agent"]["scrapeTargets"], serde_json::json!([]));
    assert_eq!(values["agent"]["scrapeInterval"], "15s");
    assert_eq!(values["agent"]["nodeMetrics"], true);
    assert_eq!(values["agent"]["hostProcSys"], true);
    assert_eq!(values["agent"]["extraConfig"], "");
    assert_eq!(values["fullnameOverride"], "");
    assert_eq!(values["storage"]["backend"], "local", "single-node local disk stays the default");
    assert_eq!(values["storage"]["syncInterval"], "10s");
    assert_eq!(values["storage"]["keepCommits"], 3);
    assert_eq!(values["storage"]["cacheMaxBytes"], "", "no cache bound unless set");
    // With a Secret, the server and the query nodes get the bucket's credentials as AWS_* variables, never
    // optional.
    for name in ["server-statefulset.yaml", "query-deployment.yaml", "compactor-deployment.yaml"] {
        let workload = read(&format!("templates/{name}"));
        for key in ["accessKeyIdKey", "secretAccessKeyKey"] {
            assert!(
                workload.contains(&format!(
                    "                secretKeyRef:\n                  name: {{{{ .Values.storage.existingSecret }}}}\n                  key: {{{{ .Values.storage.{key} }}}}\n                  optional: false"
                )),
                "{name} does not take {key} from storage.existingSecret"
            );
        }
        assert!(
            workload.contains("- name: AWS_ACCESS_KEY_ID") && workload.contains("- name: AWS_SECRET_ACCESS_KEY"),
            "{name} lacks the AWS_* variables"
        );
    }
}

#[test]
fn several_servers_are_ingest_nodes_the_query_nodes_find_by_their_pod_names() {
    // One server by default; more are ingest nodes, only with a bucket and query nodes (the chart fails
    // otherwise, with what to set).
    let values = yaml_file("values.yaml");
    assert_eq!(values["server"]["replicas"], 1, "one server unless asked for");
    let sts = read("templates/server-statefulset.yaml");
    assert!(sts.contains("  replicas: {{ int .Values.server.replicas }}\n"), "the StatefulSet ignores server.replicas");
    assert!(
        sts.contains("{{- if gt (int .Values.server.replicas) 1 }}\n{{- if ne .Values.storage.backend \"s3\" }}\n{{- fail \"server.replicas > 1: several servers run as ingest nodes"),
        "several servers without a bucket are not refused"
    );
    assert!(sts.contains(
        "{{- if eq (int .Values.query.replicas) 0 }}\n{{- fail \"server.replicas > 1: each ingest node answers only"
    ));
    // Each pod runs as an ingest node; its node name is its host name, which a StatefulSet makes its pod
    // name (lumen-0, lumen-1, ...), stable across restarts: the name of its tree in the bucket.
    assert!(sts.contains(
        "            {{- if gt (int .Values.server.replicas) 1 }}\n            # One of several ingest nodes (server.role): it writes its own tree of the bucket, nodes/<pod name>/,\n            # and evaluates no rules.\n            - name: LUMEN_ROLE\n              value: ingest\n            # Every ingest pod: an agent's batch marked as resent is stored only if none of them stored it\n            # (a retry that lands on another pod than the first attempt).\n            - name: LUMEN_INGEST_URLS\n              value: {{ include \"lumen.ingestUrls\" . | quote }}\n            {{- end }}"
    ));
    assert!(!sts.contains("node-name") && !sts.contains("LUMEN_NODE_NAME"), "the host name is the node name");
    // The query nodes evaluate the rules then, which the ingest nodes do not.
    assert!(read("templates/query-deployment.yaml").contains(
        "            {{- if gt (int .Values.server.replicas) 1 }}\n            # Several ingest nodes evaluate no rules: the query nodes do (ruler.on_query_nodes), reading every\n            # node and writing the rules' samples through one.\n            - name: LUMEN_RULES_ON_QUERY_NODES\n              value: \"true\"\n            {{- end }}"
    ));
    // The pods' DNS names come from the headless Service the StatefulSet names; the query nodes ask each.
    assert!(sts.contains(
        "  serviceName: {{ include \"lumen.fullname\" . }}{{ if gt (int .Values.server.replicas) 1 }}-nodes{{ end }}\n"
    ));
    let services = yaml_documents(&skeleton(&read("templates/server-service.yaml")));
    let headless = &services[1];
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(headless["spec"]["selector"], serde_json::json!({"app.kubernetes.io/component": "server"}));
    assert!(read("templates/server-service.yaml").contains("  name: {{ include \"lumen.fullname\" . }}-nodes\n"));
    let helpers = read("templates/_helpers.tpl");
    assert!(helpers.contains(
        "{{- range $i := until (int .Values.server.replicas) -}}\n{{- $urls = append $urls (printf \"http://%s-%d.%s-nodes.%s.svc:%v\" $full $i $full $.Release.Namespace $port) -}}"
    ), "the query nodes' ingest URLs are not <fullname>-<i>.<fullname>-nodes.<namespace>.svc");
    assert!(helpers.contains("{{- join \",\" $urls -}}"), "--ingest-url takes a comma-separated list");
    assert!(helpers.contains("{{- printf \"http://%s:%v\" $full $port -}}"), "one server: its Service");
    // The server's flag takes the comma-separated list as the helper renders it.
    let out = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["server", "--check", "--role", "query", "--ingest-url"])
        .arg("http://lumen-0.lumen-nodes.obs.svc:9700,http://lumen-1.lumen-nodes.obs.svc:9700")
        .env("LUMEN_STORAGE_BACKEND", "s3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("ingest_urls"), "{err}");
    // A compactor only on request, only beside ingest nodes on a bucket, running `--role compactor` on the
    // server's config (the chart fails otherwise, saying what to set).
    assert_eq!(values["compactor"]["replicas"], 0, "no compactor unless asked for");
    let compactor = read("templates/compactor-deployment.yaml");
    for needle in [
        "{{- if and .Values.server.enabled (gt (int .Values.compactor.replicas) 0) }}\n{{- if ne .Values.storage.backend \"s3\" }}\n{{- fail \"compactor.replicas > 0:",
        "{{- if le (int .Values.server.replicas) 1 }}\n{{- fail \"compactor.replicas > 0: the compactor tends the trees of ingest nodes",
        "args: [\"server\", \"--config\", \"/etc/lumen/config.toml\", \"--role\", \"compactor\"]",
        "name: {{ include \"lumen.fullname\" . }}-server-config",
        "app.kubernetes.io/component: compactor",
        "- name: LUMEN_AUTH_TOKEN",
    ] {
        assert!(compactor.contains(needle), "compactor-deployment.yaml lacks `{needle}`");
    }
    // A compactor pod's name (its host name) is a valid node name; the server's config on a bucket passes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[storage]\nbackend = \"s3\"\nbucket = \"lumen\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["server", "--check", "--role", "compactor", "--node-name", "lumen-compactor-5d8f-x2k9q", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Documented for people: the mode, what it needs, and how to move to it.
    let readme = read("README.md");
    assert!(
        readme.contains("server.replicas") && readme.contains("serviceName` cannot change"),
        "the README lacks the distributed mode"
    );
}

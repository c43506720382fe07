{{/*
Names, labels and the two config.toml renderers of the lumen chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "lumen.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The object name prefix: fullnameOverride, else the release name when it contains the chart name
(`helm install lumen` gives "lumen", the name of the server's Service), else "<release>-<chart>".
*/}}
{{- define "lumen.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "lumen.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; the component label is added per object. */}}
{{- define "lumen.labels" -}}
helm.sh/chart: {{ include "lumen.chart" . }}
{{ include "lumen.selectorLabels" . }}
app.kubernetes.io/part-of: lumen
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels (immutable in a StatefulSet or DaemonSet); the component label is added per workload. */}}
{{- define "lumen.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lumen.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image, tag defaulting to the chart's appVersion. */}}
{{- define "lumen.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The agent's ServiceAccount name. */}}
{{- define "lumen.agentServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-agent" (include "lumen.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret of the embedded MQTT endpoint's password: a name is required, the chart never creates it. */}}
{{- define "lumen.mqttSecretName" -}}
{{- required "mqtt.listener.existingSecret must name an existing Secret (kubectl create secret generic lumen-secrets --from-literal=auth-token=\"$(openssl rand -hex 32)\" --from-literal=mqtt-password=...)" .Values.mqtt.listener.existingSecret }}
{{- end }}

{{/* The Secret of the server's token (auth.enabled): a name is required, the chart never creates it. */}}
{{- define "lumen.authSecretName" -}}
{{- required "auth.existingSecret must name an existing Secret (kubectl create secret generic lumen-secrets --from-literal=auth-token=\"$(openssl rand -hex 32)\" --from-literal=mqtt-password=...)" .Values.auth.existingSecret }}
{{- end }}

{{/* Where the Secrets' keys are mounted in the server and agent containers. */}}
{{- define "lumen.secretsDir" -}}
/etc/lumen-secrets
{{- end }}

{{/*
The server's disk budget (server.retention_max_disk): server.retentionMaxDisk when set ("0" turns it off),
else 80% of server.persistence.size, in whole MiB, written in GiB when it is a whole number of them:
10Gi -> "8GiB", 100Gi -> "80GiB", 2Gi -> "1638MiB", 10G -> "7629MiB". The size is a Kubernetes quantity
(values.schema.json allows a number and one of k M G T P E Ki Mi Gi Ti Pi Ei): the number times its
suffix's factor, divided by 2^20, times 4, divided by 5, rounded down (Sprig's mulf and divf compute in
decimal, so 10Gi gives exactly 8192 MiB).
*/}}
{{- define "lumen.retentionMaxDisk" -}}
{{- if .Values.server.retentionMaxDisk -}}
{{- .Values.server.retentionMaxDisk -}}
{{- else -}}
{{- $size := toString .Values.server.persistence.size -}}
{{- $number := regexFind `^[0-9]+(\.[0-9]+)?` $size -}}
{{- $suffix := trimPrefix $number $size -}}
{{- $factors := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "E" 1000000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 -}}
{{- if or (not $number) (not (hasKey $factors $suffix)) -}}
{{- fail (printf "server.persistence.size %q is not a quantity like 10Gi: set server.retentionMaxDisk by hand" $size) -}}
{{- end -}}
{{- $mib := int64 (floor (divf (mulf (divf (mulf (float64 $number) (get $factors $suffix)) 1048576) 4) 5)) -}}
{{- if lt $mib 1 -}}
{{- fail (printf "server.persistence.size %q is too small for a disk budget: set server.retentionMaxDisk by hand" $size) -}}
{{- end -}}
{{- if eq (mod $mib 1024) 0 -}}
{{- printf "%dGiB" (div $mib 1024) -}}
{{- else -}}
{{- printf "%dMiB" $mib -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
Rendered `key = value` lines of one TOML table from a dict, in key order. toJson writes strings, numbers,
booleans and lists of them in a form TOML reads the same (JSON string escapes are TOML escapes).
*/}}
{{- define "lumen.tomlKeys" -}}
{{- range $key, $value := . }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}

{{/*
The server's config.toml. The keys the chart sets (listen addresses, data directory, secrets) win over
server.settings; server.extraConfig is appended as it is. Every key: deploy/config.example.toml.
*/}}
{{- define "lumen.serverConfig" -}}
{{- $mqttListen := "off" }}
{{- if .Values.mqtt.listener.enabled }}
{{- $mqttListen = "0.0.0.0:1883" }}
{{- end }}
{{- $server := deepCopy (.Values.server.settings | default dict) }}
{{- $_ := set $server "data_dir" "/var/lib/lumen" }}
{{- $_ := set $server "http_addr" "0.0.0.0:9700" }}
{{- $_ := set $server "otlp_grpc_addr" "0.0.0.0:4317" }}
{{- $_ := set $server "mqtt_listen" $mqttListen }}
{{- $_ := set $server "retention" .Values.server.retention }}
{{- $_ := set $server "retention_max_disk" (include "lumen.retentionMaxDisk" .) -}}
# Lumen server configuration, rendered by the lumen Helm chart from its values.
# Every key and its default: deploy/config.example.toml.

[log]
{{- include "lumen.tomlKeys" (dict "level" .Values.log.level "format" .Values.log.format) }}

[server]
{{- include "lumen.tomlKeys" $server }}
{{- if .Values.auth.enabled }}
# The token is not in this file: LUMEN_AUTH_TOKEN, from the Secret {{ include "lumen.authSecretName" . }} (key {{ .Values.auth.tokenKey }}).
{{- end }}

[mqtt]
topics = {{ toJson (.Values.mqtt.topics | default list) }}
{{- if .Values.mqtt.listener.enabled }}

[mqtt.listener]
username = {{ toJson .Values.mqtt.listener.username }}
# From the Secret {{ include "lumen.mqttSecretName" . }} (key {{ .Values.mqtt.listener.passwordKey }}), mounted as a file.
password_file = {{ printf "%s/%s" (include "lumen.secretsDir" .) .Values.mqtt.listener.passwordKey | toJson }}
{{- end }}
{{- if .Values.mqtt.broker.url }}

[mqtt.broker]
url = {{ toJson .Values.mqtt.broker.url }}
{{- if .Values.mqtt.broker.username }}
username = {{ toJson .Values.mqtt.broker.username }}
{{- end }}
{{- if .Values.mqtt.broker.existingSecret }}
# From the Secret {{ .Values.mqtt.broker.existingSecret }} (key {{ .Values.mqtt.broker.passwordKey }}), mounted as a file.
password_file = {{ printf "%s/%s" (include "lumen.secretsDir" .) .Values.mqtt.broker.passwordKey | toJson }}
{{- end }}
{{- end }}
{{- if eq .Values.storage.backend "s3" }}

[storage]
backend = "s3"
bucket = {{ required "storage.bucket is required with storage.backend s3" .Values.storage.bucket | toJson }}
prefix = {{ toJson .Values.storage.prefix }}
endpoint = {{ toJson .Values.storage.endpoint }}
region = {{ toJson .Values.storage.region }}
allow_http = {{ .Values.storage.allowHttp }}
sync_interval = {{ toJson .Values.storage.syncInterval }}
keep_commits = {{ .Values.storage.keepCommits }}
{{- with .Values.storage.cacheMaxBytes }}
cache_max_bytes = {{ toJson . }}
{{- end }}
{{- if .Values.storage.existingSecret }}
# The credentials are not in this file: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, from the Secret {{ .Values.storage.existingSecret }}.
{{- end }}
{{- end }}
{{- with .Values.server.extraConfig }}

# server.extraConfig
{{ . }}
{{- end }}
{{- end }}

{{/* The agent's Service URL: agent.server, else this release's Service. */}}
{{- define "lumen.agentServer" -}}
{{- default (printf "http://%s:%v" (include "lumen.fullname" .) .Values.server.service.ports.http) .Values.agent.server }}
{{- end }}

{{/*
The agent's config.toml. NODE_NAME (downward API) names the node, as agent.node_name stays empty. With
auth.enabled, bearer_token_file names the token mounted from the Secret (agent-daemonset.yaml).
The keys the chart sets win over agent.settings; agent.extraConfig is appended as it is.
*/}}
{{- define "lumen.agentConfig" -}}
{{- $agent := deepCopy (.Values.agent.settings | default dict) }}
{{- $_ := set $agent "server" (include "lumen.agentServer" .) }}
{{- $_ := set $agent "pods_dir" .Values.agent.podsDir }}
{{- $_ := set $agent "data_dir" .Values.agent.stateDir }}
{{- $_ := set $agent "http_addr" "0.0.0.0:9701" }}
{{- $_ := set $agent "scrape_targets" (.Values.agent.scrapeTargets | default list) }}
{{- $_ := set $agent "scrape_interval" .Values.agent.scrapeInterval }}
{{- $_ := set $agent "node_metrics" .Values.agent.nodeMetrics }}
{{- if .Values.agent.hostProcSys }}
{{- $_ := set $agent "proc_dir" "/host/proc" }}
{{- $_ := set $agent "sys_dir" "/host/sys" }}
{{- $_ := set $agent "rootfs_dir" "/host/root" }}
{{- $_ := set $agent "journal_dirs" (list "/host/root/var/log/journal" "/host/root/run/log/journal") }}
{{- end }}
{{- if .Values.auth.enabled }}
{{- $_ := set $agent "bearer_token_file" (printf "%s/%s" (include "lumen.secretsDir" .) .Values.auth.tokenKey) }}
{{- end -}}
# Lumen agent configuration, rendered by the lumen Helm chart from its values.
# Every key and its default: deploy/config.example.toml.

[log]
{{- include "lumen.tomlKeys" (dict "level" .Values.log.level "format" .Values.log.format) }}

[agent]
{{- include "lumen.tomlKeys" $agent }}
{{- with .Values.agent.extraConfig }}

# agent.extraConfig
{{ . }}
{{- end }}
{{- end }}

{{/*
The ingest URLs a query node asks (--ingest-url, comma-separated): the server's Service for one server;
each ingest pod by its DNS name under the headless Service "<fullname>-nodes" for several.
*/}}
{{- define "lumen.ingestUrls" -}}
{{- $full := include "lumen.fullname" . -}}
{{- $port := .Values.server.service.ports.http -}}
{{- if gt (int .Values.server.replicas) 1 -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.server.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s-nodes.%s.svc:%v" $full $i $full $.Release.Namespace $port) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- printf "http://%s:%v" $full $port -}}
{{- end -}}
{{- end -}}

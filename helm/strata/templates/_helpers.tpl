{{/* Names */}}
{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name; pod names are <fullname>-meta-<i> and <fullname>-server-<i>,
and DNS labels have at most 63 characters, so it is kept to 40.
*/}}
{{- define "strata.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "strata.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "strata.meta.name" -}}{{ include "strata.fullname" . }}-meta{{- end }}
{{- define "strata.meta.headless" -}}{{ include "strata.fullname" . }}-meta-headless{{- end }}
{{- define "strata.server.name" -}}{{ include "strata.fullname" . }}-server{{- end }}
{{- define "strata.server.headless" -}}{{ include "strata.fullname" . }}-server-headless{{- end }}
{{- define "strata.compute.name" -}}{{ include "strata.fullname" . }}-compute{{- end }}

{{- define "strata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "strata.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "strata.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Labels */}}
{{- define "strata.labels" -}}
helm.sh/chart: {{ include "strata.chart" . }}
{{ include "strata.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: strata
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of a component: (dict "ctx" $ "component" "meta") */}}
{{- define "strata.componentLabels" -}}
{{ include "strata.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "strata.componentSelectorLabels" -}}
{{ include "strata.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Secrets */}}
{{- define "strata.clusterSecretName" -}}
{{- if .Values.clusterSecret.existingSecret }}
{{- .Values.clusterSecret.existingSecret }}
{{- else }}
{{- include "strata.fullname" . }}-cluster-secret
{{- end }}
{{- end }}

{{- define "strata.s3SecretName" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else }}
{{- include "strata.fullname" . }}-s3
{{- end }}
{{- end }}

{{/* Whether the servers get AWS credentials from a Secret ("true" or ""). */}}
{{- define "strata.s3HasCredentials" -}}
{{- if or .Values.s3.existingSecret .Values.s3.accessKeyId .Values.s3.secretAccessKey }}true{{ end }}
{{- end }}

{{/* Checks run by every workload: fail with a clear message. */}}
{{- define "strata.validate" -}}
{{- if not (or .Values.clusterSecret.value .Values.clusterSecret.existingSecret) }}
{{- fail "\n\nstrata: no cluster secret. Set clusterSecret.value (e.g. --set clusterSecret.value=$(openssl rand -hex 32)) or clusterSecret.existingSecret (a Secret with the key clusterSecret.existingSecretKey). The chart does not generate one, since a generated value would change on every upgrade." }}
{{- end }}
{{- if and (not .Values.etcd.embedded) (not (include "strata.etcdEndpoints" .)) }}
{{- fail "\n\nstrata: etcd.embedded is false but etcd.external.endpoints is empty: give the external etcd's client endpoints (host:port), or set etcd.embedded=true." }}
{{- end }}
{{- if and (not .Values.s3.existingSecret) (or .Values.s3.accessKeyId .Values.s3.secretAccessKey) (not (and .Values.s3.accessKeyId .Values.s3.secretAccessKey)) }}
{{- fail "\n\nstrata: give both s3.accessKeyId and s3.secretAccessKey (or s3.existingSecret)." }}
{{- end }}
{{- if lt (int .Values.meta.replicas) 1 }}
{{- fail "\n\nstrata: meta.replicas must be at least 1 (with embedded etcd: odd, e.g. 1, 3 or 5)." }}
{{- end }}
{{- if .Values.etcd.embedded }}
{{- if not .Values.meta.persistence.enabled }}
{{- fail "\n\nstrata: etcd.embedded is true but meta.persistence.enabled is false. The meta pods hold the embedded etcd's data, which on an emptyDir is lost whenever a pod restarts or moves: the member then cannot rejoin (etcd panics), and two wiped members form a new, empty cluster that loses all cluster metadata. Enable meta.persistence (meta.persistence.enabled=true), or use an external etcd (etcd.embedded=false, etcd.external.endpoints)." }}
{{- end }}
{{- if eq (mod (int .Values.meta.replicas) 2) 0 }}
{{- fail (printf "\n\nstrata: etcd.embedded is true and meta.replicas is %d: the meta pods are the embedded etcd's members, whose count must be odd (1, 3 or 5). An even count tolerates no more failures than one member fewer. Note that with embedded etcd meta.replicas is fixed at install: changing it later needs an external etcd or a reinstall." (int .Values.meta.replicas)) }}
{{- end }}
{{- /* On helm install/upgrade (not helm template, where lookup finds nothing): refuse to change the etcd membership of an existing release. */}}
{{- $sts := lookup "apps/v1" "StatefulSet" .Release.Namespace (include "strata.meta.name" .) }}
{{- if $sts }}
{{- $containers := dig "spec" "template" "spec" "containers" (list) $sts }}
{{- $args := list }}
{{- range $containers }}{{- $args = concat $args (get . "args" | default (list)) }}{{- end }}
{{- $had := int (dig "spec" "replicas" 0 $sts) }}
{{- if and (has "--embedded-etcd" $args) (ne $had (int .Values.meta.replicas)) }}
{{- fail (printf "\n\nstrata: meta.replicas is %d but the release's meta StatefulSet has %d pods, which are the embedded etcd's members: the membership is fixed at install (existing members reject a changed --initial-cluster). Keep meta.replicas=%d; to change it, move to an external etcd or reinstall (see README.md, Scaling meta)." (int .Values.meta.replicas) $had $had) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (not (kindIs "invalid" .Values.meta.config.cluster)) (not (regexMatch "^[A-Za-z0-9._-]+$" (toString .Values.meta.config.cluster))) }}
{{- fail (printf "\n\nstrata: meta.config.cluster is %q: it names the Kafka topics ({kafka.topicPrefix}-{cluster}-shard-{id}) and the S3 paths, so it must be non-empty and use only letters, digits, '.', '_' and '-'." (toString .Values.meta.config.cluster)) }}
{{- end }}
{{- if not (has (toString .Values.meta.podAntiAffinity) (list "preferred" "required" "none" "")) }}
{{- fail "\n\nstrata: meta.podAntiAffinity must be preferred, required or none." }}
{{- end }}
{{- if not (has (toString .Values.server.podAntiAffinity) (list "preferred" "required" "none" "")) }}
{{- fail "\n\nstrata: server.podAntiAffinity must be preferred, required or none." }}
{{- end }}
{{- if not (has (toString .Values.compute.podAntiAffinity) (list "preferred" "required" "none" "")) }}
{{- fail "\n\nstrata: compute.podAntiAffinity must be preferred, required or none." }}
{{- end }}
{{- end }}

{{/* A list of host:port, or one comma-separated string, as host:port,... */}}
{{- define "strata.joinList" -}}
{{- if kindIs "slice" . }}
{{- join "," . }}
{{- else if . }}
{{- toString . | nospace }}
{{- end }}
{{- end }}

{{- define "strata.kafkaBrokers" -}}
{{- include "strata.joinList" .Values.kafka.brokers }}
{{- end }}

{{- define "strata.etcdEndpoints" -}}
{{- include "strata.joinList" .Values.etcd.external.endpoints }}
{{- end }}

{{/* The stable DNS name of meta pod i: (dict "ctx" $ "i" 0) */}}
{{- define "strata.metaHost" -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "strata.meta.name" .ctx) (int .i) (include "strata.meta.headless" .ctx) .ctx.Release.Namespace .ctx.Values.clusterDomain }}
{{- end }}

{{/* Every meta pod's DNS name, comma-separated (embedded etcd's peers). */}}
{{- define "strata.metaHosts" -}}
{{- $hosts := list }}
{{- range $i := until (int .Values.meta.replicas) }}
{{- $hosts = append $hosts (include "strata.metaHost" (dict "ctx" $ "i" $i)) }}
{{- end }}
{{- join "," $hosts }}
{{- end }}

{{/* Every meta pod's gRPC endpoint, comma-separated (servers' --meta). */}}
{{- define "strata.metaEndpoints" -}}
{{- $eps := list }}
{{- range $i := until (int .Values.meta.replicas) }}
{{- $eps = append $eps (printf "%s:8850" (include "strata.metaHost" (dict "ctx" $ "i" $i))) }}
{{- end }}
{{- join "," $eps }}
{{- end }}

{{/* A TOML float: 1000 -> 1000.0 */}}
{{- define "strata.tomlFloat" -}}
{{- $s := printf "%v" (float64 .) }}
{{- if regexMatch "^-?[0-9]+$" $s }}{{ $s }}.0{{ else }}{{ $s }}{{ end }}
{{- end }}

{{/*
The pod anti-affinity rule of a component:
(dict "ctx" $ "component" "server" "mode" "preferred")
*/}}
{{- define "strata.podAntiAffinity" -}}
{{- if eq (toString .mode) "required" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "strata.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | nindent 10 }}
{{- else if eq (toString .mode) "preferred" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "strata.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end }}
{{- end }}

{{/*
The scheduling fields of a pod spec: (dict "ctx" $ "component" "server"
"values" .Values.server)
*/}}
{{- define "strata.scheduling" -}}
{{- $v := .values }}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if has (toString $v.podAntiAffinity) (list "preferred" "required") }}
affinity:
  {{- include "strata.podAntiAffinity" (dict "ctx" .ctx "component" .component "mode" $v.podAntiAffinity) | trim | nindent 2 }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* The pod-level fields shared by every workload. */}}
{{- define "strata.podCommon" -}}
serviceAccountName: {{ include "strata.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Environment of the data and compute servers (after the downward API's). */}}
{{- define "strata.serverEnv" -}}
- name: STRATA_CLUSTER_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "strata.clusterSecretName" . }}
      key: {{ .Values.clusterSecret.existingSecretKey }}
{{- with include "strata.kafkaBrokers" . }}
- name: STRATA_KAFKA_BROKERS
  value: {{ . | quote }}
{{- end }}
- name: STRATA_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
{{- with .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- if include "strata.s3HasCredentials" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "strata.s3SecretName" . }}
      key: {{ .Values.s3.existingSecretKeys.accessKeyId }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "strata.s3SecretName" . }}
      key: {{ .Values.s3.existingSecretKeys.secretAccessKey }}
{{- end }}
{{- end }}

{{/* Arguments shared by data and compute servers. */}}
{{- define "strata.serverArgs" -}}
- server
- --config
- /etc/strata/server.toml
- --meta
- {{ include "strata.metaEndpoints" . }}
- --data-dir
- /var/lib/strata/server
- --grpc-addr
- 0.0.0.0:8831
- --http-addr
- 0.0.0.0:5440
- --pg-addr
- 0.0.0.0:5433
{{- end }}

{{/*
The cluster name: meta's etcd key prefix (meta.toml `cluster`) and the
instances' [engine] cluster (Kafka topics, S3 paths). Null: meta's default.
*/}}
{{- define "strata.clusterName" -}}
{{- if kindIs "invalid" .Values.meta.config.cluster }}strata{{ else }}{{ toString .Values.meta.config.cluster }}{{ end }}
{{- end }}

{{/*
A Strata size ("2GB", "512MiB", "1g", bytes; K/M/G are powers of 1024 in
any spelling) in bytes, or "" when it does not parse.
*/}}
{{- define "strata.sizeBytes" -}}
{{- $s := trim (toString .) }}
{{- $re := "^([0-9]+(?:\\.[0-9]+)?)\\s*([A-Za-z]*)$" }}
{{- if regexMatch $re $s }}
{{- $num := regexReplaceAll $re $s "${1}" }}
{{- $unit := lower (regexReplaceAll $re $s "${2}") }}
{{- $mult := dict "" 1 "b" 1 "k" 1024 "kb" 1024 "kib" 1024 "m" 1048576 "mb" 1048576 "mib" 1048576 "g" 1073741824 "gb" 1073741824 "gib" 1073741824 }}
{{- if hasKey $mult $unit }}{{ printf "%.0f" (mulf (float64 $num) (get $mult $unit)) }}{{ end }}
{{- end }}
{{- end }}

{{/*
A Kubernetes quantity ("20Gi", "20G", bytes) in bytes, or "" when it does
not parse.
*/}}
{{- define "strata.quantityBytes" -}}
{{- $s := trim (toString .) }}
{{- $re := "^([0-9]+(?:\\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$" }}
{{- if regexMatch $re $s }}
{{- $num := regexReplaceAll $re $s "${1}" }}
{{- $unit := regexReplaceAll $re $s "${2}" }}
{{- $mult := dict "" 1.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 }}
{{- printf "%.0f" (mulf (float64 $num) (get $mult $unit)) }}
{{- end }}
{{- end }}

{{/* compute.config.cacheDiskSize as set ("" when null or empty). */}}
{{- define "strata.compute.cacheDiskSize" -}}
{{- $v := (.Values.compute.config | default dict).cacheDiskSize }}
{{- if not (kindIs "invalid" $v) }}{{ toString $v }}{{ end }}
{{- end }}

{{/* Compute checks: the disk cache must fit in the compute emptyDir. */}}
{{- define "strata.validateCompute" -}}
{{- $v := .Values.compute }}
{{- $size := include "strata.compute.cacheDiskSize" . }}
{{- $from := "compute.config.cacheDiskSize" }}
{{- if not $size }}
{{- $size = toString .Values.server.config.cacheDiskSize }}
{{- $from = "server.config.cacheDiskSize (compute.config.cacheDiskSize is unset)" }}
{{- end }}
{{- if $v.cacheSizeLimit }}
{{- $cache := include "strata.sizeBytes" $size }}
{{- $limit := include "strata.quantityBytes" $v.cacheSizeLimit }}
{{- if and $cache $limit (gt (float64 $cache) (float64 $limit)) }}
{{- fail (printf "\n\nstrata: the compute servers' disk cache, %s = %s (%s bytes; Strata's KB/MB/GB are powers of 1024), exceeds compute.cacheSizeLimit = %s (%s bytes), the size limit of their emptyDir: the kubelet would evict the pods once the cache fills. Lower compute.config.cacheDiskSize or raise compute.cacheSizeLimit." $from $size $cache (toString $v.cacheSizeLimit) $limit) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name, overridable. */}}
{{- define "jobstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "jobstream.fullname" -}}
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

{{- define "jobstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "jobstream.labels" -}}
helm.sh/chart: {{ include "jobstream.chart" . }}
{{ include "jobstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jobstream
{{- end }}

{{- define "jobstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jobstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "jobstream.secretName" -}}
{{- default (include "jobstream.fullname" .) .Values.secret.name }}
{{- end }}

{{/*
Environment of every jobstream container. Both JOBSTREAM_KAFKA_BOOTSTRAP and
JOBSTREAM_DATABASE_URL are always set: with either missing, the CLI would try to start a
local Kafka or PostgreSQL of its own.
*/}}
{{- define "jobstream.env" -}}
{{- $c := .Values.config -}}
- name: JOBSTREAM_KAFKA_BOOTSTRAP
  value: {{ required "config.kafkaBootstrap is required" $c.kafkaBootstrap | quote }}
{{- with $c.kafkaSecurity }}
{{- if ne .protocol "PLAINTEXT" }}
- name: JOBSTREAM_KAFKA_SECURITY_PROTOCOL
  value: {{ .protocol | quote }}
{{- if hasPrefix "SASL_" .protocol }}
- name: JOBSTREAM_KAFKA_SASL_MECHANISM
  value: {{ .saslMechanism | quote }}
- name: JOBSTREAM_KAFKA_SASL_USERNAME
  value: {{ required "config.kafkaSecurity.saslUsername is required with a SASL protocol" .saslUsername | quote }}
{{- end }}
{{- if .tlsSecret }}
- name: JOBSTREAM_KAFKA_SSL_CAFILE
  value: /etc/jobstream/kafka-tls/ca.crt
{{- if .clientCertificate }}
- name: JOBSTREAM_KAFKA_SSL_CERTFILE
  value: /etc/jobstream/kafka-tls/tls.crt
- name: JOBSTREAM_KAFKA_SSL_KEYFILE
  value: /etc/jobstream/kafka-tls/tls.key
{{- end }}
{{- end }}
- name: JOBSTREAM_KAFKA_SSL_CHECK_HOSTNAME
  value: {{ .checkHostname | quote }}
{{- end }}
{{- end }}
- name: JOBSTREAM_TOPIC_PREFIX
  value: {{ $c.topicPrefix | quote }}
- name: JOBSTREAM_GROUP_ID
  value: {{ $c.groupId | quote }}
- name: JOBSTREAM_PARTITIONS
  value: {{ $c.partitions | quote }}
- name: JOBSTREAM_REPLICATION_FACTOR
  value: {{ $c.replicationFactor | quote }}
- name: JOBSTREAM_CONCURRENCY
  value: {{ $c.concurrency | quote }}
- name: JOBSTREAM_SHUTDOWN_GRACE_S
  value: {{ $c.shutdownGraceSeconds | quote }}
- name: JOBSTREAM_RETRY_TIERS_S
  value: {{ $c.retryTiersSeconds | toJson | quote }}
- name: JOBSTREAM_MAX_ATTEMPTS
  value: {{ $c.maxAttempts | quote }}
- name: JOBSTREAM_RATE_LIMITS
  value: {{ $c.rateLimits | toJson | quote }}
- name: JOBSTREAM_OPENROUTER_BASE_URL
  value: {{ $c.openrouterBaseUrl | quote }}
- name: JOBSTREAM_OPENROUTER_MODEL
  value: {{ $c.openrouterModel | quote }}
- name: JOBSTREAM_LOG_LEVEL
  value: {{ $c.logLevel | quote }}
- name: JOBSTREAM_WEB_HOST
  value: "0.0.0.0"
- name: JOBSTREAM_WEB_PORT
  value: {{ $c.webPort | quote }}
{{- with .Values.app }}
- name: JOBSTREAM_APP
  value: {{ . | quote }}
{{- end }}
{{- if $c.metricsPort }}
- name: JOBSTREAM_METRICS_PORT
  value: {{ $c.metricsPort | quote }}
{{- end }}
- name: JOBSTREAM_WORKER_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- range $name, $key := .Values.secret.keys }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "jobstream.secretName" $ }}
      key: {{ $key }}
      {{- if ne $name "JOBSTREAM_DATABASE_URL" }}
      optional: true
      {{- end }}
{{- end }}
{{- range $name, $value := $c.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Writable scratch space under a read-only root filesystem. */}}
{{- define "jobstream.volumeMounts" -}}
- name: state
  mountPath: /var/lib/jobstream/state
- name: tmp
  mountPath: /tmp
{{- if .Values.config.kafkaSecurity.tlsSecret }}
- name: kafka-tls
  mountPath: /etc/jobstream/kafka-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "jobstream.volumes" -}}
- name: state
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if .Values.config.kafkaSecurity.tlsSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.config.kafkaSecurity.tlsSecret | quote }}
{{- end }}
{{- end }}

{{/* Fails the render on settings that cannot work together. */}}
{{- define "jobstream.validate" -}}
{{- if le (int .Values.worker.terminationGracePeriodSeconds) (int .Values.config.shutdownGraceSeconds) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must exceed config.shutdownGraceSeconds (%v), or Kubernetes kills workers mid-drain" .Values.worker.terminationGracePeriodSeconds .Values.config.shutdownGraceSeconds) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) (int .Values.config.partitions)) }}
{{- fail (printf "autoscaling.maxReplicas (%v) exceeds config.partitions (%v): the extra workers would get no partition" .Values.autoscaling.maxReplicas .Values.config.partitions) }}
{{- end }}
{{- end }}

{{/* The port Prometheus scrapes: config.metricsPort when set, else the web port. */}}
{{- define "jobstream.metricsPort" -}}
{{- default .Values.config.webPort .Values.config.metricsPort }}
{{- end }}

{{/* The port name Prometheus scrapes on the pods and Services. */}}
{{- define "jobstream.metricsPortName" -}}
{{- if .Values.config.metricsPort }}metrics{{ else }}http{{ end }}
{{- end }}

{{/* The container port of /metrics when it has its own (nothing otherwise). */}}
{{- define "jobstream.metricsContainerPort" -}}
{{- if .Values.config.metricsPort }}
- name: metrics
  containerPort: {{ .Values.config.metricsPort }}
  protocol: TCP
{{- end }}
{{- end }}

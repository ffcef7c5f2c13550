{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "llm-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<chart> unless the release already contains it. */}}
{{- define "llm-worker.fullname" -}}
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

{{/* "<fullname>-<suffix>", kept within 63 characters. Call with (list $ "suffix"). */}}
{{- define "llm-worker.suffixed" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "llm-worker.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "llm-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-worker.instanceLabels" -}}
app.kubernetes.io/name: {{ include "llm-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The worker pods (not the migration Job's): Deployment, Service, PDB, ServiceMonitor. */}}
{{- define "llm-worker.selectorLabels" -}}
{{ include "llm-worker.instanceLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Metadata labels of every resource (a component label is added where it applies). */}}
{{- define "llm-worker.labels" -}}
helm.sh/chart: {{ include "llm-worker.chart" . }}
{{ include "llm-worker.instanceLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-worker
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. Tag defaults to appVersion. */}}
{{- define "llm-worker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{- define "llm-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An environment value as a string. Helm reads numbers in values files as float64, so a plain
`quote` would turn 67108864 into "6.7108864e+07"; whole numbers are printed as integers.
*/}}
{{- define "llm-worker.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq (float64 (int64 .)) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "bool" . }}
{{- ternary "true" "false" . }}
{{- else if kindIs "map" . }}
{{- toJson . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* The worker's shutdown deadline (LLM_WORKER_SHUTDOWN_TIMEOUT_S), 20 when not set. */}}
{{- define "llm-worker.shutdownTimeout" -}}
{{- $v := 20 }}
{{- if hasKey .Values.config "SHUTDOWN_TIMEOUT_S" }}{{ $v = index .Values.config "SHUTDOWN_TIMEOUT_S" }}{{ end }}
{{- include "llm-worker.envValue" $v }}
{{- end }}

{{- define "llm-worker.groupId" -}}
{{- index .Values.config "GROUP_ID" | default "llm-worker" }}
{{- end }}

{{- define "llm-worker.promptsTopic" -}}
{{- index .Values.config "PROMPTS_TOPIC" | default "llm_prompts" }}
{{- end }}

{{- define "llm-worker.completionsTopic" -}}
{{- index .Values.config "COMPLETIONS_TOPIC" | default "llm_completions" }}
{{- end }}

{{/* ---------------------------------------------------------------- secrets */}}

{{/* Secret holding DATABASE_URL, and the key in it. */}}
{{- define "llm-worker.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- include "llm-worker.suffixed" (list . "database") }}
{{- end }}
{{- end }}

{{- define "llm-worker.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}DATABASE_URL{{ end }}
{{- end }}

{{/*
The DATABASE_URL Secret the migration hook reads. A pre-install hook runs before the release's
own resources exist, so with a rendered Secret the hook gets its own copy, itself a hook with a
lower weight, deleted once the hooks succeed. With database.existingSecret, that one is used.
*/}}
{{- define "llm-worker.migrationDatabaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- include "llm-worker.suffixed" (list . "migrate-db") }}
{{- end }}
{{- end }}

{{/* Secret holding provider API keys, mounted as files. */}}
{{- define "llm-worker.apiKeysSecretName" -}}
{{- default (include "llm-worker.suffixed" (list . "api-keys")) .Values.apiKeysExistingSecret }}
{{- end }}

{{/* Kafka credentials: SASL username/password and/or the CA certificate. */}}
{{- define "llm-worker.kafkaSaslEnabled" -}}
{{- if or .Values.kafka.sasl.existingSecret .Values.kafka.sasl.username }}true{{ end }}
{{- end }}

{{- define "llm-worker.kafkaCaEnabled" -}}
{{- if or .Values.kafka.tls.existingSecret .Values.kafka.tls.ca }}true{{ end }}
{{- end }}

{{/* The Secret the chart renders for Kafka (SASL credentials and/or CA), if any. */}}
{{- define "llm-worker.kafkaRenderedSecretName" -}}
{{- include "llm-worker.suffixed" (list . "kafka") }}
{{- end }}

{{- define "llm-worker.kafkaSaslSecretName" -}}
{{- default (include "llm-worker.kafkaRenderedSecretName" .) .Values.kafka.sasl.existingSecret }}
{{- end }}

{{- define "llm-worker.kafkaCaSecretName" -}}
{{- default (include "llm-worker.kafkaRenderedSecretName" .) .Values.kafka.tls.existingSecret }}
{{- end }}

{{- define "llm-worker.kafkaCaKey" -}}
{{- if .Values.kafka.tls.existingSecret }}{{ .Values.kafka.tls.caKey }}{{ else }}ca.crt{{ end }}
{{- end }}

{{- define "llm-worker.kafkaCaDir" -}}/etc/llm-worker/kafka-ca{{- end }}

{{- define "llm-worker.secretsDir" -}}/var/run/secrets/llm-worker{{- end }}

{{/* librdkafka's security.protocol, upper-cased, PLAINTEXT when not set. */}}
{{- define "llm-worker.kafkaProtocol" -}}
{{- index .Values.kafka.config "security.protocol" | default "PLAINTEXT" | upper }}
{{- end }}

{{/*
KEDA's `sasl` mode, derived from kafka.config (security.protocol + sasl.mechanism[s]) unless
autoscaling.keda.sasl says otherwise; empty when the cluster does not use SASL.
*/}}
{{- define "llm-worker.kedaSasl" -}}
{{- if .Values.autoscaling.keda.sasl }}
{{- .Values.autoscaling.keda.sasl }}
{{- else if hasPrefix "SASL_" (include "llm-worker.kafkaProtocol" .) }}
{{- $mech := index .Values.kafka.config "sasl.mechanism" | default (index .Values.kafka.config "sasl.mechanisms") | default "GSSAPI" | upper }}
{{- $map := dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" "OAUTHBEARER" "oauthbearer" "GSSAPI" "gssapi" }}
{{- required (printf "sasl.mechanism %q has no KEDA equivalent: set autoscaling.keda.sasl" $mech) (get $map $mech) }}
{{- end }}
{{- end }}

{{/* KEDA's `tls` (enable/disable), derived from security.protocol unless set. */}}
{{- define "llm-worker.kedaTls" -}}
{{- if .Values.autoscaling.keda.tls }}
{{- .Values.autoscaling.keda.tls }}
{{- else if has (include "llm-worker.kafkaProtocol" .) (list "SSL" "SASL_SSL") }}enable
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- environment */}}

{{/*
DATABASE_URL and the other variables that come from Secrets (the ConfigMap holds the rest).
Call with (dict "root" $ "databaseSecret" NAME).
*/}}
{{- define "llm-worker.secretEnv" -}}
{{- $root := .root }}
{{- if eq $root.Values.secretsAs "files" }}
- name: DATABASE_URL_FILE
  value: {{ include "llm-worker.credentialsDir" $root }}/DATABASE_URL
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .databaseSecret }}
      key: {{ include "llm-worker.databaseSecretKey" $root }}
{{- end }}
{{- end }}

{{/* secretsAs: files puts DATABASE_URL and the SASL credentials here, one file each. */}}
{{- define "llm-worker.credentialsDir" -}}/etc/llm-worker/credentials{{- end }}

{{/*
The volume of those files: the Secrets' keys projected under the variable names the worker
reads them by (DATABASE_URL_FILE and so on point at them). Call with (dict "root" $
"databaseSecret" NAME "kafka" BOOL).
*/}}
{{- define "llm-worker.credentialsVolume" -}}
{{- $root := .root }}
- name: credentials
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ .databaseSecret }}
          items:
            - key: {{ include "llm-worker.databaseSecretKey" $root }}
              path: DATABASE_URL
      {{- if and .kafka (include "llm-worker.kafkaSaslEnabled" $root) }}
      - secret:
          name: {{ include "llm-worker.kafkaSaslSecretName" $root }}
          items:
            - key: {{ $root.Values.kafka.sasl.usernameKey }}
              path: LLM_WORKER_KAFKA_SASL_USERNAME
            - key: {{ $root.Values.kafka.sasl.passwordKey }}
              path: LLM_WORKER_KAFKA_SASL_PASSWORD
      {{- end }}
{{- end }}

{{- define "llm-worker.kafkaSecretEnv" -}}
{{- if and (include "llm-worker.kafkaSaslEnabled" .) (eq .Values.secretsAs "files") }}
- name: LLM_WORKER_KAFKA_SASL_USERNAME_FILE
  value: {{ include "llm-worker.credentialsDir" . }}/LLM_WORKER_KAFKA_SASL_USERNAME
- name: LLM_WORKER_KAFKA_SASL_PASSWORD_FILE
  value: {{ include "llm-worker.credentialsDir" . }}/LLM_WORKER_KAFKA_SASL_PASSWORD
{{- else if include "llm-worker.kafkaSaslEnabled" . }}
- name: LLM_WORKER_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "llm-worker.kafkaSaslSecretName" . }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: LLM_WORKER_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "llm-worker.kafkaSaslSecretName" . }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- end }}

{{- define "llm-worker.otelSecretEnv" -}}
{{- with .Values.otel.headersSecret }}
{{- if .name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Every non-secret variable, as a map NAME -> string. The ConfigMap renders it; the migration hook
(which runs before the ConfigMap exists) gets it inline.
*/}}
{{- define "llm-worker.configEnv" -}}
{{- $env := dict }}
{{- $_ := set $env "KAFKA_BOOTSTRAP_SERVERS" .Values.kafka.bootstrapServers }}
{{- $_ = set $env "LLM_WORKER_HTTP_HOST" "0.0.0.0" }}
{{- $_ = set $env "LLM_WORKER_HTTP_PORT" (include "llm-worker.envValue" .Values.httpPort) }}
{{- $_ = set $env "LLM_WORKER_SECRETS_DIR" (include "llm-worker.secretsDir" .) }}
{{- range $key, $value := .Values.config }}
{{- $_ = set $env (printf "LLM_WORKER_%s" (upper $key)) (include "llm-worker.envValue" $value) }}
{{- end }}
{{- range $key, $value := .Values.kafka.config }}
{{- $_ = set $env (printf "LLM_WORKER_KAFKA_%s" ($key | upper | replace "." "_")) (include "llm-worker.envValue" $value) }}
{{- end }}
{{- if include "llm-worker.kafkaCaEnabled" . }}
{{- $_ = set $env "LLM_WORKER_KAFKA_SSL_CA_LOCATION" (printf "%s/%s" (include "llm-worker.kafkaCaDir" .) (include "llm-worker.kafkaCaKey" .)) }}
{{- end }}
{{- with .Values.otel }}
{{- $_ = set $env "OTEL_SERVICE_NAME" (default (include "llm-worker.fullname" $) .serviceName) }}
{{- if .endpoint }}{{ $_ = set $env "OTEL_EXPORTER_OTLP_ENDPOINT" .endpoint }}{{ end }}
{{- if .protocol }}{{ $_ = set $env "OTEL_EXPORTER_OTLP_PROTOCOL" .protocol }}{{ end }}
{{- if .tracesSampler }}{{ $_ = set $env "OTEL_TRACES_SAMPLER" .tracesSampler }}{{ end }}
{{- $arg := .tracesSamplerArg }}
{{- if and (not (kindIs "invalid" $arg)) (ne (toString $arg) "") }}{{ $_ = set $env "OTEL_TRACES_SAMPLER_ARG" (include "llm-worker.envValue" $arg) }}{{ end }}
{{- if .resourceAttributes }}
{{- $attrs := list }}
{{- range $k, $v := .resourceAttributes }}{{ $attrs = append $attrs (printf "%s=%s" $k (include "llm-worker.envValue" $v)) }}{{ end }}
{{- $_ = set $env "OTEL_RESOURCE_ATTRIBUTES" (join "," $attrs) }}
{{- end }}
{{- $_ = set $env "LLM_WORKER_TRACE_CONTENT" (include "llm-worker.envValue" .traceContent) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* ---------------------------------------------------------------- pod parts */}}

{{- define "llm-worker.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "llm-worker.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/* Scheduling fields shared by the worker pods and the migration Job. */}}
{{- define "llm-worker.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

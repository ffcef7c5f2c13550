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

{{- define "llm-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llm-worker.labels" -}}
helm.sh/chart: {{ include "llm-worker.chart" . }}
{{ include "llm-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "llm-worker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secret holding DATABASE_URL, and the key in it. */}}
{{- define "llm-worker.databaseSecretName" -}}
{{- default (printf "%s-database" (include "llm-worker.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{- define "llm-worker.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}DATABASE_URL{{ end }}
{{- end }}

{{/* Secret holding provider API keys, mounted as files. */}}
{{- define "llm-worker.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "llm-worker.fullname" .)) .Values.apiKeysExistingSecret }}
{{- end }}

{{/* Environment shared by the worker and the migration init container. */}}
{{- define "llm-worker.env" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "llm-worker.databaseSecretName" . }}
      key: {{ include "llm-worker.databaseSecretKey" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "llm-worker.envFrom" -}}
- configMapRef:
    name: {{ include "llm-worker.fullname" . }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Names and labels shared by every object of the chart. */}}

{{- define "kioskfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kioskfleet.fullname" -}}
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

{{- define "kioskfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kioskfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "kioskfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kioskfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kioskfleet
{{- end }}

{{- define "kioskfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kioskfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: a digest wins over a tag; "latest" is refused. */}}
{{- define "kioskfleet.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must name a release, not \"latest\": a rollback must bring back the same bytes" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* "HTTPS" when the server serves TLS itself (https.existingSecret), else "HTTP". */}}
{{- define "kioskfleet.scheme" -}}
{{- if .Values.https.existingSecret }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* Whether more than one server process may run at once. */}}
{{- define "kioskfleet.replicated" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* Whether the server has broker TLS files (a Secret, or one identity per replica). */}}
{{- define "kioskfleet.brokerTls" -}}
{{- if or .Values.broker.tls.existingSecret .Values.broker.tls.perReplicaIdentity.enabled }}true{{ end }}
{{- end }}

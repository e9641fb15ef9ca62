{{/*
Names. The full name is cut at 50 characters so that the longest derived name
(<full name>-webhook-certs) stays a valid 63-character DNS label.
*/}}
{{- define "winflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" }}
{{- end }}

{{- define "winflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "winflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "winflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "winflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "winflow.labels" -}}
helm.sh/chart: {{ include "winflow.chart" . }}
{{ include "winflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: winflow
{{- end }}

{{- define "winflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "winflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Service the API server calls; its DNS names are in the webhook certificate. */}}
{{- define "winflow.webhookServiceName" -}}
{{- printf "%s-webhook" (include "winflow.fullname" .) }}
{{- end }}

{{- define "winflow.metricsServiceName" -}}
{{- printf "%s-metrics" (include "winflow.fullname" .) }}
{{- end }}

{{/* Both webhook configurations (mutating and validating) carry this name. */}}
{{- define "winflow.webhookConfigurationName" -}}
{{- include "winflow.fullname" . }}
{{- end }}

{{- define "winflow.certSecretName" -}}
{{- default (printf "%s-webhook-certs" (include "winflow.fullname" .)) .Values.webhook.certSecretName }}
{{- end }}

{{- define "winflow.certificateName" -}}
{{- printf "%s-webhook" (include "winflow.fullname" .) }}
{{- end }}

{{- define "winflow.leaseName" -}}
{{- default (include "winflow.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The operator keeps the webhook's CA and certificate itself unless cert-manager does. */}}
{{- define "winflow.managedCerts" -}}
{{- if not .Values.webhook.certManager.enabled }}true{{ end }}
{{- end }}

{{- define "winflow.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the webhook's tls.crt and tls.key are, in the pod. */}}
{{- define "winflow.certDir" -}}
/var/run/winflow/webhook-certs
{{- end }}

{{/* The ConfigMap with token.caBundle, and where the operator reads it. */}}
{{- define "winflow.oidcCaName" -}}
{{- printf "%s-oidc-ca" (include "winflow.fullname" .) }}
{{- end }}

{{- define "winflow.oidcCaDir" -}}
/etc/winflow/oidc-ca
{{- end }}

{{- define "winflow.webhookClientCaName" -}}
{{- printf "%s-webhook-client-ca" (include "winflow.fullname" .) }}
{{- end }}

{{- define "winflow.webhookClientCaDir" -}}
/etc/winflow/webhook-client-ca
{{- end }}

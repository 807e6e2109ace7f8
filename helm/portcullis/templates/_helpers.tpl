{{/* Names and labels. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The Secret holding the serving certificate, or "" when each pod issues its own. */}}
{{- define "portcullis.tlsSecret" -}}
{{- if .Values.tls.existingSecret }}{{ .Values.tls.existingSecret }}
{{- else if .Values.certManager.enabled }}{{ include "portcullis.fullname" . }}-tls
{{- end }}
{{- end }}

{{/* The Secret holding the CA, or "" when each pod creates its own. */}}
{{- define "portcullis.caSecret" -}}
{{- if .Values.ca.existingSecret }}{{ .Values.ca.existingSecret }}
{{- else if and .Values.certManager.enabled .Values.certManager.ca.enabled }}{{ include "portcullis.fullname" . }}-ca
{{- end }}
{{- end }}

{{/* Names the serving certificate must cover: the Service's, then tls.names. */}}
{{- define "portcullis.dnsNames" -}}
{{- $svc := include "portcullis.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- concat $names .Values.tls.names | uniq | toJson }}
{{- end }}

{{/* Turns whole-number floats (how Helm reads YAML integers) into integers, in place. */}}
{{- define "portcullis.integers" -}}
{{- $table := . }}
{{- range $key, $value := $table }}
{{- if kindIs "float64" $value }}
{{- if eq $value (floor $value) }}{{- $_ := set $table $key (int64 $value) }}{{- end }}
{{- else if kindIs "map" $value }}
{{- include "portcullis.integers" $value }}
{{- else if kindIs "slice" $value }}
{{- range $value }}{{- if kindIs "map" . }}{{- include "portcullis.integers" . }}{{- end }}{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* portcullis.toml: .Values.config plus what the chart decides (state, listeners, TLS files). */}}
{{- define "portcullis.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $addr := .Values.listenAddress }}
{{- $listen := dict "registry" (printf "%s:%d" $addr (int .Values.ports.registry)) "admin" (printf "%s:%d" $addr (int .Values.ports.admin)) }}
{{- $_ := set $listen "proxy" (ternary (printf "%s:%d" $addr (int .Values.ports.proxy)) "off" .Values.proxy.enabled) }}
{{- if .Values.mirror.enabled }}{{- $_ := set $listen "mirror" (printf "%s:%d" $addr (int .Values.ports.mirror)) }}{{- end }}
{{- if .Values.adminToken.existingSecret }}{{- $_ := set $listen "admin_token_file" "/etc/portcullis/admin/token" }}{{- end }}
{{- $_ := set $config "listen" $listen }}
{{- $_ := set $config "state_dir" "/var/lib/portcullis" }}
{{- $tls := dict "names" (include "portcullis.dnsNames" . | fromJsonArray) }}
{{- if include "portcullis.tlsSecret" . }}
{{- $_ := set $tls "cert_file" "/etc/portcullis/tls/tls.crt" }}
{{- $_ := set $tls "key_file" "/etc/portcullis/tls/tls.key" }}
{{- end }}
{{- $_ := set $config "tls" $tls }}
{{- include "portcullis.integers" $config }}
{{- toToml $config }}
{{- with .Values.extraConfig }}
{{ . }}
{{- end }}
{{- end }}

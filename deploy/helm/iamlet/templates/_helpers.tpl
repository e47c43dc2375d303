{{/* The release's name for its objects: the release name, or RELEASE-iamlet when it does not contain the chart's
name; fullnameOverride and nameOverride as in any chart. Cluster-scoped objects carry it, so two releases with
different names never collide. With the release named iamlet every name is the kustomize base's. */}}
{{- define "iamlet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* Labels on every object. Only app.kubernetes.io/name is shared with the kustomize base; the rest is Helm's. */}}
{{- define "iamlet.labels" -}}
app.kubernetes.io/name: iamlet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

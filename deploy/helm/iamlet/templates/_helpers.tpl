{{/* Labels on every object. Only app.kubernetes.io/name is shared with the kustomize base; the rest is Helm's. */}}
{{- define "iamlet.labels" -}}
app.kubernetes.io/name: iamlet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

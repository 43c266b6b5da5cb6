{{/* Names and labels shared by the templates. */}}

{{- define "flowex.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flowex.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "flowex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flowex.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "flowex.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "flowex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowex.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The agent's configuration file: values.config plus what the deployment decides. */}}
{{- define "flowex.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $export := get $config "export" | default dict }}
{{- $_ := set $export "collectors" .Values.collectors }}
{{- $_ := set $config "export" $export }}
{{- $attribution := get $config "attribution" | default dict }}
{{- $_ := set $attribution "procRoot" .Values.hostProcPath }}
{{- $_ := set $config "attribution" $attribution }}
{{- $_ := set $config "metrics" (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))) }}
{{- toYaml $config }}
{{- end }}

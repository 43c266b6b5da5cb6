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

{{/*
The objects the collectors with tls.antrea read through the API, by namespace, as JSON:
{"NAMESPACE": {"configmaps": [NAME...], "secrets": [NAME...]}}; {} when none. Names
absent from values are the agent's defaults.
*/}}
{{- define "flowex.antreaObjects" -}}
{{- $objects := dict }}
{{- range .Values.collectors }}
{{- $tls := .tls | default dict }}
{{- if $tls.antrea }}
{{- $wanted := dict "configmaps" ($tls.caConfigMap | default "flow-aggregator/flow-aggregator-ca") "secrets" ($tls.clientSecret | default "flow-aggregator/flow-aggregator-client-tls") }}
{{- range $resource, $object := $wanted }}
{{- $parts := splitn "/" 2 $object }}
{{- $inNamespace := get $objects $parts._0 | default (dict) }}
{{- $names := get $inNamespace $resource | default (list) }}
{{- $_ := set $inNamespace $resource (append $names $parts._1 | uniq | sortAlpha) }}
{{- $_ := set $objects $parts._0 $inNamespace }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $objects }}
{{- end }}

{{/* The token is mounted when the chart grants API access, or a collector reads its
certificates through the API (tls.antrea; with rbac.create false, access is granted by
hand). */}}
{{- define "flowex.automountToken" -}}
{{- if or .Values.rbac.create (ne (include "flowex.antreaObjects" .) "{}") }}true{{ else }}false{{ end }}
{{- end }}

{{/* The chart's name, at most 63 characters (a DNS label). */}}
{{- define "nodewarden.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name, with the chart's name unless already in it. */}}
{{- define "nodewarden.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels that select the agent's pods; never change them (a DaemonSet's selector is immutable). */}}
{{- define "nodewarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nodewarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The agent's pods: what the DaemonSet and the Service select (not the helm test pod). */}}
{{- define "nodewarden.agentSelectorLabels" -}}
{{ include "nodewarden.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{/* The standard labels of every object. */}}
{{- define "nodewarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "nodewarden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nodewarden
{{- end }}

{{- define "nodewarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nodewarden.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nodewarden.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the Slack webhook URL, and its key. */}}
{{/* The Secret of the webhook's URL (and HMAC key): always the user's own. */}}
{{- define "nodewarden.webhookSecretName" -}}
{{- required "webhook.enabled needs webhook.existingSecret (a Secret holding the URL)" .Values.webhook.existingSecret }}
{{- end }}

{{- define "nodewarden.slackSecretName" -}}
{{- default (printf "%s-slack" (include "nodewarden.fullname" .)) .Values.slack.existingSecret }}
{{- end }}

{{- define "nodewarden.slackSecretKey" -}}
{{- if .Values.slack.existingSecret }}
{{- required "slack.existingSecretKey is required with slack.existingSecret" .Values.slack.existingSecretKey }}
{{- else -}}
webhook-url
{{- end }}
{{- end }}

{{/* The rules ConfigMap mounted at /etc/nodewarden/rules.d. */}}
{{- define "nodewarden.rulesConfigMapName" -}}
{{- default (printf "%s-rules" (include "nodewarden.fullname" .)) .Values.existingRulesConfigMap }}
{{- end }}

{{/*
The agent's config file. The paths here are the mounts of daemonset.yaml; the Slack URL is
never in it, only the path of the file the Secret is mounted as.
*/}}
{{- define "nodewarden.config" -}}
{{- $managed := dict
    "mode" .Values.mode
    "rules" (list "bundled" "/etc/nodewarden/rules.d")
    "proc_root" "/host/proc"
    "lock_file" "/run/nodewarden/agent.lock"
    "listen" (printf "0.0.0.0:%d" (int .Values.service.port))
    "kubernetes_events" .Values.kubernetesEvents
    "delete_pod" .Values.deletePod
    "slack_min_severity" .Values.slack.minSeverity }}
{{- if .Values.slack.enabled }}
{{- $_ := set $managed "slack_webhook_url_file" "/etc/nodewarden/slack/url" }}
{{- end }}
{{- range $key, $_ := .Values.config }}
{{- if or (hasKey $managed $key) (eq $key "slack_webhook_url_file") }}
{{- fail (printf "config.%s is set by the chart; use the chart's own value for it (see values.yaml)" $key) }}
{{- end }}
{{- end }}
{{- if hasKey .Values.config "webhook" }}
{{- range $key := list "url_file" "hmac_key_file" "min_severity" }}
{{- if hasKey $.Values.config.webhook $key }}
{{- fail (printf "config.webhook.%s is set by the chart; use the chart's webhook values (see values.yaml)" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.webhook.enabled }}
{{- $hook := dict "url_file" "/etc/nodewarden/webhook/url" "min_severity" .Values.webhook.minSeverity }}
{{- if .Values.webhook.hmacKeyKey }}
{{- $_ := set $hook "hmac_key_file" "/etc/nodewarden/webhook/hmac-key" }}
{{- end }}
{{- $_ := set $managed "webhook" $hook }}
{{- end }}
{{- /* defaults the chart chooses and `config` may change: realtime needs CAP_SYS_NICE, which
     the container has in both securityContext modes */}}
{{- $config := merge $managed (deepCopy .Values.config) }}
{{- if not (hasKey $config "realtime") }}
{{- $_ := set $config "realtime" true }}
{{- end }}
{{- toYaml $config }}
{{- end }}

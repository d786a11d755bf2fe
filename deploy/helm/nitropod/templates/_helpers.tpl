{{- define "nitropod.name" -}}nitropod{{- end -}}

{{- define "nitropod.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "nitropod.labels" -}}
app.kubernetes.io/part-of: nitropod
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "nitropod.webhookName" -}}{{ .Release.Name }}-webhook{{- end -}}
{{- define "nitropod.webhookTLSSecret" -}}{{ .Release.Name }}-webhook-tls{{- end -}}

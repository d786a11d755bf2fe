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

{{- /*
nitropod.shimConfig is /etc/nitropod/shim.toml: nodeInstaller.shimConfig
followed by the [license] section made from the license values. It fails the
install when enforcement is on and no trusted issuer key was given.
*/ -}}
{{- define "nitropod.licenseKeysFile" -}}/etc/nitropod/license-keys.pem{{- end -}}
{{- define "nitropod.shimConfig" -}}
{{- $l := .Values.license -}}
{{- if regexMatch "(?m)^\\s*\\[\\s*license\\s*\\]" .Values.nodeInstaller.shimConfig -}}
{{- fail "nodeInstaller.shimConfig has a [license] section; remove it and set license.enforce / license.publicKeys instead (the chart writes that section)" -}}
{{- end -}}
{{- if contains "PRIVATE KEY" ($l.publicKeys | default "") -}}
{{- fail "license.publicKeys holds a PRIVATE KEY: give only the issuer's public key (nitropod license keygen --public-key), and keep the private key with the vendor" -}}
{{- end -}}
{{- if and $l.publicKeys (not (contains "-----BEGIN PUBLIC KEY-----" $l.publicKeys)) -}}
{{- fail "license.publicKeys is not a PEM public key: give the issuer's PEM file (-----BEGIN PUBLIC KEY-----), as written by nitropod license keygen --public-key" -}}
{{- end -}}
{{- if and $l.enforce (not $l.publicKeys) (not $l.existingConfigMap) -}}
{{- fail "licence enforcement is on (license.enforce=true) but no trusted issuer key was given: set license.publicKeys to the issuer's PEM public key (--set-file license.publicKeys=issuer.pub), or license.existingConfigMap to a ConfigMap holding it under keys.pem, or opt out explicitly with license.enforce=false" -}}
{{- end -}}
{{ .Values.nodeInstaller.shimConfig | trimSuffix "\n" }}

# Written by the chart from its license values.
[license]
enforce = {{ $l.enforce }}
{{- if or $l.publicKeys $l.existingConfigMap }}
keys_file = {{ include "nitropod.licenseKeysFile" . | quote }}
{{- end }}
{{- with $l.clusterID }}
cluster_id = {{ . | toString | quote }}
{{- end }}
{{ end -}}

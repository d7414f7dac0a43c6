{{/* Names and labels. */}}
{{- define "cri-mesos.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cri-mesos.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cri-mesos.labels" -}}
{{ include "cri-mesos.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "cri-mesos.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A registry host as a file name and a ConfigMap key: "host:port" has a colon. */}}
{{- define "cri-mesos.certName" -}}
{{- . | replace ":" "_" -}}
{{- end -}}

{{/*
The daemon's config file, the one place flags become keys: every non-null value of
`flags` under its own name, which is the daemon's flag name (the chart test compares the
keys with `cri-mesos --help`), plus `registries`. The daemon refuses unknown keys, so a
flag renamed there fails the chart test, not a node.
*/}}
{{- define "cri-mesos.config" -}}
{{- $cfg := dict -}}
{{- range $k, $v := .Values.flags -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $_ := set $cfg $k $v -}}
{{- end -}}
{{- end -}}
{{- if .Values.registries -}}
{{- $regs := dict -}}
{{- range $host, $r := .Values.registries -}}
{{- $e := dict -}}
{{- if $r.mirrors -}}{{- $_ := set $e "mirrors" $r.mirrors -}}{{- end -}}
{{- if $r.insecure -}}{{- $_ := set $e "insecure" true -}}{{- end -}}
{{- if $r.ca -}}
{{- $_ := set $e "ca_file" (printf "%s/certs/%s.crt" $.Values.install.configDir (include "cri-mesos.certName" $host)) -}}
{{- end -}}
{{- if $r.authSecret -}}
{{- $_ := set $e "auth_file" (printf "%s/auth/%s.json" $.Values.install.configDir (include "cri-mesos.certName" $host)) -}}
{{- end -}}
{{- $_ := set $regs $host $e -}}
{{- end -}}
{{- $_ := set $cfg "registries" $regs -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The command line of hack/install.sh shared by the installer and the watch. */}}
{{- define "cri-mesos.installArgs" -}}
- --prefix
- {{ .Values.install.prefix | quote }}
- --config-dir
- {{ .Values.install.configDir | quote }}
- --unit-dir
- {{ .Values.install.unitDir | quote }}
- --host-exec
- nsenter --target 1 --mount --uts --ipc --net --pid --cgroup --
{{- end -}}

{{/*
The host paths the pod mounts, at the same paths inside, as a JSON list of {name, path,
propagate, type (default DirectoryOrCreate)}: the installer writes binaries, config and unit where the host's daemon reads
them, and sees the daemon's own mounts (propagate) to check and clean them.
*/}}
{{- define "cri-mesos.hostPaths" -}}
{{- $f := .Values.flags -}}
{{- $paths := list
  (dict "name" "runtime-dir" "path" $f.runtime_dir "propagate" true)
  (dict "name" "work-dir" "path" $f.work_dir "propagate" true)
  (dict "name" "pod-logs" "path" "/var/log/pods" "propagate" true)
  (dict "name" "cni-config" "path" $f.network_cni_config_dir "propagate" false)
  (dict "name" "cgroups" "path" $f.cgroups_hierarchy "propagate" true "type" "Directory")
  (dict "name" "unit-dir" "path" .Values.install.unitDir "propagate" false)
  (dict "name" "prefix" "path" .Values.install.prefix "propagate" false)
  (dict "name" "config-dir" "path" .Values.install.configDir "propagate" false) -}}
{{- range $i, $d := splitList ":" $f.network_cni_plugins_dir -}}
{{- $paths = append $paths (dict "name" (printf "cni-bin-%d" $i) "path" $d "propagate" false) -}}
{{- end -}}
{{- toJson $paths -}}
{{- end -}}

{{- define "cri-mesos.volumeMounts" -}}
- name: chart-config
  mountPath: /chart
  readOnly: true
{{- range . }}
- name: {{ .name }}
  mountPath: {{ .path }}
  {{- if .propagate }}
  mountPropagation: HostToContainer
  {{- end }}
{{- end }}
{{- end -}}

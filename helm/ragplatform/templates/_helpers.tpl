{{/*
Names, labels, images and the platform's call graph, shared by every template.
*/}}

{{- define "ragplatform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragplatform.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's resources: <fullname>-<component>. Args: root, component. */}}
{{- define "ragplatform.componentName" -}}
{{- printf "%s-%s" (include "ragplatform.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragplatform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragplatform.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ragplatform.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "ragplatform.selectorLabels" . }}
app.kubernetes.io/part-of: ragplatform
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Labels shared by every object of the release that is not one component's. */}}
{{- define "ragplatform.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ragplatform.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ragplatform
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The platform services in start order (the call graph's leaves first). */}}
{{- define "ragplatform.serviceNames" -}}
embedding retrieval generation ingestion query gateway
{{- end -}}

{{/*
Who calls whom over gRPC (DESIGN.md, Flows): the NetworkPolicies allow exactly these
paths, plus the backends added in ragplatform.backendEdges.
*/}}
{{- define "ragplatform.calls" -}}
gateway: [query, ingestion, retrieval]
query: [embedding, retrieval, generation]
ingestion: [embedding, retrieval]
embedding: []
retrieval: []
generation: []
{{- end -}}

{{/* Components that use the cache (answer cache, embedding cache, invalidation). */}}
{{- define "ragplatform.cacheUsers" -}}
[query, ingestion, embedding]
{{- end -}}

{{/* A platform image: registry/repository:tag[@digest]. Args: root, image. */}}
{{- define "ragplatform.platformImage" -}}
{{- $registry := .root.Values.global.imageRegistry -}}
{{- $repo := .image.repository -}}
{{- if $registry -}}{{- $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo -}}{{- end -}}
{{- $tag := .image.tag | default .root.Values.global.imageTag | default .root.Chart.AppVersion -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" $repo $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* A third-party image: repository:tag[@digest], no registry prefix. Arg: image. */}}
{{- define "ragplatform.image" -}}
{{- if .digest -}}
{{- printf "%s:%s@%s" .repository .tag .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* Google service account of a component (Workload Identity). Args: root, component. */}}
{{- define "ragplatform.gcpServiceAccount" -}}
{{- printf "%s%s@%s.iam.gserviceaccount.com" .root.Values.gcp.workloadIdentity.serviceAccountPrefix .component .root.Values.gcp.projectId -}}
{{- end -}}

{{/* ServiceAccount of a component. Args: root, component, gcp (bool: annotate). */}}
{{- define "ragplatform.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "ragplatform.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "ragplatform.labels" . | nindent 4 }}
  {{- if and .gcp .root.Values.gcp.workloadIdentity.enabled }}
  annotations:
    iam.gke.io/gcp-service-account: {{ include "ragplatform.gcpServiceAccount" . }}
  {{- end }}
automountServiceAccountToken: false
{{- end -}}

{{/* Address of a platform service as its clients dial it. Args: root, component. */}}
{{- define "ragplatform.address" -}}
{{- printf "%s:%v" (include "ragplatform.componentName" .) (index .root.Values.services .component).port -}}
{{- end -}}

{{- define "ragplatform.vllmUrl" -}}
{{- if .Values.backends.generation.vllm.baseUrl -}}
{{- .Values.backends.generation.vllm.baseUrl -}}
{{- else -}}
{{- printf "http://%s:%v/v1" (include "ragplatform.componentName" (dict "root" . "component" "vllm")) .Values.vllm.port -}}
{{- end -}}
{{- end -}}

{{- define "ragplatform.qdrantUrl" -}}
{{- if .Values.qdrant.enabled -}}
{{- printf "http://%s:6334" (include "ragplatform.componentName" (dict "root" . "component" "qdrant")) -}}
{{- else -}}
{{- .Values.qdrant.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Whether a component talks to Redis: a cache user with the redis cache, or the
gateway with its rate limits in Redis. Args: root, component. Prints "true" or "". */}}
{{- define "ragplatform.usesRedis" -}}
{{- $v := .root.Values -}}
{{- if ne $v.redis.mode "none" -}}
{{- if and (eq $v.backends.cache.backend "redis") (has .component (include "ragplatform.cacheUsers" . | fromYamlArray)) -}}
true
{{- else if and (eq .component "gateway") (eq $v.services.gateway.rateLimits.backend "redis") -}}
true
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Whether a component calls Google Cloud APIs with the project and region of gcp.*
(RAG_GCP_PROJECT, RAG_GCP_LOCATION): embedding and retrieval with their vertex
backends, generation with a Gemini chain. Args: root, component. Prints "true" or "".
*/}}
{{- define "ragplatform.usesGoogleCloud" -}}
{{- $b := .root.Values.backends -}}
{{- if and (eq .component "embedding") (eq $b.embedding.backend "vertex") -}}
true
{{- else if and (eq .component "retrieval") (eq $b.retrieval.backend "vertex") -}}
true
{{- else if and (eq .component "generation") (contains "gemini" (printf "%s,%s" $b.generation.simpleChain $b.generation.complexChain)) -}}
true
{{- else if and (eq .component "ingestion") .root.Values.services.ingestion.googleApis -}}
true
{{- end -}}
{{- end -}}

{{/*
Settings that must agree across values, checked at render time (the schema cannot
compare two values): the vertex embedder's outputDimensionality is the dimension of
the vectors retrieval stores.
*/}}
{{- define "ragplatform.validate" -}}
{{- $b := .Values.backends -}}
{{- if and (eq $b.embedding.backend "vertex") (ne (int $b.embedding.vertex.outputDimensionality) (int $b.retrieval.dimension)) -}}
{{- fail (printf "backends.embedding.vertex.outputDimensionality (%v) must equal backends.retrieval.dimension (%v): retrieval stores the vectors the embedder returns" $b.embedding.vertex.outputDimensionality $b.retrieval.dimension) -}}
{{- end -}}
{{- end -}}

{{/* A name: value env entry. */}}
{{- define "ragplatform.env" -}}
{{- $value := .value -}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) -}}
{{- $value = int64 $value -}}
{{- end -}}
- name: {{ .name }}
  value: {{ $value | toString | quote }}
{{- end -}}

{{/* Environment of a platform service. Args: root, component. */}}
{{- define "ragplatform.serviceEnv" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $svc := index $v.services .component -}}
{{- $env := dict -}}
{{- $_ := set $env "RAG_LISTEN_HOST" "0.0.0.0" -}}
{{- $_ := set $env "RAG_LOG_LEVEL" $v.config.logLevel -}}
{{- $_ := set $env "RAG_RPC_TIMEOUT_SECONDS" $v.config.rpcTimeoutSeconds -}}
{{- $_ := set $env "RAG_DRAIN_SECONDS" $v.config.drainSeconds -}}
{{- $_ := set $env "RAG_MAX_MESSAGE_BYTES" $v.config.maxMessageBytes -}}
{{- $_ := set $env "RAG_METRICS_PORT" $v.metrics.port -}}
{{- $_ := set $env "RAG_DATA_DIR" (ternary "/data" "/tmp/ragdata" (eq .component "retrieval")) -}}
{{- range $name := splitList " " (include "ragplatform.serviceNames" $root) }}
{{- if ne $name "gateway" }}
{{- $_ := set $env (printf "RAG_%s_ADDR" (upper $name)) (include "ragplatform.address" (dict "root" $root "component" $name)) -}}
{{- end }}
{{- end }}
{{- if eq .component "gateway" }}
{{- $_ := set $env "RAG_GATEWAY_PORT" $svc.port -}}
{{- $_ := set $env "RAG_GATEWAY_MAX_CONCURRENT_REQUESTS" $svc.maxConcurrentRequests -}}
{{- $_ := set $env "RAG_GATEWAY_RATE_LIMIT_BACKEND" $svc.rateLimits.backend -}}
{{- range $class := list "ask" "upload" "write" }}
{{- range $per, $limit := dict "KEY" (index $svc.rateLimits $class).perKey "TENANT" (index $svc.rateLimits $class).perTenant }}
{{- $_ := set $env (printf "RAG_GATEWAY_%s_RATE_PER_%s" (upper $class) $per) $limit.rate -}}
{{- $_ := set $env (printf "RAG_GATEWAY_%s_BURST_PER_%s" (upper $class) $per) $limit.burst -}}
{{- end }}
{{- end }}
{{- end }}
{{- if eq .component "ingestion" }}
{{- $_ := set $env "RAG_INGESTION_MAX_CONCURRENT_PER_TENANT" $svc.maxConcurrentPerTenant -}}
{{- $_ := set $env "RAG_INGESTION_PARSE_WORKERS" $svc.parse.workers -}}
{{- $_ := set $env "RAG_INGESTION_PARSE_SECONDS" $svc.parse.seconds -}}
{{- $_ := set $env "RAG_INGESTION_PARSE_MEMORY_MB" $svc.parse.memoryMb -}}
{{- if $svc.sources }}
{{- $_ := set $env "RAG_INGESTION_SOURCES" ($svc.sources | toJson) -}}
{{- end }}
{{- $_ := set $env "RAG_INGESTION_JOB_STORE" $svc.jobStore -}}
{{- if eq $svc.jobStore "firestore" }}
{{- $_ := set $env "RAG_FIRESTORE_DATABASE" $v.backends.retrieval.firestore.database -}}
{{- $_ := set $env "RAG_FIRESTORE_COLLECTION_PREFIX" $v.backends.retrieval.firestore.collectionPrefix -}}
{{- end }}
{{- end }}
{{- if $v.tls.enabled }}
{{- $_ := set $env "RAG_TLS_CERT_FILE" "/etc/ragplatform/tls/tls.crt" -}}
{{- $_ := set $env "RAG_TLS_KEY_FILE" "/etc/ragplatform/tls/tls.key" -}}
{{- $_ := set $env "RAG_TLS_CA_FILE" "/etc/ragplatform/tls/ca.crt" -}}
{{- $_ := set $env "RAG_HEALTH_PORT_OFFSET" $v.tls.healthPortOffset -}}
{{- if and $v.tls.clients (ne .component "gateway") }}
{{- $_ := set $env "RAG_GRPC_CLIENTS" ($v.tls.clients | toJson) -}}
{{- end }}
{{- end }}
{{- if and (has .component (list "query" "ingestion")) $v.backends.embedding.otherAddresses }}
{{- $_ := set $env "RAG_EMBEDDING_ADDRS" (join "," $v.backends.embedding.otherAddresses) -}}
{{- end }}
{{- if include "ragplatform.usesGoogleCloud" . }}
{{- $_ := set $env "RAG_GCP_PROJECT" $v.gcp.projectId -}}
{{- $_ := set $env "RAG_GCP_LOCATION" $v.gcp.region -}}
{{- end }}
{{- if eq .component "embedding" }}
{{- $_ := set $env "RAG_EMBEDDING_BACKEND" $v.backends.embedding.backend -}}
{{- if eq $v.backends.embedding.backend "vertex" }}
{{- $ve := $v.backends.embedding.vertex }}
{{- $_ := set $env "RAG_VERTEX_EMBEDDING_MODEL" $ve.model -}}
{{- $_ := set $env "RAG_VERTEX_EMBEDDING_DIMENSION" $ve.outputDimensionality -}}
{{- if $ve.maxTextsPerRequest }}
{{- $_ := set $env "RAG_VERTEX_EMBEDDING_MAX_TEXTS_PER_REQUEST" $ve.maxTextsPerRequest -}}
{{- end }}
{{- if $ve.maxTokensPerRequest }}
{{- $_ := set $env "RAG_VERTEX_EMBEDDING_MAX_TOKENS_PER_REQUEST" $ve.maxTokensPerRequest -}}
{{- end }}
{{- if $ve.concurrency }}
{{- $_ := set $env "RAG_VERTEX_EMBEDDING_CONCURRENCY" $ve.concurrency -}}
{{- end }}
{{- if $ve.prices }}
{{- $_ := set $env "RAG_EMBEDDING_PRICES" ($ve.prices | toJson) -}}
{{- end }}
{{- end }}
{{- end }}
{{- if eq .component "retrieval" }}
{{- $_ := set $env "RAG_RETRIEVAL_BACKEND" $v.backends.retrieval.backend -}}
{{- $_ := set $env "RAG_RETRIEVAL_DIMENSION" $v.backends.retrieval.dimension -}}
{{- if eq $v.backends.retrieval.backend "qdrant" }}
{{- $_ := set $env "RAG_QDRANT_URL" (include "ragplatform.qdrantUrl" $root) -}}
{{- $_ := set $env "RAG_QDRANT_COLLECTION" $v.backends.retrieval.collection -}}
{{- if $v.qdrant.enabled }}
{{- $_ := set $env "RAG_QDRANT_REPLICATION_FACTOR" (toString $v.qdrant.replicas) -}}
{{- end }}
{{- end }}
{{- if eq $v.backends.retrieval.backend "vertex" }}
{{- $vs := $v.backends.retrieval.vertex }}
{{- $_ := set $env "RAG_VECTOR_SEARCH_INDEX" $vs.index -}}
{{- $_ := set $env "RAG_VECTOR_SEARCH_INDEX_ENDPOINT" $vs.indexEndpoint -}}
{{- $_ := set $env "RAG_VECTOR_SEARCH_DEPLOYED_INDEX_ID" $vs.deployedIndexId -}}
{{- $_ := set $env "RAG_VECTOR_SEARCH_QUERY_ENDPOINT" $vs.queryEndpoint -}}
{{- $_ := set $env "RAG_VECTOR_SEARCH_API_ENDPOINT" $vs.apiEndpoint -}}
{{- if $vs.spareIndexes }}
{{- $spares := list }}
{{- range $spare := $vs.spareIndexes }}
{{- $spares = append $spares (dict "index" $spare.index "index_endpoint" $spare.indexEndpoint "deployed_index_id" $spare.deployedIndexId "query_endpoint" ($spare.queryEndpoint | default "")) }}
{{- end }}
{{- $_ := set $env "RAG_VECTOR_SEARCH_SPARE_INDEXES" ($spares | toJson) -}}
{{- end }}
{{- $_ := set $env "RAG_FIRESTORE_DATABASE" $v.backends.retrieval.firestore.database -}}
{{- $_ := set $env "RAG_FIRESTORE_COLLECTION_PREFIX" $v.backends.retrieval.firestore.collectionPrefix -}}
{{- end }}
{{- end }}
{{- if eq .component "generation" }}
{{- $g := $v.backends.generation }}
{{- $_ := set $env "RAG_GENERATION_SIMPLE_CHAIN" $g.simpleChain -}}
{{- $_ := set $env "RAG_GENERATION_COMPLEX_CHAIN" $g.complexChain -}}
{{- $chains := printf "%s,%s" $g.simpleChain $g.complexChain }}
{{- if contains "vllm" $chains }}
{{- $_ := set $env "RAG_VLLM_BASE_URL" (include "ragplatform.vllmUrl" $root) -}}
{{- $_ := set $env "RAG_VLLM_MODEL" $v.vllm.model -}}
{{- $_ := set $env "RAG_VLLM_CONTEXT_TOKENS" $v.vllm.maxModelLen -}}
{{- end }}
{{- if contains "gemini" $chains }}
{{- $_ := set $env "RAG_GEMINI_PROJECT" $v.gcp.projectId -}}
{{- $_ := set $env "RAG_GEMINI_LOCATION" $v.gcp.region -}}
{{- $_ := set $env "RAG_GEMINI_PRO_MODEL" $g.gemini.proModel -}}
{{- $_ := set $env "RAG_GEMINI_FLASH_MODEL" $g.gemini.flashModel -}}
{{- end }}
{{- end }}
{{- if include "ragplatform.usesRedis" . }}
{{- if ne .component "gateway" }}
{{- $_ := set $env "RAG_CACHE_BACKEND" "redis" -}}
{{- end }}
{{- if eq $v.redis.mode "external" }}
{{- $_ := set $env "RAG_REDIS_URL" $v.redis.external.url -}}
{{- if $v.redis.external.ca.existingSecret }}
{{- $_ := set $env "RAG_REDIS_CA_CERT" "/etc/ragplatform/redis-ca/ca.crt" -}}
{{- end }}
{{- else }}
{{- $_ := set $env "RAG_REDIS_URL" (printf "redis://%s:6379/0" (include "ragplatform.componentName" (dict "root" $root "component" "redis"))) -}}
{{- end }}
{{- end }}
{{- range $k, $val := $v.config.extraEnv }}
{{- $_ := set $env $k $val -}}
{{- end }}
{{- range $k, $val := $svc.env }}
{{- $_ := set $env $k $val -}}
{{- end }}
{{- range $k := keys $env | sortAlpha }}
{{ include "ragplatform.env" (dict "name" $k "value" (index $env $k)) }}
{{- end }}
{{- /* Secrets, read by the services from the environment (pydantic-settings). */}}
{{- if and (eq .component "gateway") $svc.apiKeys.existingSecret }}
- name: RAG_GATEWAY_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $svc.apiKeys.existingSecret }}
      key: {{ $svc.apiKeys.key }}
{{- end }}
{{- if and (eq .component "retrieval") (eq $v.backends.retrieval.backend "qdrant") $v.qdrant.apiKey.existingSecret }}
- name: RAG_QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.qdrant.apiKey.existingSecret }}
      key: {{ $v.qdrant.apiKey.key }}
{{- end }}
{{- if and (eq .component "generation") (contains "vllm" (printf "%s,%s" $v.backends.generation.simpleChain $v.backends.generation.complexChain)) $v.vllm.apiKey.existingSecret }}
- name: RAG_VLLM_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.vllm.apiKey.existingSecret }}
      key: {{ $v.vllm.apiKey.key }}
{{- end }}
{{- if include "ragplatform.usesRedis" . }}
{{- $auth := ternary $v.redis.external.auth $v.redis.inCluster.auth (eq $v.redis.mode "external") }}
{{- if $auth.existingSecret }}
- name: RAG_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* HPA metric for a custom metric. Args: root, name, type, selector, target. */}}
{{- define "ragplatform.podsMetric" -}}
- type: Pods
  pods:
    metric:
      {{- if eq .root.Values.autoscaling.customMetricsAdapter "stackdriver" }}
      name: {{ printf "prometheus.googleapis.com|%s|%s" .name .type | quote }}
      {{- else }}
      name: {{ .name | quote }}
      {{- end }}
      {{- with .selector }}
      selector:
        matchLabels:
          {{- toYaml . | nindent 10 }}
      {{- end }}
    target:
      type: AverageValue
      averageValue: {{ .target | quote }}
{{- end -}}

{{/* terminationGracePeriodSeconds of the platform services. */}}
{{- define "ragplatform.gracePeriod" -}}
{{- add (int .Values.config.drainSeconds) (int .Values.config.preStopSeconds) 5 -}}
{{- end -}}

{{/*
checkov suppressions, each with its reason, rendered only where the check would
fail. Args: root, images (list of image dicts), secretEnv (bool).
*/}}
{{- define "ragplatform.checkovSkips" -}}
{{- $skips := list -}}
{{- $undigested := false -}}
{{- range .images }}{{- if not .digest }}{{- $undigested = true }}{{- end }}{{- end }}
{{- if $undigested -}}
{{- $skips = append $skips "CKV_K8S_43=Images are pinned by version tag; digests are set per deployment (skaffold deploys tag@digest of what it built, image.digest pins third-party images)." -}}
{{- end -}}
{{- if ne .root.Values.global.imagePullPolicy "Always" -}}
{{- $skips = append $skips "CKV_K8S_15=global.imagePullPolicy is IfNotPresent only in values-dev.yaml, where skaffold loads the images into a local cluster instead of pushing them; every other environment pulls Always." -}}
{{- end -}}
{{- if .secretEnv -}}
{{- $skips = append $skips "CKV_K8S_35=The process reads this setting from its environment only (pydantic-settings RAG_*, or the image's own variable); the value comes from a Secret through secretKeyRef and is never written into the manifest." -}}
{{- end -}}
{{- range $i, $s := $skips }}
checkov.io/skip{{ add1 $i }}: {{ $s | quote }}
{{- end }}
{{- end -}}

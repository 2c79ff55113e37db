// Validates custom resources against their published models (@kubernetes-models/*,
// generated from the upstream CRD schemas), offline.
//   node crd_validate.mjs <node_modules dir> < objects.json
// Input: a JSON array of objects. Output: a JSON array, one entry per object:
// {"kind", "name", "ok": true} or {"ok": false, "error": "..."}; unknown kinds get
// "ok": null so the caller can decide.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const MODELS = {
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js",
  "gateway.networking.k8s.io/v1": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/index.js",
  "networking.gke.io/v1": "@kubernetes-models/gke/networking.gke.io/v1/index.mjs",
  "networking.gke.io/v1beta1": "@kubernetes-models/gke/networking.gke.io/v1beta1/index.mjs",
  "cloud.google.com/v1": "@kubernetes-models/gke/cloud.google.com/v1/index.mjs",
  "cert-manager.io/v1": "@kubernetes-models/cert-manager/cert-manager.io/v1/index.js",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const name = obj?.metadata?.name;
  const path = MODELS[obj.apiVersion];
  if (!path) {
    results.push({ kind: obj.kind, name, ok: null, error: `no model for ${obj.apiVersion}` });
    continue;
  }
  const mod = await import(pathToFileURL(join(modules, path)).href);
  const Model = mod[obj.kind];
  if (!Model) {
    results.push({ kind: obj.kind, name, ok: null, error: `no model for ${obj.apiVersion} ${obj.kind}` });
    continue;
  }
  try {
    new Model(obj).validate();
    results.push({ kind: obj.kind, name, ok: true });
  } catch (e) {
    results.push({ kind: obj.kind, name, ok: false, error: String(e.message ?? e) });
  }
}
process.stdout.write(JSON.stringify(results));

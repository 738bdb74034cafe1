// Checks the Kubernetes manifests of deploy/k8s without a cluster, in three passes, and prints each
// problem as FILE:LINE: what is wrong. Exit 0 when there is none, 1 otherwise, 2 on usage.
//
// 1. Schema: every object against the Kubernetes OpenAPI schema of its apiVersion and kind, through
//    the npm package kubernetes-models (its ajv validators: types, required fields, enums, formats).
// 2. Unknown fields: kubernetes-models' validators let unknown keys through (as the API server's
//    non-strict decoding does), so a misspelt `livenessprobe:` would pass. kubectl's strict field
//    validation refuses it; so does this pass, walking each object against the field lists of the
//    package's type declarations (the same schema, as TypeScript interfaces).
// 3. Consistency, what no schema sees: selectors that select the pods, probe and Service ports that
//    name container ports, volumes that exist, and the cluster file in the ConfigMap against the
//    workloads that run it: one node per pod (StatefulSet ordinals or a Deployment's literal
//    --node), each node's host the pod's DNS name, its actors' ports opened, GPUs requested for
//    cuda actors, every path the file names under a mount of the pods that use it, and the
//    controller's state and layer versions on persistent volumes. (The file's own rules, such as
//    the controller on the gateway's node, are its parser's: dsla-serve and dslactl --cluster.)
//
// usage: node check-k8s.mjs MANIFEST_DIR...
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { LineCounter, parseAllDocuments, parseDocument } from "yaml";

const modules = path.join(process.cwd(), "node_modules");
const problems = [];

function report(where, message) {
  problems.push(`${where}: ${message}`);
}

// ---- the manifests, each object with the line of any path in it ----

function loadManifests(dir) {
  const files = fs
    .readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort();
  const objects = [];
  for (const file of files) {
    const full = path.join(dir, file);
    const text = fs.readFileSync(full, "utf8");
    const lineCounter = new LineCounter();
    // YAML 1.1, as Kubernetes reads manifests (0440 is octal there).
    const docs = parseAllDocuments(text, { lineCounter, version: "1.1" });
    for (const doc of docs) {
      const at = (p) => `${file}:${lineOf(doc, lineCounter, p)}`;
      for (const e of doc.errors) report(`${file}:${lineCounter.linePos(e.pos[0]).line}`, e.message);
      const obj = doc.toJS();
      if (obj === null || obj === undefined) continue;
      if (typeof obj !== "object" || Array.isArray(obj)) {
        report(at([]), "a manifest document must be a mapping");
        continue;
      }
      objects.push({ file, obj, at });
    }
  }
  if (objects.length === 0) report(dir, "no Kubernetes objects found");
  return objects;
}

function lineOf(doc, lineCounter, p) {
  for (let n = p.length; n >= 0; n--) {
    const node = n === 0 ? doc.contents : doc.getIn(p.slice(0, n), true);
    if (node && node.range) return lineCounter.linePos(node.range[0]).line;
  }
  return 1;
}

// ---- pass 1: the schema ----

async function modelClass(apiVersion, kind) {
  // kubernetes-models lays its classes out by apiVersion: v1/Service, apps/v1/StatefulSet.
  if (!/^([a-z0-9-]+(\.[a-z0-9-]+)*\/)?v[0-9a-z]+$/.test(String(apiVersion)) || !/^[A-Za-z0-9]+$/.test(String(kind))) {
    return null;
  }
  const file = path.join(modules, "kubernetes-models", apiVersion, `${kind}.mjs`);
  if (!fs.existsSync(file)) return null;
  const mod = await import(pathToFileURL(file).href);
  return { Model: mod[kind], dts: file.replace(/\.mjs$/, ".d.ts") };
}

async function checkSchema(o) {
  const { apiVersion, kind } = o.obj;
  const found = await modelClass(apiVersion, kind);
  if (!found) {
    report(o.at(["kind"]), `unknown apiVersion/kind ${apiVersion}/${kind}`);
    return null;
  }
  try {
    new found.Model(o.obj).validate();
  } catch (e) {
    for (const err of e.errors || [{ instancePath: "", message: e.message }]) {
      const p = err.instancePath.split("/").filter(Boolean).map(unescapePointer);
      const field = err.params && err.params.missingProperty ? `.${err.params.missingProperty}` : "";
      report(o.at(p), `${kind} ${p.join(".")}${field}: ${err.message}`);
    }
  }
  return found.dts;
}

function unescapePointer(s) {
  const t = s.replace(/~1/g, "/").replace(/~0/g, "~");
  return /^\d+$/.test(t) ? Number(t) : t;
}

// ---- pass 2: unknown fields, from the type declarations ----

const interfaces = new Map(); // d.ts file -> {props: Map(name -> type text)} or null (an alias)

function readInterface(dts) {
  if (interfaces.has(dts)) return interfaces.get(dts);
  let result = null;
  if (fs.existsSync(dts)) {
    const text = fs.readFileSync(dts, "utf8").replace(/\/\*[\s\S]*?\*\//g, "");
    const imports = new Map();
    for (const m of text.matchAll(/^import \{([^}]*)\} from "([^"]+)";/gm)) {
      for (const name of m[1].split(",").map((s) => s.trim())) imports.set(name, m[2]);
    }
    const body = text.match(/^export interface \w+(?: extends [\w, ]+)? \{\n([\s\S]*?)^\}/m);
    if (body) {
      const props = new Map();
      const lines = body[1].split("\n");
      for (let i = 0; i < lines.length; i++) {
        const m = lines[i].match(/^ {4}"([^"]+)"\??: (.*?);?$/);
        if (!m) continue;
        let type = m[2];
        if (type === "{") {
          // a map: {[key: string]: T;} over the next lines
          const inner = lines[i + 1].match(/\[key: string\]: (.*);$/);
          type = inner ? `Map<${inner[1]}>` : "unknown";
        }
        props.set(m[1], type);
      }
      result = { props, imports, dir: path.dirname(dts) };
    }
  }
  interfaces.set(dts, result);
  return result;
}

function resolveType(owner, type) {
  let m = type.match(/^Array<(.*)>$/);
  if (m) return { array: resolveType(owner, m[1]) };
  m = type.match(/^Map<(.*)>$/);
  if (m) return { map: resolveType(owner, m[1]) };
  const from = owner.imports.get(type);
  if (!from) return null; // a primitive, a literal or a union: the schema pass checks it
  const file = from.startsWith(".") ? path.join(owner.dir, `${from}.d.ts`) : path.join(modules, `${from}.d.ts`);
  return { iface: readInterface(file) };
}

function checkFields(o, value, shape, p) {
  if (!shape || value === null || typeof value !== "object") return;
  if (shape.array) {
    if (Array.isArray(value)) value.forEach((v, i) => checkFields(o, v, shape.array, [...p, i]));
    return;
  }
  if (shape.map) {
    for (const [k, v] of Object.entries(value)) checkFields(o, v, shape.map, [...p, k]);
    return;
  }
  const iface = shape.iface;
  if (!iface || Array.isArray(value)) return;
  for (const [k, v] of Object.entries(value)) {
    if (!iface.props.has(k)) {
      const known = [...iface.props.keys()].join(", ");
      report(o.at([...p, k]), `unknown field ${[...p, k].join(".")} (known here: ${known})`);
      continue;
    }
    checkFields(o, v, resolveType(iface, iface.props.get(k)), [...p, k]);
  }
}

// ---- pass 3: consistency ----

const byKind = (objects, kind) => objects.filter((o) => o.obj.kind === kind);
const named = (objects, kind, name) => byKind(objects, kind).find((o) => o.obj.metadata?.name === name);

function workloads(objects) {
  return objects.filter((o) => ["Deployment", "StatefulSet"].includes(o.obj.kind) && o.obj.spec?.template);
}

const podPath = ["spec", "template", "spec"];

function subset(a = {}, b = {}) {
  return Object.entries(a).every(([k, v]) => b[k] === v);
}

function checkWorkload(objects, o) {
  const spec = o.obj.spec;
  const name = o.obj.metadata?.name;
  const labels = spec.template.metadata?.labels || {};
  const match = spec.selector?.matchLabels || {};
  if (Object.keys(match).length === 0 || !subset(match, labels)) {
    report(o.at(["spec", "selector"]), `${name}: selector.matchLabels do not select the pod template's labels`);
  }
  if (o.obj.kind === "StatefulSet") {
    const svc = named(objects, "Service", spec.serviceName);
    if (!svc) report(o.at(["spec", "serviceName"]), `${name}: serviceName ${spec.serviceName} is no Service here`);
    else if (svc.obj.spec?.clusterIP !== "None") {
      report(svc.at(["spec"]), `${spec.serviceName}: a StatefulSet's governing Service must be headless (clusterIP: None)`);
    }
  }
  const pod = spec.template.spec || {};
  const volumes = new Map((pod.volumes || []).map((v, i) => [v.name, { v, i }]));
  const claimTemplates = new Set((spec.volumeClaimTemplates || []).map((c) => c.metadata?.name));
  (pod.volumes || []).forEach((v, i) => {
    const at = o.at([...podPath, "volumes", i]);
    if (v.configMap && !named(objects, "ConfigMap", v.configMap.name)) report(at, `volume ${v.name}: no ConfigMap ${v.configMap.name}`);
    if (v.secret && !named(objects, "Secret", v.secret.secretName)) report(at, `volume ${v.name}: no Secret ${v.secret.secretName}`);
    if (v.persistentVolumeClaim && !named(objects, "PersistentVolumeClaim", v.persistentVolumeClaim.claimName)) {
      report(at, `volume ${v.name}: no PersistentVolumeClaim ${v.persistentVolumeClaim.claimName}`);
    }
  });
  (pod.containers || []).forEach((c, ci) => {
    const cp = [...podPath, "containers", ci];
    const ports = c.ports || [];
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const pr = c[probe];
      const port = pr?.tcpSocket?.port ?? pr?.httpGet?.port;
      if (port !== undefined && !ports.some((p) => p.name === port || p.containerPort === port)) {
        report(o.at([...cp, probe]), `${name}/${c.name}: ${probe} port ${port} is none of the container's ports`);
      }
    }
    (c.volumeMounts || []).forEach((m, mi) => {
      const at = o.at([...cp, "volumeMounts", mi]);
      if (!volumes.has(m.name) && !claimTemplates.has(m.name)) report(at, `${name}/${c.name}: volumeMount ${m.name} names no volume`);
      const cm = volumes.get(m.name)?.v.configMap;
      if (cm && m.subPath) {
        const map = named(objects, "ConfigMap", cm.name);
        if (map && !(m.subPath in (map.obj.data || {}))) report(at, `${name}/${c.name}: ConfigMap ${cm.name} has no key ${m.subPath}`);
      }
    });
    const env = new Set((c.env || []).map((e) => e.name));
    for (const [ai, arg] of (c.args || []).entries()) {
      for (const m of String(arg).matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
        if (!env.has(m[1])) report(o.at([...cp, "args", ai]), `${name}/${c.name}: $(${m[1]}) is not in env`);
      }
    }
    const req = c.resources?.requests?.["nvidia.com/gpu"];
    const lim = c.resources?.limits?.["nvidia.com/gpu"];
    if ((req !== undefined || lim !== undefined) && String(req ?? lim) !== String(lim)) {
      report(o.at([...cp, "resources"]), `${name}/${c.name}: nvidia.com/gpu must be in limits, equal to requests`);
    }
  });
}

function selectedPods(objects, selector) {
  if (!selector || Object.keys(selector).length === 0) return [];
  return workloads(objects).filter((w) => subset(selector, w.obj.spec.template.metadata?.labels || {}));
}

function checkService(objects, o) {
  const name = o.obj.metadata?.name;
  const pods = selectedPods(objects, o.obj.spec?.selector);
  if (pods.length === 0) {
    report(o.at(["spec", "selector"]), `Service ${name} selects no pod template here`);
    return;
  }
  (o.obj.spec.ports || []).forEach((p, i) => {
    const target = p.targetPort ?? p.port;
    const ok = pods.every((w) =>
      (w.obj.spec.template.spec.containers || []).some((c) => (c.ports || []).some((cp) => cp.name === target || cp.containerPort === target)),
    );
    if (!ok) report(o.at(["spec", "ports", i]), `Service ${name}: targetPort ${target} is not a port of the pods it selects`);
  });
}

// The cluster file: which workload runs each node, and does that pod have what the node needs.
function checkCluster(objects) {
  const maps = byKind(objects, "ConfigMap").filter((o) => typeof o.obj.data?.["cluster.yaml"] === "string");
  for (const map of maps) {
    // The file is a block scalar: its line n is the manifest's line of the key plus n.
    const text = map.obj.data["cluster.yaml"];
    const at = map.at(["data", "cluster.yaml"]);
    const [file, keyLine] = [at.replace(/:\d+$/, ""), Number(at.match(/:(\d+)$/)[1])];
    const inner = new LineCounter();
    const doc = parseDocument(text, { lineCounter: inner });
    if (doc.errors.length > 0) {
      for (const e of doc.errors) report(`${file}:${keyLine + inner.linePos(e.pos[0]).line}`, `cluster file: ${e.message}`);
      continue;
    }
    const cluster = doc.toJS();
    const nodeAt = (i) => `${file}:${keyLine + lineOf(doc, inner, ["nodes", i])}`;
    if (!cluster || !Array.isArray(cluster.nodes)) {
      report(at, "the cluster file has no nodes: list");
      continue;
    }
    const namespace = map.obj.metadata?.namespace || "default";
    const users = workloads(objects).filter((w) =>
      (w.obj.spec.template.spec.volumes || []).some((v) => v.configMap?.name === map.obj.metadata?.name),
    );
    const run = new Map(); // node name -> {w, container, host names it answers to}
    for (const w of users) {
      for (const c of w.obj.spec.template.spec.containers || []) {
        const args = (c.args || []).map(String);
        const i = args.indexOf("--node");
        if (args.indexOf("--cluster") < 0 || i < 0 || i + 1 >= args.length) continue;
        const value = args[i + 1];
        const podName = (c.env || []).find((e) => e.valueFrom?.fieldRef?.fieldPath === "metadata.name")?.name;
        let nodes;
        if (podName && value === `$(${podName})`) {
          if (w.obj.kind !== "StatefulSet") {
            report(w.at(["spec"]), `${w.obj.metadata.name}: --node from the pod's name needs a StatefulSet (a Deployment's pod names are random)`);
            continue;
          }
          nodes = Array.from({ length: w.obj.spec.replicas ?? 1 }, (_, k) => `${w.obj.metadata.name}-${k}`);
        } else {
          if ((w.obj.spec.replicas ?? 1) > 1) {
            report(w.at(["spec", "replicas"]), `${w.obj.metadata.name}: ${w.obj.spec.replicas} pods would all be node ${value}: a node's actors have names unique in the cluster`);
          }
          if (w.obj.kind === "Deployment" && w.obj.spec.strategy?.type !== "Recreate") {
            report(w.at(["spec"]), `${w.obj.metadata.name}: node ${value} must not run twice during a rollout: strategy Recreate`);
          }
          nodes = [value];
        }
        for (const n of nodes) {
          if (run.has(n)) report(w.at(["spec"]), `node ${n} is run by two workloads`);
          run.set(n, { w, c, hosts: hostNames(objects, w, n, namespace) });
        }
      }
    }
    const declared = new Set();
    cluster.nodes.forEach((node, i) => {
      const where = `${nodeAt(i)} (cluster file, node ${node?.name})`;
      declared.add(node?.name);
      const r = run.get(node?.name);
      if (!r) {
        report(where, `no workload runs node ${node?.name} (--node; StatefulSet replicas)`);
        return;
      }
      if (!r.hosts.includes(node.host)) {
        report(where, `host ${node.host} is not the DNS name of ${r.w.obj.metadata.name}'s pod (${r.hosts.join(" or ") || "none: give it a Service"})`);
      }
      checkNodeNeeds(cluster, node, r, where);
    });
    for (const [n, r] of run) {
      if (!declared.has(n)) report(r.w.at(["spec"]), `${r.w.obj.metadata.name} runs node ${n}, which the cluster file does not have`);
    }
  }
}

function hostNames(objects, w, node, namespace) {
  const suffixes = (base) => [base, `${base}.${namespace}`, `${base}.${namespace}.svc`, `${base}.${namespace}.svc.cluster.local`];
  const pod = w.obj.spec.template.spec;
  if (w.obj.kind === "StatefulSet") return suffixes(`${node}.${w.obj.spec.serviceName}`);
  const names = [];
  if (pod.hostname && pod.subdomain) {
    const svc = named(objects, "Service", pod.subdomain);
    if (svc && svc.obj.spec?.clusterIP === "None" && selectedPods(objects, svc.obj.spec.selector).includes(w)) {
      names.push(...suffixes(`${pod.hostname}.${pod.subdomain}`));
    }
  }
  for (const svc of byKind(objects, "Service")) {
    if (svc.obj.spec?.clusterIP !== "None" && selectedPods(objects, svc.obj.spec?.selector).includes(w)) {
      names.push(...suffixes(svc.obj.metadata.name));
    }
  }
  return names;
}

function portOf(address) {
  const m = String(address).match(/:(\d+)$/);
  return m ? Number(m[1]) : undefined;
}

function checkNodeNeeds(cluster, node, { w, c }, where) {
  const actors = node.actors || {};
  const open = new Set((c.ports || []).map((p) => p.containerPort));
  const need = [];
  if (actors.gateway) need.push(["gateway port", actors.gateway.port], ["gateway http", portOf(actors.gateway.http)]);
  if (actors.controller) need.push(["controller port", actors.controller.port], ["controller admin_port", actors.controller.admin_port]);
  for (const s of actors.serving || []) need.push([`serving ${s.name} port`, s.port]);
  for (const [what, port] of need) {
    if (port !== undefined && !open.has(port)) report(where, `${what} ${port} is not a containerPort of ${w.obj.metadata.name}/${c.name}`);
  }
  const cudaGpus = new Set();
  for (const s of actors.serving || []) if (s.device === "cuda") cudaGpus.add(s.gpu ?? 0);
  if (actors.distiller?.device === "cuda") cudaGpus.add(actors.distiller.gpu ?? 0);
  const gpus = Number(c.resources?.limits?.["nvidia.com/gpu"] ?? 0);
  for (const g of cudaGpus) {
    if (!(g < gpus)) report(where, `an actor runs on cuda gpu ${g}, but ${w.obj.metadata.name}/${c.name} has nvidia.com/gpu ${gpus}`);
  }
  const mounts = c.volumeMounts || [];
  const mounted = (p) => mounts.some((m) => p === m.mountPath || p.startsWith(m.mountPath.replace(/\/?$/, "/")));
  const paths = [];
  if (actors.serving || actors.distiller) paths.push(["model", cluster.model]);
  if (actors.controller || actors.distiller) paths.push(["layers", cluster.layers]);
  if (actors.controller) paths.push(["state", cluster.state], ["keys.admin_key_file", cluster.keys?.admin_key_file]);
  if (actors.gateway) paths.push(["keys.api_key_file", cluster.keys?.api_key_file]);
  for (const d of actors.distiller?.data || []) paths.push(["distiller data", d]);
  for (const [what, p] of paths) {
    if (typeof p === "string" && !mounted(p)) report(where, `${what} ${p} is under no volumeMount of ${w.obj.metadata.name}/${c.name}`);
  }
  // The controller's state and layer versions outlive the pod: a volume claim, not an emptyDir.
  if (actors.controller) {
    const claims = new Set((w.obj.spec.volumeClaimTemplates || []).map((t) => t.metadata?.name));
    for (const [what, p] of [["state", cluster.state], ["layers", cluster.layers]]) {
      if (typeof p !== "string") continue;
      const m = mounts.find((m) => p === m.mountPath || p.startsWith(m.mountPath.replace(/\/?$/, "/")));
      const vol = (w.obj.spec.template.spec.volumes || []).find((v) => v.name === m?.name);
      if (m && !claims.has(m.name) && !vol?.persistentVolumeClaim) {
        report(where, `${what} ${p} is not on a persistent volume in ${w.obj.metadata.name} (the controller's ${what} would be lost with the pod)`);
      }
    }
  }
}

// One directory: its problems (printed) and their count.
async function checkDir(dir) {
  problems.length = 0;
  const objects = loadManifests(dir);
  const namespaces = byKind(objects, "Namespace").map((o) => o.obj.metadata?.name);
  for (const o of objects) {
    const dts = await checkSchema(o);
    if (dts) checkFields(o, o.obj, { iface: readInterface(dts) }, []);
    const ns = o.obj.metadata?.namespace;
    if (o.obj.kind !== "Namespace" && namespaces.length > 0 && !namespaces.includes(ns)) {
      report(o.at(["metadata"]), `${o.obj.kind} ${o.obj.metadata?.name}: namespace ${ns} is not the manifests' (${namespaces.join(", ")})`);
    }
  }
  for (const w of workloads(objects)) checkWorkload(objects, w);
  for (const s of byKind(objects, "Service")) checkService(objects, s);
  checkCluster(objects);
  for (const p of problems) console.log(p);
  const kinds = objects.map((o) => o.obj.kind).join(", ");
  console.log(`${dir}: ${objects.length} objects (${kinds}): ${problems.length} problem(s)`);
  return problems.length;
}

// Several directories in one run (tests/deploy/k8s.sh's broken copies: the schemas load once);
// each is checked on its own, under a "== DIR" line. Exit 1 when any has a problem.
async function main() {
  const dirs = process.argv.slice(2);
  if (dirs.length === 0) {
    console.error("usage: node check-k8s.mjs MANIFEST_DIR...");
    process.exit(2);
  }
  let total = 0;
  for (const dir of dirs) {
    if (dirs.length > 1) console.log(`== ${dir}`);
    total += await checkDir(dir);
  }
  process.exit(total === 0 ? 0 : 1);
}

await main();

// Validates objects of KEDA's and prometheus-operator's kinds, one JSON document per line on stdin,
// with their projects' typed models (field types and required fields), and refuses any field name
// those models do not declare (a misspelt field would otherwise be pruned by the API server without
// a word). Prints one line per object; exits 1 if any is invalid.
import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const models = {
  "keda.sh/v1alpha1": "@kubernetes-models/keda",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator",
};
// Maps whose keys are the user's (labels, a scaler's settings), and metadata, which
// kubernetes-validate's ObjectMeta rules do not reach here but the API server checks.
const freeForm = new Set(["metadata", "matchLabels", "labels", "annotations"]);

const require = createRequire(import.meta.url);
const declared = new Map();
// A model's own types, and Kubernetes' (label selectors, int-or-string) it uses.
function declaredNames(pkg) {
  if (!declared.has(pkg)) {
    const names = new Set();
    const walk = (dir) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) walk(path);
        else if (entry.name.endsWith(".d.ts")) {
          for (const match of readFileSync(path, "utf8").matchAll(/^\s*"?([A-Za-z_$][\w$]*)"?\??:/gm)) {
            names.add(match[1]);
          }
        }
      }
    };
    for (const source of [pkg, "@kubernetes-models/apimachinery"]) {
      const fromPkg = createRequire(require.resolve(`${pkg}/package.json`));
      walk(dirname(fromPkg.resolve(`${source}/package.json`)));
    }
    declared.set(pkg, names);
  }
  return declared.get(pkg);
}

function undeclared(value, names, path, found) {
  if (Array.isArray(value)) {
    value.forEach((item, i) => undeclared(item, names, `${path}[${i}]`, found));
  } else if (value && typeof value === "object") {
    for (const [key, child] of Object.entries(value)) {
      if (!names.has(key)) found.push(`${path}.${key}`);
      if (!freeForm.has(key)) undeclared(child, names, `${path}.${key}`, found);
    }
  }
}

let failures = 0;
const lines = readFileSync(0, "utf8").split("\n").filter((line) => line.trim());
for (const line of lines) {
  const object = JSON.parse(line);
  const label = `${object.kind} ${object.metadata?.name}`;
  const pkg = models[object.apiVersion];
  if (!pkg) {
    console.log(`FAIL ${label}: no model for ${object.apiVersion}`);
    failures++;
    continue;
  }
  const module = await import(`${pkg}/${object.apiVersion}/${object.kind}`);
  const problems = [];
  try {
    new module[object.kind](object).validate();
  } catch (error) {
    problems.push(error.message);
  }
  const found = [];
  undeclared(object, declaredNames(pkg), "", found);
  problems.push(...found.map((field) => `${field}: not a field of ${object.kind}`));
  if (problems.length) {
    console.log(`FAIL ${label}: ${problems.join("; ")}`);
    failures++;
  } else {
    console.log(`ok   ${label}`);
  }
}
if (lines.length === 0) {
  console.log("FAIL no object to validate");
  failures++;
}
process.exit(failures ? 1 : 0);

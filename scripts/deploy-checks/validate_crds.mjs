// Validates prometheus-operator custom resources (PodMonitor, ServiceMonitor,
// PrometheusRule) against the CRDs' OpenAPI schemas, as compiled into
// @kubernetes-models/prometheus-operator. Reads a JSON array of objects on stdin, each
// {source, object}; prints one line per object; exits 1 if any is invalid.
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const input = await new Promise((resolve, reject) => {
  let data = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => (data += chunk));
  process.stdin.on("end", () => resolve(data));
  process.stdin.on("error", reject);
});

let failed = 0;
for (const { source, object } of JSON.parse(input)) {
  const what = `${source}: ${object.kind}/${object.metadata?.name}`;
  const Model = object.apiVersion === "monitoring.coreos.com/v1" ? v1[object.kind] : undefined;
  if (typeof Model !== "function") {
    console.log(`FAIL ${what}: no schema for ${object.apiVersion} ${object.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`ok   ${what} (monitoring.coreos.com/v1 schema)`);
  } catch (e) {
    console.log(`FAIL ${what}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);

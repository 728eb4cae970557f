"""Checks rendered Kubernetes manifests (the output of `kubectl kustomize` per overlay) for
what schemas cannot see, and splits them for the schema validators.

    python check_manifests.py OUT_DIR RENDERED.yaml...

For each RENDERED file it writes OUT_DIR/<name>.core.yaml (the built-in kinds, for
kubernetes-validate) and adds the prometheus-operator resources to OUT_DIR/crds.json (for
validate_crds.mjs). Then it checks the deployment rules of docs/deployment.md:

- every pod running keygate: probes on the status port (/healthz liveness, /readyz
  readiness), the ConfigMap's shutdown.delay + shutdown.grace below
  terminationGracePeriodSeconds, the admin token and Redis URL from a Secret, the admin
  listener on loopback, and the listeners agreeing with the container ports;
- every container: non-root, read-only root filesystem, no privilege escalation, all
  capabilities dropped, RuntimeDefault seccomp, resource requests and a memory limit;
- sidecar pods: every route's upstream on 127.0.0.1, no container port for the app;
- Services: never the admin port; their targetPort is keygate's proxy port;
- Redis: a StatefulSet with a volume claim, AOF on with fsync every second, noeviction;
- PodDisruptionBudget vs replicas and the HPA's minimum; the PodMonitor's port exists.

Exits 1 with every problem listed.
"""

import json
import re
import sys
from pathlib import Path

import yaml

# Kinds kubernetes-validate has schemas for are checked there; these go to the CRD validator.
CRD_GROUPS = {"monitoring.coreos.com"}
ADMIN_PORT = 8081
PROXY_PORT = 8080
STATUS_PORT = 8082

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def duration_seconds(text):
    """keygate durations: an integer and a unit (500ms, 30s, 5m, 24h, 365d)."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(text).strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def listen_port(addr):
    return int(str(addr).rsplit(":", 1)[1])


def listen_host(addr):
    return str(addr).rsplit(":", 1)[0].strip("[]")


def check_container_security(where, pod_spec, c):
    psc = pod_spec.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    merged = {**psc, **sc}
    if merged.get("runAsNonRoot") is not True:
        problem(where, "runAsNonRoot is not true")
    if sc.get("readOnlyRootFilesystem") is not True:
        problem(where, "readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problem(where, "allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        problem(where, "capabilities.drop does not include ALL")
    if (merged.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problem(where, "seccompProfile is not RuntimeDefault")
    res = c.get("resources") or {}
    if not (res.get("requests") or {}).get("cpu") or not (res.get("requests") or {}).get("memory"):
        problem(where, "no cpu and memory requests")
    if not (res.get("limits") or {}).get("memory"):
        problem(where, "no memory limit")


def probe_on_status(where, probe, path, ports):
    if not probe or "httpGet" not in probe:
        problem(where, f"no httpGet probe for {path}")
        return
    get = probe["httpGet"]
    port = ports.get(get.get("port"), get.get("port"))
    if get.get("path") != path or port != STATUS_PORT:
        problem(where, f"probe should be GET {path} on the status port {STATUS_PORT}, is {get}")


def check_keygate_pod(source, kind, obj, docs):
    spec = obj["spec"]["template"]["spec"]
    name = f"{source}: {kind}/{obj['metadata']['name']}"
    containers = spec.get("containers") or []
    keygate = next((c for c in containers if c["name"] == "keygate"), None)
    if keygate is None:
        return False
    where = f"{name} container keygate"
    ports = {p.get("name"): p["containerPort"] for p in keygate.get("ports") or []}
    probe_on_status(where + " livenessProbe", keygate.get("livenessProbe"), "/healthz", ports)
    probe_on_status(where + " readinessProbe", keygate.get("readinessProbe"), "/readyz", ports)
    if ADMIN_PORT in ports.values():
        problem(where, f"declares the admin port {ADMIN_PORT}; it must stay in the pod")

    env = {e["name"]: e for e in keygate.get("env") or []}
    for var in ("KEYGATE_ADMIN_TOKEN", "KEYGATE_REDIS_URL"):
        if "secretKeyRef" not in ((env.get(var) or {}).get("valueFrom") or {}):
            problem(where, f"{var} does not come from a Secret")

    # The config: the ConfigMap mounted where --config points.
    args = keygate.get("args") or []
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    config = None
    for mount in keygate.get("volumeMounts") or []:
        if config_path and config_path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volume = next(v for v in spec.get("volumes") or [] if v["name"] == mount["name"])
            cm_name = (volume.get("configMap") or {}).get("name")
            cm = docs.get(("ConfigMap", cm_name))
            key = config_path[len(mount["mountPath"].rstrip("/")) + 1:]
            if cm is None or key not in cm.get("data", {}):
                problem(where, f"config {config_path}: no ConfigMap {cm_name} with key {key}")
            else:
                config = yaml.safe_load(cm["data"][key])
    if config is None:
        problem(where, f"cannot find the config file {config_path} in a mounted ConfigMap")
        return True

    shutdown = config.get("shutdown") or {}
    delay = duration_seconds(shutdown.get("delay", "0s"))
    grace = duration_seconds(shutdown.get("grace", "25s"))
    period = spec.get("terminationGracePeriodSeconds", 30)
    if not delay + grace < period:
        problem(name, f"shutdown.delay + shutdown.grace = {delay + grace}s is not below "
                      f"terminationGracePeriodSeconds = {period}s")
    if delay <= 0:
        problem(name, "shutdown.delay is 0: endpoints may still send traffic after SIGTERM")

    admin = (config.get("admin") or {}).get("listen", "127.0.0.1:8081")
    if listen_host(admin) not in ("127.0.0.1", "::1", "localhost"):
        problem(name, f"admin.listen {admin} is not loopback")
    for section, port_name, default in (("proxy", "http", "0.0.0.0:8080"),
                                        ("status", "status", "0.0.0.0:8082")):
        addr = (config.get(section) or {}).get("listen", default)
        if ports.get(port_name) != listen_port(addr):
            problem(name, f"{section}.listen {addr} does not match container port {port_name}")
    if (config.get("store") or {}).get("backend") != "redis":
        problem(name, "store.backend is not redis (pods would not share keys)")

    others = [c for c in containers if c["name"] != "keygate"]
    if others:  # sidecar: the application must be reachable only through keygate
        for route in config.get("routes") or []:
            host = re.sub(r"^https?://", "", route["upstream"]).split("/")[0].rsplit(":", 1)[0]
            if host not in ("127.0.0.1", "localhost", "[::1]"):
                problem(name, f"sidecar route {route['name']} goes to {route['upstream']}, "
                              "not to the application on loopback")
        for c in others:
            if c.get("ports"):
                problem(f"{name} container {c['name']}", "the application declares ports; "
                        "it should listen on 127.0.0.1 only")
    return True


def check(source, docs_list):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in docs_list}
    keygate_pods = []  # (labels, container ports by name)
    for d in docs_list:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            spec = d["spec"]["template"]["spec"]
            for c in spec.get("containers") or []:
                check_container_security(f"{source}: {kind}/{name} container {c['name']}", spec, c)
            if check_keygate_pod(source, kind, d, docs):
                keygate = next(c for c in spec["containers"] if c["name"] == "keygate")
                keygate_pods.append((d, {p.get("name"): p["containerPort"]
                                         for p in keygate.get("ports") or []}))

    def pods_selected(selector):
        return [(d, ports) for d, ports in keygate_pods
                if selector and all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                                    for k, v in selector.items())]

    if not keygate_pods:
        problem(source, "no Deployment runs a keygate container")
    for d in docs_list:
        kind, name = d["kind"], d["metadata"]["name"]
        where = f"{source}: {kind}/{name}"
        if kind == "Service":
            for p in d["spec"].get("ports") or []:
                if ADMIN_PORT in (p.get("port"), p.get("targetPort")):
                    problem(where, f"exposes the admin port {ADMIN_PORT}")
            for pod, ports in pods_selected(d["spec"].get("selector")):
                for p in d["spec"].get("ports") or []:
                    target = ports.get(p.get("targetPort"), p.get("targetPort"))
                    if target != PROXY_PORT:
                        problem(where, f"port {p.get('port')} targets {p.get('targetPort')}, "
                                       f"not keygate's proxy port {PROXY_PORT}")
        elif kind == "StatefulSet" and "redis" in name:
            if not d["spec"].get("volumeClaimTemplates"):
                problem(where, "Redis without a PersistentVolumeClaim")
            conf = None
            for v in d["spec"]["template"]["spec"].get("volumes") or []:
                cm = docs.get(("ConfigMap", (v.get("configMap") or {}).get("name")))
                if cm and "redis.conf" in cm.get("data", {}):
                    conf = cm["data"]["redis.conf"]
            if conf is None:
                problem(where, "no redis.conf ConfigMap mounted")
            else:
                settings = {}
                for line in conf.splitlines():
                    parts = line.split(None, 1)
                    if parts and not parts[0].startswith("#") and len(parts) == 2:
                        settings[parts[0].lower()] = parts[1].strip()
                for key, want in (("appendonly", "yes"), ("appendfsync", "always"),
                                  ("maxmemory-policy", "noeviction")):
                    if settings.get(key) != want:
                        problem(where, f"redis.conf: {key} should be {want}, is {settings.get(key)}")
        elif kind == "PodDisruptionBudget":
            selected = pods_selected(d["spec"]["selector"].get("matchLabels"))
            min_available = d["spec"].get("minAvailable")
            for pod, _ in selected:
                replicas = pod["spec"].get("replicas", 1)
                if isinstance(min_available, int) and not min_available < replicas:
                    problem(where, f"minAvailable {min_available} leaves no pod evictable "
                                   f"of {replicas}")
                for hpa in (x for x in docs_list if x["kind"] == "HorizontalPodAutoscaler"):
                    if hpa["spec"]["scaleTargetRef"]["name"] == pod["metadata"]["name"]:
                        if not min_available < hpa["spec"].get("minReplicas", 1):
                            problem(where, "the HPA's minReplicas would block evictions")
        elif kind == "PodMonitor":
            selected = pods_selected(d["spec"]["selector"].get("matchLabels"))
            if not selected:
                problem(where, "selects no pod running keygate")
            for ep in d["spec"].get("podMetricsEndpoints") or []:
                for pod, ports in selected:
                    if ports.get(ep.get("port")) != STATUS_PORT:
                        problem(where, f"port {ep.get('port')} is not keygate's status port")
                if ep.get("path", "/metrics") != "/metrics":
                    problem(where, "path is not /metrics")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    crds = []
    for rendered in sys.argv[2:]:
        path = Path(rendered)
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        core = []
        for d in docs:
            group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
            if group in CRD_GROUPS:
                crds.append({"source": path.name, "object": d})
            elif "." in group and not group.endswith(".k8s.io"):
                problem(path.name, f"{d['apiVersion']} {d['kind']}: no schema to validate it")
            else:
                core.append(d)
        (out / f"{path.stem}.core.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))
        check(path.name, docs)
        print(f"ok   {path.name}: {len(core)} built-in objects, "
              f"{len(docs) - len(core)} custom resources")
    (out / "crds.json").write_text(json.dumps(crds))
    for p in problems:
        print(f"FAIL {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Renders every overlay under deploy/kubernetes/overlays with kustomize and
checks what comes out, offline:

* each Kubernetes object against the Kubernetes API's schema (the PyPI
  package kubernetes-validate, strict: unknown fields fail), for every
  version in K8S_VERSIONS;
* KEDA's ScaledObject and TriggerAuthentication against the schemas in
  deploy/kubernetes/schemas/ (strict too);
* what no schema sees: selectors that select nothing, references to a
  ConfigMap, port, Deployment or TriggerAuthentication that is not there, a
  Service exposing an ops port, a secret passed as a plain value, a pod that
  may run as root or write its root filesystem, a container without
  resource requests and limits.

Usage: validate.py KUSTOMIZE_COMMAND...   e.g. validate.py kubectl kustomize
Prints one line per problem and exits 1 if there is any.
"""

import json
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
# The oldest Kubernetes release still in common use and the newest the
# validator knows; override with K8S_VERSIONS="1.31 1.35".
K8S_VERSIONS = os.environ.get("K8S_VERSIONS", "1.30 1.37").split()
KEDA_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
}
# Environment variables that hold passwords or keys: only from a Secret.
SECRET_VARIABLES = {"DATABASE_URL", "AMQP_URL", "CLERK_WEBHOOK_SECRET", "CLERK_SECRET_KEY"}
# The image's user (Dockerfile).
IMAGE_UID = 10001


def name_of(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_specs(objects):
    """(workload, pod template) for every Deployment and Job."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, obj["spec"]["template"]


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def selected_pods(selector, objects):
    return [(w, t) for w, t in pod_specs(objects) if matches(selector, t["metadata"].get("labels", {}))]


def container_ports(template):
    ports = {}
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port.get("name")
    return ports


def schema_problems(obj):
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in KEDA_SCHEMAS:
        with open(os.path.join(HERE, "schemas", KEDA_SCHEMAS[key]), encoding="utf-8") as f:
            schema = json.load(f)
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message} (KEDA schema)"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        ]
    problems = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path) or "(top)"
            problems.append(f"{path}: {error.message} (Kubernetes {error.version})")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"no schema: {error.message}")
    return problems


def reference_problems(objects):
    problems = []
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    config_maps = by_kind.get("ConfigMap", {})

    if "Secret" in by_kind:
        problems.append("Secret objects are rendered: secrets are created with kubectl, never kept in git")

    for workload, template in pod_specs(objects):
        where = name_of(workload)
        labels = template["metadata"].get("labels", {})
        if workload["kind"] == "Deployment":
            if not matches(workload["spec"]["selector"].get("matchLabels"), labels):
                problems.append(f"{where}: selector does not match its pod template's labels")
        spec = template["spec"]
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken must be false (no pod talks to the API)")
        pod_security = spec.get("securityContext", {})
        if pod_security.get("runAsNonRoot") is not True or pod_security.get("runAsUser") != IMAGE_UID:
            problems.append(f"{where}: the pod must run as non-root, uid {IMAGE_UID} (the image's user)")
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile must be RuntimeDefault")
        for volume in spec.get("volumes", []):
            cm = volume.get("configMap")
            if cm and cm["name"] not in config_maps and not cm.get("optional"):
                problems.append(f"{where}: volume {volume['name']} names ConfigMap {cm['name']}, which is not rendered")
        for container in spec["containers"]:
            here = f"{where} container {container['name']}"
            security = container.get("securityContext", {})
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{here}: allowPrivilegeEscalation must be false")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{here}: readOnlyRootFilesystem must be true")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                problems.append(f"{here}: capabilities must drop ALL")
            resources = container.get("resources", {})
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(section, {}):
                        problems.append(f"{here}: resources.{section}.{resource} is not set")
            port_names = {p.get("name") for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    problems.append(f"{here}: {probe} uses port {port}, which the container does not declare")
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref and ref["name"] not in config_maps and not ref.get("optional"):
                    problems.append(f"{here}: envFrom names ConfigMap {ref['name']}, which is not rendered")
            for variable in container.get("env", []):
                if variable["name"] in SECRET_VARIABLES and "secretKeyRef" not in variable.get("valueFrom", {}):
                    problems.append(f"{here}: {variable['name']} must come from a Secret (secretKeyRef)")

    for service in by_kind.get("Service", {}).values():
        where = name_of(service)
        pods = selected_pods(service["spec"].get("selector"), objects)
        if not pods:
            problems.append(f"{where}: its selector matches no pod template")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload, template in pods:
                ports = container_ports(template)
                known = target in ports.values() if isinstance(target, str) else target in ports
                if not known:
                    problems.append(f"{where}: targetPort {target} is not a port of {name_of(workload)}")
                name = target if isinstance(target, str) else ports.get(target)
                if name == "ops":
                    problems.append(f"{where}: exposes the ops port (/metrics, /readyz) of {name_of(workload)}")

    for budget in by_kind.get("PodDisruptionBudget", {}).values():
        if not selected_pods(budget["spec"]["selector"].get("matchLabels"), objects):
            problems.append(f"{name_of(budget)}: its selector matches no pod template")

    for policy in by_kind.get("NetworkPolicy", {}).values():
        pods = selected_pods(policy["spec"]["podSelector"].get("matchLabels"), objects)
        if not pods:
            problems.append(f"{name_of(policy)}: its podSelector matches no pod template")
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                for workload, template in pods:
                    if port["port"] not in container_ports(template):
                        problems.append(f"{name_of(policy)}: port {port['port']} is not a port of {name_of(workload)}")

    config = next((cm for name, cm in config_maps.items() if name.startswith("clerk-events-config")), None)
    prefix = (config or {}).get("data", {}).get("AMQP_PREFIX")
    for scaled in by_kind.get("ScaledObject", {}).values():
        where = name_of(scaled)
        target = scaled["spec"]["scaleTargetRef"]
        deployment = by_kind.get(target.get("kind", "Deployment"), {}).get(target["name"])
        if deployment is None:
            problems.append(f"{where}: scales {target['name']}, which is not rendered")
        elif "replicas" in deployment["spec"]:
            problems.append(f"{where}: {name_of(deployment)} sets replicas, which would fight KEDA on every apply")
        for trigger in scaled["spec"]["triggers"]:
            ref = trigger.get("authenticationRef")
            if ref and ref["name"] not in by_kind.get(ref.get("kind", "TriggerAuthentication"), {}):
                problems.append(f"{where}: authenticationRef {ref['name']} is not rendered")
            queue = trigger["metadata"].get("queueName")
            if trigger["type"] == "rabbitmq" and prefix and queue != f"{prefix}.events.worker":
                problems.append(f"{where}: queueName {queue} is not {prefix}.events.worker (AMQP_PREFIX={prefix})")
    return problems


def main():
    kustomize = sys.argv[1:]
    if not kustomize:
        sys.exit("usage: validate.py KUSTOMIZE_COMMAND...  (e.g. kubectl kustomize)")
    overlays_dir = os.path.join(HERE, "overlays")
    overlays = sorted(d for d in os.listdir(overlays_dir) if os.path.isdir(os.path.join(overlays_dir, d)))
    failed = False
    for overlay in overlays:
        path = os.path.join(overlays_dir, overlay)
        shown = os.path.relpath(path)
        rendered = subprocess.run(kustomize + [path], capture_output=True, text=True)
        if rendered.returncode != 0:
            print(f"{shown}: kustomize failed:\n{rendered.stderr.strip()}", file=sys.stderr)
            failed = True
            continue
        objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
        problems = []
        keda = 0
        for obj in objects:
            if (obj.get("apiVersion"), obj.get("kind")) in KEDA_SCHEMAS:
                keda += 1
            problems += [f"{name_of(obj)}: {p}" for p in schema_problems(obj)]
        problems += reference_problems(objects)
        for problem in problems:
            print(f"{shown}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        verdict = f"{len(problems)} problem(s)" if problems else "valid"
        print(
            f"{shown}: {len(objects)} objects: {len(objects) - keda} against the Kubernetes "
            f"{' and '.join(K8S_VERSIONS)} schemas, {keda} against KEDA's (strict); "
            f"references and pod security checked: {verdict}"
        )
    if not overlays:
        print(f"no overlay under {overlays_dir}", file=sys.stderr)
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

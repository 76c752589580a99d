#!/usr/bin/env python3
"""Runs the pods of a rendered Strata Helm chart as local processes.

Proves that the configuration the chart renders (command lines, environment,
config files, Services) is one the `strata` binary accepts and that the
cluster it describes works, without Kubernetes:

    helm template t helm/strata --set clusterSecret.value=... \
        --set kafka.brokers=127.0.0.1:PORT --set s3.endpoint=http://127.0.0.1:PORT \
        ... > rendered.yaml
    STRATA_BIN=target/debug/strata \
        python3 integration_tests/helm/rendered_cluster.py rendered.yaml

1. Every StatefulSet and Deployment becomes spec.replicas pods named
   <name>-<i>. Each container's command line is the image entrypoint
   `strata` (replaced by $STRATA_BIN) plus `command` and `args`, with the
   container's environment resolved as the kubelet would: literal values,
   secretKeyRef/configMapKeyRef from the rendered Secrets and ConfigMaps,
   the downward API (metadata.name, metadata.namespace = --namespace,
   status.podIP = the pod's own loopback IP), and `$(VAR)` expansion.
2. Each pod gets its own loopback IP (127.0.77.10, .11, ...). Service DNS
   names in the args, the environment and the mounted config files are
   replaced by those IPs: <pod>.<headless-svc>.<ns>.svc.<clusterDomain> (for
   a StatefulSet pod whose serviceName is that Service), and <svc>,
   <svc>.<ns>, <svc>.<ns>.svc, <svc>.<ns>.svc.<clusterDomain> (the first pod
   the Service selects, with the Service port mapped to its targetPort).
   Listen addresses 0.0.0.0: become the pod's IP. Every volume gets a
   per-pod directory (ConfigMap and Secret volumes are written as files),
   and every mountPath in the args, the environment and the config files is
   rewritten to it. Kafka and S3 endpoints are used as rendered.
3. Every pod starts as a local process (log: <workdir>/<pod>.log); once each
   readinessProbe answers 200, the cluster is checked: meta's GET /nodes lists
   every data server, a table is created through server 0, a row inserted
   through each server, and SELECT count(*) through each answers the number
   of servers.

Exit 0 on success, 1 with the failing step and the tail of the pods' logs
otherwise. Every process started is stopped at exit (SIGTERM to its process
group, SIGKILL after 10 s), also on Ctrl-C, unless --keep.

--dry-run prints each pod's command line, environment and files, and starts
nothing (STRATA_BIN is then optional).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("rendered_cluster.py needs PyYAML (scripts/bootstrap --python installs it)")

IP_PREFIX = "127.0.77."
FIRST_IP = 10
ENTRYPOINTS = ("strata", "/usr/local/bin/strata")
# Host environment passed on to every process (a container has its image's
# environment; locally these stand in for it).
PASS_ENV = ("PATH", "STRATA_ETCD_BIN", "RUST_LOG", "RUST_BACKTRACE", "LANG", "LC_ALL")
STOP_GRACE = 10.0


class Failure(Exception):
    """A failed step: its message, and the pods whose logs explain it."""

    def __init__(self, message: str, pods: list[str] | None = None):
        super().__init__(message)
        self.pods = pods


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------
# The rendered objects


@dataclass
class Container:
    name: str
    spec: dict
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, Path]] = field(default_factory=list)  # (mountPath, host path)


@dataclass
class Pod:
    name: str
    index: int
    ip: str
    workload: dict
    kind: str
    labels: dict
    annotations: dict
    spec: dict
    service_name: str | None  # a StatefulSet's spec.serviceName
    containers: list[Container] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)  # host path -> content
    dirs: list[Path] = field(default_factory=list)
    tmpdir: Path | None = None


class Rendered:
    def __init__(self, docs: list[dict], namespace: str):
        self.namespace = namespace
        self.secrets: dict[str, dict[str, str]] = {}
        self.configmaps: dict[str, dict[str, str]] = {}
        self.services: list[dict] = []
        self.workloads: list[dict] = []
        self.other_namespaces: set[str] = set()
        for d in docs:
            kind = d.get("kind")
            name = d.get("metadata", {}).get("name")
            ns = d.get("metadata", {}).get("namespace")
            if ns and ns != namespace and ns not in self.other_namespaces:
                self.other_namespaces.add(ns)
                log(f"warning: {kind}/{name} (and maybe more) is in namespace {ns}, not --namespace "
                    f"{namespace}: render with `helm template -n {namespace}` or pass --namespace {ns}")
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
                data.update({k: str(v) for k, v in (d.get("stringData") or {}).items()})
                self.secrets[name] = data
            elif kind == "ConfigMap":
                data = {k: str(v) for k, v in (d.get("data") or {}).items()}
                self.configmaps[name] = data
            elif kind == "Service":
                self.services.append(d)
            elif kind in ("StatefulSet", "Deployment"):
                self.workloads.append(d)

    def ns_of(self, obj: dict) -> str:
        return obj.get("metadata", {}).get("namespace") or self.namespace


def load_docs(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict) and d.get("kind")]


# ---------------------------------------------------------------------------
# Environment: the kubelet's resolution and $(VAR) expansion

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion: $(VAR) of a defined VAR is replaced, $$ is a
    literal $, any other reference is left as written."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


def field_ref(pod: Pod, rendered: Rendered, path: str) -> str:
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        src = pod.labels if m.group(1) == "labels" else pod.annotations
        return str(src.get(m.group(2), ""))
    values = {
        "metadata.name": pod.name,
        "metadata.namespace": rendered.namespace,
        "metadata.uid": f"00000000-0000-0000-0000-{pod.index + FIRST_IP:012d}",
        "spec.nodeName": "localhost",
        "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
        "status.podIP": pod.ip,
        "status.podIPs": pod.ip,
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path not in values:
        raise Failure(f"pod {pod.name}: unsupported downward API field {path}")
    return values[path]


def key_ref(pod: Pod, store: dict[str, dict[str, str]], what: str, ref: dict) -> str | None:
    name, key = ref.get("name"), ref.get("key")
    if name in store and key in store[name]:
        return store[name][key]
    if ref.get("optional"):
        return None
    raise Failure(f"pod {pod.name}: {what} {name!r} key {key!r} is not in the rendered chart "
                  f"(an existing {what} must be rendered too to run it locally)")


def resolve_env(pod: Pod, rendered: Rendered, c: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in c.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            data = rendered.configmaps.get(src["configMapRef"]["name"])
        else:
            data = rendered.secrets.get(src["secretRef"]["name"])
        for k, v in (data or {}).items():
            env[prefix + k] = v
    for e in c.get("env") or []:
        name = e["name"]
        if "value" in e or "valueFrom" not in e:
            env[name] = expand(str(e.get("value", "")), env)
            continue
        vf = e["valueFrom"]
        if "fieldRef" in vf:
            value = field_ref(pod, rendered, vf["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in vf:
            value = key_ref(pod, rendered.secrets, "Secret", vf["secretKeyRef"])
        elif "configMapKeyRef" in vf:
            value = key_ref(pod, rendered.configmaps, "ConfigMap", vf["configMapKeyRef"])
        else:
            raise Failure(f"pod {pod.name}: unsupported valueFrom in env {name}: {vf}")
        if value is not None:
            env[name] = value
    return env


# ---------------------------------------------------------------------------
# Names and addresses

_HOST = re.compile(
    r"(?<![A-Za-z0-9.\-])"
    r"([A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*)"
    r"(?![A-Za-z0-9\-])"
    r"(?::(\d+))?"
)


@dataclass
class Target:
    ip: str
    ports: dict[int, int]  # Service port -> container port (empty: as written)


def selects(selector: dict | None, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(pod: Pod, target: Any) -> int | None:
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    for c in pod.spec.get("containers", []):
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return int(p["containerPort"])
    return None


def build_names(rendered: Rendered, pods: list[Pod], cluster_domain: str) -> dict[str, Target]:
    names: dict[str, Target] = {}
    for svc in rendered.services:
        sname = svc["metadata"]["name"]
        ns = rendered.ns_of(svc)
        spec = svc.get("spec") or {}
        chosen = [p for p in pods if selects(spec.get("selector"), p.labels)]
        if not chosen:
            continue
        if spec.get("clusterIP") == "None":
            for p in chosen:
                # Kubernetes gives a pod a DNS record under a headless
                # Service only when its subdomain (a StatefulSet's
                # serviceName) names that Service.
                if p.service_name != sname:
                    continue
                for suffix in (f"{sname}.{ns}.svc.{cluster_domain}", f"{sname}.{ns}.svc",
                               f"{sname}.{ns}", sname):
                    names[f"{p.name}.{suffix}"] = Target(p.ip, {})
        first = chosen[0]
        ports: dict[int, int] = {}
        for sp in spec.get("ports") or []:
            cp = container_port(first, sp.get("targetPort", sp["port"]))
            if cp is not None:
                ports[int(sp["port"])] = cp
        for n in (sname, f"{sname}.{ns}", f"{sname}.{ns}.svc", f"{sname}.{ns}.svc.{cluster_domain}"):
            names[n] = Target(first.ip, ports)
    return names


def substitute_names(text: str, names: dict[str, Target]) -> str:
    def sub(m: re.Match) -> str:
        host, port = m.group(1), m.group(2)
        t = names.get(host)
        if t is None:
            return m.group(0)
        if port is None:
            return t.ip
        return f"{t.ip}:{t.ports.get(int(port), int(port))}"

    return _HOST.sub(sub, text)


def rewrite_paths(text: str, mounts: list[tuple[str, Path]]) -> str:
    """Replaces each mountPath (a whole path or a path's prefix) by its host
    directory, in one pass so that a replacement is not rewritten again."""
    if not mounts:
        return text
    hosts = {m.rstrip("/") or "/": str(h) for m, h in mounts}
    alternatives = "|".join(re.escape(m) for m in sorted(hosts, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w.\-/])(" + alternatives + r")(?=/|$|[^\w.\-])")
    return pattern.sub(lambda m: hosts[m.group(1)], text)


def rewrite(text: str, pod: Pod, names: dict[str, Target], mounts: list[tuple[str, Path]]) -> str:
    text = substitute_names(text, names)
    text = text.replace("0.0.0.0:", f"{pod.ip}:")
    return rewrite_paths(text, mounts)


def leftovers(text: str) -> list[str]:
    """Service DNS names (a `svc` label) that no rendered Service resolved."""
    return [m.group(1) for m in _HOST.finditer(text) if "svc" in m.group(1).split(".")[1:]]


# ---------------------------------------------------------------------------
# Pods


def make_pods(rendered: Rendered) -> list[Pod]:
    pods: list[Pod] = []
    for w in rendered.workloads:
        spec = w.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        tmpl = spec.get("template") or {}
        meta = tmpl.get("metadata") or {}
        for i in range(replicas):
            n = FIRST_IP + len(pods)
            if n > 254:
                raise Failure("more than 245 pods")
            pods.append(Pod(
                name=f"{w['metadata']['name']}-{i}",
                index=len(pods),
                ip=f"{IP_PREFIX}{n}",
                workload=w,
                kind=w["kind"],
                labels=dict(meta.get("labels") or {}),
                annotations=dict(meta.get("annotations") or {}),
                spec=tmpl.get("spec") or {},
                service_name=spec.get("serviceName") if w["kind"] == "StatefulSet" else None,
            ))
    return pods


def volume_files(pod: Pod, rendered: Rendered, vol: dict) -> dict[str, str] | None:
    """A ConfigMap or Secret volume's files (relative path -> content);
    None for an empty directory (emptyDir, a PVC)."""
    if "configMap" in vol:
        src, store, what = vol["configMap"], rendered.configmaps, "ConfigMap"
    elif "secret" in vol:
        src, store, what = vol["secret"], rendered.secrets, "Secret"
        src = dict(src, name=src.get("secretName"))
    else:
        return None
    data = store.get(src.get("name"))
    if data is None:
        if src.get("optional"):
            return {}
        raise Failure(f"pod {pod.name}: {what} {src.get('name')!r} of volume {vol['name']} is not rendered")
    items = src.get("items")
    if not items:
        return dict(data)
    return {it["path"]: data[it["key"]] for it in items if it["key"] in data}


def prepare(pod: Pod, rendered: Rendered, names: dict[str, Target], workdir: Path, strata_bin: str) -> None:
    pod_dir = workdir / pod.name
    volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
    for claim in (pod.workload.get("spec") or {}).get("volumeClaimTemplates") or []:
        volumes.setdefault(claim["metadata"]["name"], {"name": claim["metadata"]["name"], "pvc": True})
    vol_dirs: dict[str, Path] = {}
    vol_files: dict[str, dict[str, str]] = {}
    for name, vol in volumes.items():
        vol_dirs[name] = pod_dir / "volumes" / name
        files = volume_files(pod, rendered, vol)
        if files is not None:
            vol_files[name] = files
    for spec in pod.spec.get("containers", []):
        c = Container(spec["name"], spec)
        for m in spec.get("volumeMounts") or []:
            if m["name"] not in vol_dirs:
                raise Failure(f"pod {pod.name}: volumeMount {m['name']} has no volume")
            host = vol_dirs[m["name"]]
            if m.get("subPath"):
                host = host / m["subPath"]
            c.mounts.append((m["mountPath"], host))
            if m["name"] not in vol_files:
                pod.dirs.append(host)  # an emptyDir or a PVC (or a subPath of one)
            if m["mountPath"].rstrip("/") == "/tmp":
                pod.tmpdir = host
        env = resolve_env(pod, rendered, spec)
        # $(VAR) in command and args: the container's whole environment.
        cmd = [expand(str(a), env) for a in spec.get("command") or []]
        args = [expand(str(a), env) for a in spec.get("args") or []]
        if cmd:
            if cmd[0] in ENTRYPOINTS:
                cmd[0] = strata_bin
        else:
            cmd = [strata_bin]  # the image's entrypoint
        c.argv = cmd[:1] + [rewrite(a, pod, names, c.mounts) for a in cmd[1:] + args]
        c.env = {k: rewrite(v, pod, names, c.mounts) for k, v in env.items()}
        pod.containers.append(c)
    # Files of the ConfigMap/Secret volumes, rewritten like the args.
    mounts = [m for c in pod.containers for m in c.mounts]
    for name, files in vol_files.items():
        for rel, content in files.items():
            pod.files[vol_dirs[name] / rel] = rewrite(content, pod, names, mounts)
    pod.dirs += [d for n, d in vol_dirs.items() if n not in vol_files]


# ---------------------------------------------------------------------------
# Processes


@dataclass
class Proc:
    pod: Pod
    container: Container
    popen: subprocess.Popen
    log_path: Path


def port_in_use(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return True
    return False


def start(pods: list[Pod], workdir: Path) -> list[Proc]:
    for pod in pods:
        for c in pod.containers:
            for p in c.spec.get("ports") or []:
                if port_in_use(pod.ip, int(p["containerPort"])):
                    raise Failure(f"{pod.ip}:{p['containerPort']} (pod {pod.name}) is in use: "
                                  "a process of an earlier run (--keep)?")
    for pod in pods:
        for path, content in pod.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        for d in pod.dirs:
            d.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    try:
        for pod in pods:
            for c in pod.containers:
                env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
                env["HOSTNAME"] = pod.name
                if pod.tmpdir:
                    env["TMPDIR"] = str(pod.tmpdir)
                env.update(c.env)
                suffix = "" if len(pod.containers) == 1 else f"-{c.name}"
                log_path = workdir / f"{pod.name}{suffix}.log"
                with open(log_path, "ab") as out:
                    popen = subprocess.Popen(
                        c.argv, env=env, cwd=workdir / pod.name, stdin=subprocess.DEVNULL,
                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                procs.append(Proc(pod, c, popen, log_path))
                log(f"    started {pod.name}{suffix} ({pod.ip}) pid {popen.pid}, log {log_path}")
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: list[Proc]) -> None:
    """SIGTERM to each process group (the process and its children, such as
    embedded etcd), SIGKILL to those left after STOP_GRACE seconds."""
    if not procs:
        return
    log(f"==> stopping {len(procs)} process(es)")
    for p in procs:
        try:
            os.killpg(p.popen.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + STOP_GRACE
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"    {p.pod.name} did not stop in {STOP_GRACE:.0f}s: SIGKILL")
    for p in procs:
        # Also the group's other members (a leader that exited may leave
        # children behind).
        try:
            os.killpg(p.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


def show_logs(procs: list[Proc], only: list[str] | None) -> None:
    for p in procs:
        if only is not None and p.pod.name not in only:
            continue
        status = p.popen.poll()
        state = "running" if status is None else f"exited with {status}"
        print(f"---- {p.log_path.name} ({state}), last lines:", file=sys.stderr)
        print(tail(p.log_path), file=sys.stderr)
        for extra in sorted((p.log_path.parent / p.pod.name).glob("volumes/*/*/etcd.log")):
            print(f"---- {extra}, last lines:", file=sys.stderr)
            print(tail(extra, 20), file=sys.stderr)


# ---------------------------------------------------------------------------
# HTTP


# Loopback only: never through a proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def probe_url(pod: Pod, c: Container) -> str | None:
    probe = (c.spec.get("readinessProbe") or {}).get("httpGet")
    if not probe:
        return None
    port = container_port(pod, probe["port"])
    host = probe.get("host") or pod.ip
    scheme = probe.get("scheme", "HTTP").lower()
    return f"{scheme}://{host}:{port}{probe.get('path', '/')}"


def wait_ready(procs: list[Proc], timeout: float) -> None:
    pending = {(p.pod.name, p.container.name): p for p in procs}
    deadline = time.monotonic() + timeout
    while pending:
        for key, p in list(pending.items()):
            if p.popen.poll() is not None:
                raise Failure(f"pod {p.pod.name} exited with {p.popen.returncode} before it was ready",
                              [p.pod.name])
            url = probe_url(p.pod, p.container)
            if url is None:
                del pending[key]
                continue
            try:
                status, _ = http("GET", url, timeout=2)
            except (OSError, urllib.error.URLError):
                status = 0
            if status == 200:
                log(f"    {p.pod.name} ready ({url})")
                del pending[key]
        if not pending:
            break
        if time.monotonic() > deadline:
            names = sorted({p.pod.name for p in pending.values()})
            raise Failure(f"not ready after {timeout:.0f}s: {', '.join(names)}", names)
        time.sleep(0.5)


# ---------------------------------------------------------------------------
# The checks


def flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def role(c: Container) -> str | None:
    """meta, server (data) or compute, from the strata subcommand."""
    sub = next((a for a in c.argv[1:] if not a.startswith("-")), None)
    if sub == "meta":
        return "meta"
    if sub == "server":
        return "compute" if flag(c.argv, "--role") == "compute" else "server"
    return None


def sql(ip_port: str, query: str, pod: str, what: str, retry_for: float = 30.0) -> dict:
    """POST /sql; retries retryable refusals and unreachable servers for up
    to retry_for seconds."""
    deadline = time.monotonic() + retry_for
    attempt = 0
    while True:
        attempt += 1
        try:
            status, text = http("POST", f"http://{ip_port}/sql", {"query": query}, timeout=30)
        except (OSError, urllib.error.URLError) as e:
            status, text = 0, str(e)
        if status == 200:
            return json.loads(text)
        try:
            body = json.loads(text)
        except ValueError:
            body = {}
        if attempt > 1 and "CREATE TABLE" in query and "exist" in text.lower():
            return {"affected_rows": 0}  # an earlier attempt created it
        # Unreachable, a server error, or a refusal the server calls
        # retryable (a table being opened, shards being assigned).
        retryable = status == 0 or status >= 500 or body.get("retryable") is True
        if not retryable or time.monotonic() > deadline:
            raise Failure(f"{what} through {pod} ({ip_port}): HTTP {status}: {text.strip()[:500]}", [pod])
        time.sleep(1)


def check(procs: list[Proc]) -> None:
    by_role: dict[str, list[Proc]] = {"meta": [], "server": [], "compute": []}
    for p in procs:
        r = role(p.container)
        if r:
            by_role[r].append(p)
    metas, servers = by_role["meta"], by_role["server"]
    if not metas or not servers:
        raise Failure(f"the chart has {len(metas)} meta and {len(servers)} data server pod(s); "
                      "the checks need at least one of each")
    expected = {flag(p.container.argv, "--advertise-addr") or flag(p.container.argv, "--grpc-addr"): p.pod.name
                for p in servers + by_role["compute"]}

    log("==> meta lists every server (GET /nodes)")
    meta_http = flag(metas[0].container.argv, "--http-addr")
    deadline = time.monotonic() + 30
    while True:
        try:
            status, text = http("GET", f"http://{meta_http}/nodes")
        except (OSError, urllib.error.URLError) as e:
            status, text = 0, str(e)
        listed = set()
        if status == 200:
            nodes = json.loads(text)
            listed = {n.get("id") for n in nodes} | {n.get("endpoint") for n in nodes}
        missing = [f"{pod} ({addr})" for addr, pod in expected.items() if addr not in listed]
        if status == 200 and not missing:
            log(f"    {meta_http}/nodes lists {', '.join(sorted(expected))}")
            break
        if time.monotonic() > deadline:
            raise Failure(f"GET {meta_http}/nodes: HTTP {status}; missing {', '.join(missing) or '?'}; "
                          f"answer: {text.strip()[:800]}", [metas[0].pod.name] + [p.pod.name for p in servers])
        time.sleep(1)

    addr = {p.pod.name: flag(p.container.argv, "--http-addr") for p in servers}
    first = servers[0].pod.name
    log(f"==> CREATE TABLE helm_check through {first}")
    sql(addr[first], "CREATE TABLE helm_check (host STRING TAG, v DOUBLE, ts TIMESTAMP NOT NULL, "
        "TIMESTAMP KEY(ts))", first, "CREATE TABLE")
    for i, p in enumerate(servers):
        log(f"==> INSERT through {p.pod.name}")
        sql(addr[p.pod.name], f"INSERT INTO helm_check VALUES ('pod-{i}', {i}, {1000 + i})",
            p.pod.name, "INSERT")
    for p in servers:
        log(f"==> SELECT count(*) through {p.pod.name}")
        deadline = time.monotonic() + 30
        while True:
            out = sql(addr[p.pod.name], "SELECT count(*) FROM helm_check", p.pod.name, "SELECT")
            rows = out.get("rows") or []
            count = next(iter(rows[0].values()), None) if rows else None
            if count == len(servers):
                log(f"    {count}")
                break
            if time.monotonic() > deadline:
                raise Failure(f"SELECT count(*) through {p.pod.name} answered {out}, not {len(servers)}",
                              [p.pod.name])
            time.sleep(1)


# ---------------------------------------------------------------------------


def print_pod(pod: Pod) -> None:
    print(f"=== pod {pod.name} ({pod.kind} {pod.workload['metadata']['name']}) ip {pod.ip}")
    for c in pod.containers:
        print(f"  container {c.name}")
        print("    command: " + " \\\n        ".join(shlex.quote(a) for a in c.argv))
        print("    env:")
        for k, v in c.env.items():
            print(f"      {k}={v}")
        for mp, host in c.mounts:
            print(f"    mount {mp} -> {host}")
    for path, content in pod.files.items():
        print(f"  file {path}:")
        for line in content.splitlines():
            print(f"    | {line}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rendered", help="a file with `helm template` output ('-': stdin)")
    ap.add_argument("--namespace", default="default", help="the release namespace (default: default)")
    ap.add_argument("--cluster-domain", default="cluster.local")
    ap.add_argument("--workdir", help="logs and the pods' files (default: a new temporary directory)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness (120)")
    ap.add_argument("--keep", action="store_true", help="leave the processes running at the end")
    ap.add_argument("--dry-run", action="store_true", help="print the pods; start nothing")
    args = ap.parse_args()

    strata_bin = os.environ.get("STRATA_BIN")
    if not strata_bin:
        if not args.dry_run:
            print("set STRATA_BIN to the strata binary", file=sys.stderr)
            return 1
        strata_bin = "$STRATA_BIN"
    elif not args.dry_run:
        strata_bin = os.path.abspath(strata_bin)
        if not os.access(strata_bin, os.X_OK):
            print(f"STRATA_BIN={strata_bin} is not an executable", file=sys.stderr)
            return 1
    if args.workdir:
        workdir = Path(args.workdir).resolve()
    elif args.dry_run:
        workdir = Path(tempfile.gettempdir()) / "strata-helm-DRY-RUN"  # not created
    else:
        workdir = Path(tempfile.mkdtemp(prefix="strata-helm-"))

    procs: list[Proc] = []
    step = "reading the rendered chart"

    def on_term(signum, frame):  # SIGTERM: stop like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Also when started in the background, where SIGINT starts ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        log(f"==> {step}")
        if args.rendered == "-":
            docs = [d for d in yaml.safe_load_all(sys.stdin) if isinstance(d, dict) and d.get("kind")]
        else:
            docs = load_docs(args.rendered)
        rendered = Rendered(docs, args.namespace)
        pods = make_pods(rendered)
        if not pods:
            raise Failure("no StatefulSet or Deployment with replicas in the rendered chart")
        names = build_names(rendered, pods, args.cluster_domain)
        for pod in pods:
            prepare(pod, rendered, names, workdir, strata_bin)
            texts = [a for c in pod.containers for a in c.argv] + \
                [v for c in pod.containers for v in c.env.values()] + list(pod.files.values())
            left = sorted({n for t in texts for n in leftovers(t)})
            if left:
                raise Failure(f"pod {pod.name}: service names no rendered Service resolves: {', '.join(left)}")
        log(f"    {len(pods)} pod(s): " + ", ".join(f"{p.name}={p.ip}" for p in pods))
        if args.dry_run:
            for pod in pods:
                print_pod(pod)
            return 0

        step = "starting the pods"
        log(f"==> {step} (workdir {workdir})")
        workdir.mkdir(parents=True, exist_ok=True)
        procs = start(pods, workdir)
        (workdir / "pids").write_text("".join(f"{p.popen.pid} {p.pod.name}\n" for p in procs))

        step = "waiting for readiness"
        log(f"==> {step} (up to {args.timeout:.0f}s)")
        wait_ready(procs, args.timeout)

        step = "checking the cluster"
        check(procs)
        log("==> OK: the rendered chart runs and serves")
        return 0
    except Failure as e:
        print(f"FAILED ({step}): {e}", file=sys.stderr)
        show_logs(procs, e.pods)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted ({step})", file=sys.stderr)
        args.keep = False
        return 1
    except Exception as e:  # noqa: BLE001 - report any error with the logs
        print(f"FAILED ({step}): {type(e).__name__}: {e}", file=sys.stderr)
        show_logs(procs, None)
        return 1
    finally:
        if procs and args.keep:
            log(f"==> --keep: {len(procs)} process(es) left running; stop them with:")
            log("    " + "; ".join(f"kill -- -{p.popen.pid}" for p in procs))
        else:
            stop(procs)


if __name__ == "__main__":
    sys.exit(main())

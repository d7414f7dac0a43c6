#!/usr/bin/env python3
"""Tests charts/cri-mesos through the Helm v4 SDK (PyPI's helm-python-sdk, no helm binary).

Lints the chart, renders it with its defaults and with tests/chart/nondefault-values.yaml,
and checks the manifests: the DaemonSet's host paths, namespaces and security context,
the config file's keys against the daemon's own flag names (from `cri-mesos --help`), and
that every tests/chart/bad-*-values.yaml is refused by the schema naming the key its
`# expect:` line gives. As root it also starts the daemon on the rendered config file,
which refuses unknown keys: a flag renamed in the daemon fails here, not on a node.

Usage: chart_test.py DAEMON_BINARY
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import helm_python as helm

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "cri-mesos"
CASES = ROOT / "tests" / "chart"
# The paths a node's runtime needs, whatever the values (the list).
HOST_PATHS = {
    "/run/cri-mesos",
    "/var/lib/cri-mesos",
    "/var/log/pods",
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/sys/fs/cgroup",
    "/etc/systemd/system",
}

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def daemon_flags(binary: str) -> set[str]:
    """The daemon's long flags in Mesos spelling, `--config` aside (it names the file)."""
    out = subprocess.run([binary, "--help"], check=True, capture_output=True, text=True).stdout
    names = set(re.findall(r"^\s+--([a-z0-9_]+)[ \[<\n]", out, re.M))
    names -= {"config", "help", "version"}
    if len(names) < 10:
        sys.exit(f"chart_test: could not read flag names from `{binary} --help`:\n{out}")
    return names


def docs(manifests: dict[str, str]) -> list[dict]:
    """Every rendered object; the SDK's YAML reader is Helm's own."""
    objs = []
    for name, text in manifests.items():
        if name.endswith("NOTES.txt"):
            continue
        for doc in re.split(r"^---\s*$", text, flags=re.M):
            if doc.strip() and not all(
                line.strip().startswith("#") or not line.strip() for line in doc.splitlines()
            ):
                objs.append(helm.values_from_yaml(doc))
    return objs


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o.get("kind") == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def load_values(path: Path) -> dict:
    return helm.values_from_yaml(path.read_text())


def check_render(chart: helm.Chart, values: dict | None, label: str, flags: set[str]) -> dict:
    merged = chart.merge_values(values)
    manifests = chart.render(values, name="cri-mesos", namespace="kube-system", is_install=True)
    objs = docs(manifests)
    ds = one(objs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    check(spec.get("hostPID") is True, f"{label}: hostPID")
    check(spec.get("hostNetwork") is True, f"{label}: hostNetwork")
    containers = spec.get("initContainers", []) + spec["containers"]
    check(
        [c["name"] for c in containers] == ["install", "watch"],
        f"{label}: an install init container and a watch container",
    )
    for c in containers:
        check(c.get("securityContext", {}).get("privileged") is True, f"{label}: {c['name']} is privileged")
        check(c["image"] == f"{merged['image']['repository']}:{merged['image']['tag'] or '0.1.0'}",
              f"{label}: {c['name']} runs the installer image")
        check(c.get("resources") == merged["resources"], f"{label}: {c['name']} has the resources")
    install = containers[0]
    check(install["args"][0] == "install" and containers[1]["args"][0] == "watch",
          f"{label}: install.sh install, then install.sh watch")
    check("nsenter --target 1 --mount --uts --ipc --net --pid --cgroup --" in install["args"],
          f"{label}: the daemon is started in the host's namespaces")

    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    f = merged["flags"]
    want = {f["runtime_dir"], f["work_dir"], "/var/log/pods", f["network_cni_config_dir"],
            f["cgroups_hierarchy"], merged["install"]["unitDir"], merged["install"]["prefix"],
            merged["install"]["configDir"], *f["network_cni_plugins_dir"].split(":")}
    check(set(host_paths.values()) == want, f"{label}: host paths {sorted(host_paths.values())}")
    if values is None:
        check(HOST_PATHS <= set(host_paths.values()), f"{label}: the node's paths are all mounted")
    types = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in spec["volumes"] if "hostPath" in v}
    check(types.pop(f["cgroups_hierarchy"]) == "Directory" and set(types.values()) == {"DirectoryOrCreate"},
          f"{label}: the cgroup hierarchy must exist; the other dirs are created")
    for c in containers:
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        check(all(name in mounts and mounts[name]["mountPath"] == p for name, p in host_paths.items()),
              f"{label}: {c['name']} mounts each host path at the same path")
        for name in ("runtime-dir", "work-dir", "cgroups"):
            check(mounts[name].get("mountPropagation") == "HostToContainer",
                  f"{label}: {c['name']} sees the host's mounts under {name}")
    check(ds["spec"]["updateStrategy"] == merged["updateStrategy"], f"{label}: update strategy")
    check(spec.get("tolerations") == merged["tolerations"], f"{label}: tolerations")
    check(spec.get("nodeSelector") == merged["nodeSelector"], f"{label}: node selector")

    cm = one(objs, "ConfigMap")
    config = helm.values_from_yaml(cm["data"]["config.yaml"])
    keys = set(config) - {"registries"}
    check(keys <= flags, f"{label}: config keys are daemon flags (unknown: {sorted(keys - flags)})")
    set_flags = {k for k, v in merged["flags"].items() if v is not None}
    check(keys == set_flags, f"{label}: the config holds every flag set in the values")
    for k in keys:
        check(config[k] == merged["flags"][k], f"{label}: config {k} = {config[k]!r}")
    return {"objs": objs, "config": config, "merged": merged, "manifests": manifests}


def run_daemon_on(binary: str, config_text: str) -> None:
    """The daemon reads the rendered file (unknown keys are fatal) and opens its socket."""
    with tempfile.TemporaryDirectory(prefix="cri-mesos-chart-test.") as tmp:
        cfg = Path(tmp) / "config.yaml"
        # The streaming TLS files are node paths the test has not got (loading them is
        # tests/streaming.rs's); every other key is read as rendered.
        cfg.write_text("".join(line for line in config_text.splitlines(keepends=True)
                               if not line.startswith("streaming_tls_")))
        sock = Path(tmp) / "run" / "cri.sock"
        # The command line wins over the file: its own socket, dirs and port, so nothing
        # collides with a node's or another test's daemon.
        proc = subprocess.Popen(
            [binary, "--config", str(cfg), "--listen", str(sock), "--work_dir", f"{tmp}/work",
             "--runtime_dir", f"{tmp}/run", "--http_address", "127.0.0.1:0",
             "--network_cni_config_dir", f"{tmp}/cni", "--cgroups_root", f"cri-mesos-chart-test-{os.getpid()}",
             "--docker_store_dir", f"{tmp}/work/store", "--fetcher_cache_dir", f"{tmp}/work/fetch",
             "--launcher_dir", str(Path(binary).resolve().parent)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        started = sock.exists()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        check(started, "the daemon starts on the rendered config file" + ("" if started else f":\n{out}"))
        # It bind-mounted its dirs onto themselves (shared); take them down with the dir.
        for d in (f"{tmp}/run", f"{tmp}/work"):
            subprocess.run(["umount", "-R", "-l", d], stderr=subprocess.DEVNULL, check=False)


def chart_render(values: dict) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name="cri-mesos", namespace="kube-system")


def main() -> None:
    binary = sys.argv[1]
    flags = daemon_flags(binary)
    print(f"helm-python-sdk {helm.__version__}, Helm SDK {helm.helm_sdk_version()}; "
          f"daemon flags: {len(flags)}")

    for label, values in (("defaults", None), ("non-default", load_values(CASES / "nondefault-values.yaml"))):
        report = helm.lint(str(CHART), values, strict=True, kube_version="v1.32.0")
        bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
        check(not bad, f"lint ({label}): {bad or 'clean'}")

    with helm.Chart.load(str(CHART)) as chart:
        check(chart.metadata.get("apiVersion") == "v2", "Chart.yaml apiVersion v2")
        # The values, the schema and the daemon agree on the flags' names.
        check(set(chart.values["flags"]) == flags,
              f"values.yaml flags == daemon flags (missing {sorted(flags - set(chart.values['flags']))}, "
              f"unknown {sorted(set(chart.values['flags']) - flags)})")
        schema_flags = set(chart.schema["properties"]["flags"]["properties"])
        check(schema_flags == flags,
              f"schema flags == daemon flags (missing {sorted(flags - schema_flags)}, unknown {sorted(schema_flags - flags)})")

        default = check_render(chart, None, "defaults", flags)
        check(not [o for o in default["objs"] if o.get("kind") == "RuntimeClass"], "defaults: no RuntimeClass")
        notes = next(v for k, v in default["manifests"].items() if k.endswith("NOTES.txt"))
        for want in ("--container-runtime-endpoint=unix:///run/cri-mesos/cri-mesos.sock",
                     "--image-service-endpoint=unix:///run/cri-mesos/cri-mesos.sock",
                     "cgroupDriver: cgroupfs", "--runtime-request-timeout"):
            check(want in notes, f"NOTES.txt tells kubelet {want}")

        nd_values = load_values(CASES / "nondefault-values.yaml")
        chart.validate_schema(nd_values)
        nd = check_render(chart, nd_values, "non-default", flags)
        check(set(nd["config"]) == flags | {"registries"},
              "non-default: config keys == every daemon flag + registries")
        regs = nd["config"]["registries"]
        check(regs == {
            "registry.example.com": {"mirrors": ["https://mirror.example.com", "http://127.0.0.1:5000"],
                                     "ca_file": "/etc/cri-mesos-test/certs/registry.example.com.crt",
                                     "auth_file": "/etc/cri-mesos-test/auth/registry.example.com.json"},
            "127.0.0.1:5000": {"insecure": True}}, f"non-default: registries {regs}")
        cm = one(nd["objs"], "ConfigMap")["data"]
        check("-----BEGIN CERTIFICATE-----" in cm.get("cert-registry.example.com.crt", ""),
              "non-default: the registry CA is shipped to the installer")
        cni = helm.values_from_yaml(cm.get("cni-config", "{}"))
        check(cni.get("name") == "cri-mesos" and cni["plugins"][0]["type"] == "bridge",
              "non-default: the CNI config is shipped to the installer")
        args = one(nd["objs"], "DaemonSet")["spec"]["template"]["spec"]["initContainers"][0]["args"]
        for a, b in (("--cni-file", "10-test.conflist"), ("--service-manager", "direct"),
                     ("--cgroup", "cri-mesos-test.daemon"), ("--prefix", "/usr/local/cri-mesos")):
            check(a in args and args[args.index(a) + 1] == b, f"non-default: installer {a} {b}")
        # The pull Secret reaches the installer as a file it copies to the host.
        check("--auth" in args and args[args.index("--auth") + 1] == "/chart-auth",
              "non-default: installer --auth /chart-auth")
        pod_spec = one(nd["objs"], "DaemonSet")["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod_spec["volumes"]}
        sources = vols.get("registry-auth", {}).get("projected", {}).get("sources", [])
        check(sources == [{"secret": {"name": "example-regcred", "items": [
            {"key": ".dockerconfigjson", "path": "auth-registry.example.com.json"}]}}],
              f"non-default: the pull Secret is projected for the installer: {sources}")
        mounts = pod_spec["initContainers"][0]["volumeMounts"]
        check({"name": "registry-auth", "mountPath": "/chart-auth", "readOnly": True} in mounts,
              "non-default: the installer mounts the pull Secrets")
        d_spec = one(default["objs"], "DaemonSet")["spec"]["template"]["spec"]
        check("--auth" not in d_spec["initContainers"][0]["args"]
              and all(v["name"] != "registry-auth" for v in d_spec["volumes"]),
              "defaults: no pull Secret volume")
        rc = one(nd["objs"], "RuntimeClass")
        check(rc["metadata"]["name"] == "mesos-test" and rc["handler"] == "mesos",
              "non-default: RuntimeClass for the handler mesos")
        spec = one(nd["objs"], "DaemonSet")["spec"]["template"]["spec"]
        check(spec.get("imagePullSecrets") == [{"name": "installer-pull"}], "non-default: pull secret")
        check("priorityClassName" not in spec, "non-default: no priority class when empty")

        for case in sorted(CASES.glob("bad-*-values.yaml")):
            text = case.read_text()
            expect = re.search(r"^# expect: (\S+)", text, re.M).group(1)
            try:
                chart.validate_schema(helm.values_from_yaml(text))
                check(False, f"{case.name}: refused by the schema")
            except helm.HelmValuesError as e:
                check(expect in str(e), f"{case.name}: refused by the schema, naming {expect}: {str(e)[:160]!r}")
            report = helm.lint(str(CHART), helm.values_from_yaml(text))
            check(any(m["severity"] == 3 for m in report["messages"]) or bool(report["errors"]),
                  f"{case.name}: lint fails too")

    if os.geteuid() == 0:
        run_daemon_on(binary, one(default["objs"], "ConfigMap")["data"]["config.yaml"])
        # Without the CA, which is a stand-in the daemon would refuse to parse; the keys
        # stay the same. The auth_file stays: the daemon reads it at pulls, not at start.
        nd_values["registries"]["registry.example.com"].pop("ca")
        nd_config = one(docs(chart_render(nd_values)), "ConfigMap")["data"]["config.yaml"]
        check(set(helm.values_from_yaml(nd_config)) == flags | {"registries"},
              "non-default without CA: same keys")
        run_daemon_on(binary, nd_config)
    else:
        print("skip the daemon on the rendered config (needs root)")

    if failures:
        print(f"chart_test: {len(failures)} failed", file=sys.stderr)
        sys.exit(1)
    print("chart_test: all passed")


if __name__ == "__main__":
    main()

"""The container image recipe and the Kubernetes base in ``k8s/``.

The manifests are rendered the way ``.ci/validate-k8s`` renders them (and
compared with the real kustomize when one is on PATH), validated against the
strict Kubernetes JSON schemas shipped in the kubernetes-validate wheel, and
checked for the properties the deployment relies on: non-root, read-only root
filesystem, probe paths, a grace period above the shutdown bound, and a
ConfigMap/Secret made only of real setting names.

PyYAML and kubernetes-validate are not dependencies of the package. When they
are missing the tests skip, unless ``$CI`` is set: then they are installed into
the running virtualenv with ``.ci/validate-k8s``'s own installer.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from imapsvc.config import SETTINGS_BY_ENV, ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "validate-k8s"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

#: The uid the image runs as (Dockerfile ``USER``) and the manifests require.
UID = 10001
ENTRYPOINT = ["twistd", "-n", "--pidfile=", "imapsvc"]


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _load_script() -> Any:
    loader = importlib.machinery.SourceFileLoader("imapsvc_validate_k8s", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


_validator: Any = None


def validator() -> Any:
    """The ``.ci/validate-k8s`` module, with its dependencies importable."""
    global _validator
    if _validator is not None:
        return _validator
    module = _load_script()
    try:
        import kubernetes_validate  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as e:
        if not _on_ci():
            raise SkipTest(f"{e}: run `python3 .ci/validate-k8s {sys.prefix}` once") from None
        if sys.prefix == sys.base_prefix:
            raise AssertionError(f"{e}, and {sys.executable} is not a virtualenv") from None
        module._ensure_venv(Path(sys.prefix))
        importlib.invalidate_caches()
        import kubernetes_validate  # noqa: F401
        import yaml  # noqa: F401
    _validator = module
    return module


class _Manifests:
    """The rendered base, indexed by ``(kind, name)``."""

    def __init__(self) -> None:
        v = validator()
        self.docs = v.render()
        self.by_key = {(d["kind"], d["metadata"]["name"]): d for d in self.docs}
        self.extras = {p.name: v._load_all(p) for p in v.unlisted_manifests()}

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.by_key[(kind, name)]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.get("Deployment", "imapsvc")

    @property
    def job(self) -> dict[str, Any]:
        return self.get("Job", "imapsvc-migrate")

    @property
    def config(self) -> dict[str, str]:
        return self.get("ConfigMap", "imapsvc-config")["data"]

    @property
    def example_secret(self) -> dict[str, str]:
        (secret,) = self.extras["secret.example.yaml"]
        return secret["stringData"]


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(workload)["containers"]
    return container


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class RenderAndSchemaTests(TestCase):
    def setUp(self) -> None:
        self.v = validator()
        self.m = _Manifests()

    def test_expected_objects(self) -> None:
        self.assertEqual(
            sorted(self.m.by_key),
            [
                ("ConfigMap", "imapsvc-config"),
                ("Deployment", "imapsvc"),
                ("Job", "imapsvc-migrate"),
                ("NetworkPolicy", "imapsvc"),
                ("PodDisruptionBudget", "imapsvc"),
                ("Service", "imapsvc"),
                ("ServiceAccount", "imapsvc"),
            ],
        )
        # The example Secret is validated but never applied with the base.
        self.assertEqual(sorted(self.m.extras), ["secret.example.yaml"])

    def test_valid_against_strict_schemas(self) -> None:
        for version in self.v.DEFAULT_VERSIONS:
            self.assertEqual(self.v.validate(self.m.docs, version), [], version)
            for name, docs in self.m.extras.items():
                self.assertEqual(self.v.validate(docs, version), [], f"{name} {version}")

    def test_validation_is_not_vacuous(self) -> None:
        """A misspelt field and a wrongly typed one are both reported."""
        typo = copy.deepcopy(self.m.deployment)
        sc = _container(typo)["securityContext"]
        sc["readOnlyRootFileSystem"] = sc.pop("readOnlyRootFilesystem")
        problems = self.v.validate([typo])
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("readOnlyRootFileSystem", problems[0])

        wrong_type = copy.deepcopy(self.m.deployment)
        wrong_type["spec"]["replicas"] = "two"
        self.assertEqual(len(self.v.validate([wrong_type])), 1)

        unknown_kind = {"apiVersion": "example.com/v1", "kind": "Nope", "metadata": {"name": "x"}}
        self.assertEqual(len(self.v.validate([unknown_kind])), 1)

    def test_renderer_refuses_unsupported_kustomize_fields(self) -> None:
        """A field the CI renderer would ignore (patches, namePrefix...) must
        fail the check rather than pass unrendered."""
        tmp = Path(self.mktemp())
        tmp.mkdir()
        (tmp / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
        with self.assertRaises(self.v.RenderError):
            self.v.render(tmp)

    def test_images_override_applies_to_every_container(self) -> None:
        images = self.v.load_kustomization()["images"]
        (rule,) = images
        expected = f"{rule['newName']}:{rule['newTag']}"
        for workload in (self.m.deployment, self.m.job):
            self.assertEqual(_container(workload)["image"], expected)

    def test_same_as_real_kustomize(self) -> None:
        real = self.v.kustomize_render()
        if real is None:
            raise SkipTest("neither kustomize nor kubectl is on PATH")
        key = self.v._key
        self.assertEqual({key(d): d for d in real}, {key(d): d for d in self.m.docs})

    def test_script_exit_status(self) -> None:
        ok = subprocess.run(
            [sys.executable, str(SCRIPT), sys.prefix],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        self.assertIn("OK:", ok.stdout)


class SecurityTests(TestCase):
    def setUp(self) -> None:
        self.m = _Manifests()
        self.workloads = {"Deployment": self.m.deployment, "Job": self.m.job}

    def test_pods_run_as_non_root_without_privileges(self) -> None:
        for kind, workload in self.workloads.items():
            pod = _pod(workload)
            self.assertIs(pod["securityContext"]["runAsNonRoot"], True, kind)
            self.assertEqual(pod["securityContext"]["runAsUser"], UID, kind)
            self.assertEqual(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault")
            self.assertIs(pod["automountServiceAccountToken"], False, kind)
            self.assertEqual(pod["serviceAccountName"], "imapsvc", kind)
            sc = _container(workload)["securityContext"]
            self.assertIs(sc["runAsNonRoot"], True, kind)
            self.assertEqual(sc["runAsUser"], UID, kind)
            self.assertIs(sc["readOnlyRootFilesystem"], True, kind)
            self.assertIs(sc["allowPrivilegeEscalation"], False, kind)
            self.assertEqual(sc["capabilities"]["drop"], ["ALL"], kind)
            self.assertNotIn("add", sc["capabilities"], kind)
            self.assertEqual(sc["seccompProfile"]["type"], "RuntimeDefault", kind)
        sa = self.m.get("ServiceAccount", "imapsvc")
        self.assertIs(sa["automountServiceAccountToken"], False)

    def test_tmp_is_the_writable_emptydir(self) -> None:
        for kind, workload in self.workloads.items():
            volumes = {v["name"]: v for v in _pod(workload)["volumes"]}
            mounts = {m["mountPath"]: m for m in _container(workload)["volumeMounts"]}
            self.assertIn("/tmp", mounts, kind)
            self.assertIn("emptyDir", volumes[mounts["/tmp"]["name"]], kind)
            self.assertFalse(mounts["/tmp"].get("readOnly", False), kind)

    def test_no_secret_values_outside_the_secret(self) -> None:
        """Secrets reach the pods only by reference, never as literal env."""
        for kind, workload in self.workloads.items():
            for env in _container(workload).get("env", ()):
                setting = SETTINGS_BY_ENV.get(env["name"])
                if setting is not None and setting.sensitive:
                    self.assertNotIn("value", env, f"{kind} {env['name']}")
                    self.assertEqual(
                        env["valueFrom"]["secretKeyRef"]["name"], "imapsvc-secrets", kind
                    )


class DeploymentTests(TestCase):
    def setUp(self) -> None:
        self.m = _Manifests()
        self.pod = _pod(self.m.deployment)
        self.container = _container(self.m.deployment)

    def test_probes(self) -> None:
        c = self.container
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(c["startupProbe"]["httpGet"]["path"], "/healthz")
        # readiness (database, Redis, first discovery) must never restart the pod
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        # /readyz waits up to 2 s per dependency: the probe must wait longer
        self.assertGreater(c["readinessProbe"]["timeoutSeconds"], 2)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            self.assertEqual(c[probe]["httpGet"]["port"], "http", probe)

    def test_ports_agree(self) -> None:
        port = int(self.m.config.get("PORT", SETTINGS_BY_ENV["PORT"].default))
        (container_port,) = self.container["ports"]
        self.assertEqual(container_port, {"name": "http", "containerPort": port, "protocol": "TCP"})
        (service_port,) = self.m.get("Service", "imapsvc")["spec"]["ports"]
        self.assertEqual(service_port["name"], "http")
        self.assertEqual(service_port["port"], 8080)
        self.assertEqual(service_port["targetPort"], "http")
        self.assertEqual(self.m.get("Service", "imapsvc")["spec"]["type"], "ClusterIP")

    def test_grace_period_outlasts_the_shutdown_bound(self) -> None:
        setting = SETTINGS_BY_ENV["IMAP_SHUTDOWN_TIMEOUT_MS"]
        text = self.m.config.get(setting.env, "")
        shutdown_ms = setting.parse(text) if text else setting.default
        grace_s = self.pod["terminationGracePeriodSeconds"]
        # a few seconds of margin for process exit after the bound
        self.assertGreaterEqual(grace_s * 1000, shutdown_ms + 5000)

    def test_env_sources(self) -> None:
        sources = self.container["envFrom"]
        self.assertIn({"configMapRef": {"name": "imapsvc-config"}}, sources)
        self.assertIn({"secretRef": {"name": "imapsvc-secrets"}}, sources)
        env = {e["name"]: e for e in self.container["env"]}
        self.assertEqual(
            env["IMAPSVC_WORKER_ID"]["valueFrom"], {"fieldRef": {"fieldPath": "metadata.name"}}
        )
        for name in env:
            self.assertIn(name, SETTINGS_BY_ENV, name)

    def test_inflight_budget_follows_the_memory_limit(self) -> None:
        # The IMAP byte budget is sized from the container's own limit
        # (downward API), so raising the limit raises the budget with it.
        env = {e["name"]: e for e in self.container["env"]}
        self.assertEqual(
            env["IMAP_MEMORY_LIMIT_BYTES"]["valueFrom"],
            {"resourceFieldRef": {"containerName": self.container["name"],
                                  "resource": "limits.memory"}},
        )
        self.assertIn("memory", self.container["resources"]["limits"])
        self.assertNotIn("IMAP_INFLIGHT_BUDGET_BYTES", self.m.config)

    def test_replicas_spread_across_nodes(self) -> None:
        spec = self.m.deployment["spec"]
        self.assertEqual(spec["replicas"], 2)
        self.assertEqual(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0)
        pod_labels = spec["template"]["metadata"]["labels"]
        self.assertTrue(_matches(spec["selector"]["matchLabels"], pod_labels))
        by_key = {c["topologyKey"]: c for c in self.pod["topologySpreadConstraints"]}
        self.assertIn("kubernetes.io/hostname", by_key)
        self.assertTrue(
            _matches(by_key["kubernetes.io/hostname"]["labelSelector"]["matchLabels"], pod_labels)
        )

    def test_selectors_reach_the_pods(self) -> None:
        pod_labels = self.m.deployment["spec"]["template"]["metadata"]["labels"]
        job_labels = self.m.job["spec"]["template"]["metadata"]["labels"]
        service = self.m.get("Service", "imapsvc")["spec"]["selector"]
        pdb = self.m.get("PodDisruptionBudget", "imapsvc")["spec"]
        policy = self.m.get("NetworkPolicy", "imapsvc")["spec"]["podSelector"]["matchLabels"]
        self.assertTrue(_matches(service, pod_labels))
        self.assertFalse(_matches(service, job_labels))
        self.assertTrue(_matches(pdb["selector"]["matchLabels"], pod_labels))
        self.assertEqual(pdb["minAvailable"], 1)
        self.assertTrue(_matches(policy, pod_labels))
        self.assertTrue(_matches(policy, job_labels))

    def test_network_policy_ports(self) -> None:
        spec = self.m.get("NetworkPolicy", "imapsvc")["spec"]
        self.assertEqual(sorted(spec["policyTypes"]), ["Egress", "Ingress"])
        (ingress,) = spec["ingress"]
        self.assertEqual(ingress["ports"], [{"protocol": "TCP", "port": 8080}])
        egress = {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}
        self.assertEqual(
            egress,
            {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 6379), ("TCP", 993),
             ("TCP", 143), ("TCP", 443)},
        )  # fmt: skip

    def test_network_policy_keeps_tenant_ports_off_private_ranges(self) -> None:
        """443/993/143 go to tenant-chosen servers: every rule opening them
        excepts exactly the ranges the service itself refuses."""
        from imapsvc.core.netguard import PRIVATE_IPV4_CIDRS

        spec = self.m.get("NetworkPolicy", "imapsvc")["spec"]
        tenant_ports = {443, 993, 143}
        seen = set()
        for rule in spec["egress"]:
            ports = {p["port"] for p in rule["ports"]}
            if not ports & tenant_ports:
                continue
            seen |= ports
            self.assertLessEqual(ports, tenant_ports)
            blocks = {b["ipBlock"]["cidr"]: b["ipBlock"]["except"] for b in rule["to"]}
            self.assertEqual(sorted(blocks), ["0.0.0.0/0", "::/0"])
            self.assertEqual(sorted(blocks["0.0.0.0/0"]), sorted(PRIVATE_IPV4_CIDRS))
            for cidr in ("::1/128", "fc00::/7", "fe80::/10"):
                self.assertIn(cidr, blocks["::/0"])
        self.assertEqual(seen, tenant_ports)

    def test_migration_job(self) -> None:
        c = _container(self.m.job)
        self.assertEqual(c["command"], ["python", "-m", "imapsvc", "migrate"])
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(
            env["DATABASE_URL"]["valueFrom"]["secretKeyRef"],
            {"name": "imapsvc-secrets", "key": "DATABASE_URL"},
        )
        self.assertEqual(_pod(self.m.job)["restartPolicy"], "Never")


class SettingsTests(TestCase):
    def setUp(self) -> None:
        self.m = _Manifests()

    def test_configmap_holds_known_non_secret_settings_at_their_defaults(self) -> None:
        self.assertGreater(len(self.m.config), 10)
        for env, text in self.m.config.items():
            self.assertIn(env, SETTINGS_BY_ENV, f"{env} is not a setting")
            setting = SETTINGS_BY_ENV[env]
            self.assertFalse(setting.sensitive, f"{env} is a secret: put it in the Secret")
            self.assertIsInstance(text, str, env)
            if text == "":
                # empty counts as unset, so the default applies
                continue
            self.assertEqual(setting.parse(text), setting.default, env)

    def test_configmap_covers_the_shutdown_bound_and_contract_timing(self) -> None:
        for env in ("IMAP_SHUTDOWN_TIMEOUT_MS", "IMAP_LEASE_TTL_MS",
                    "IMAP_PROVIDER_REFRESH_MS", "PORT", "IMAP_EVENT_STREAM"):  # fmt: skip
            self.assertIn(env, self.m.config)

    def test_secret_holds_exactly_the_sensitive_wiring(self) -> None:
        self.assertEqual(
            sorted(self.m.example_secret),
            ["DATABASE_URL", "IMAPSVC_ADMIN_TOKEN", "IMAPSVC_SECRET_KEY", "REDIS_URL"],
        )
        for env in self.m.example_secret:
            self.assertTrue(SETTINGS_BY_ENV[env].sensitive, env)

    def test_example_secret_cannot_start_the_service(self) -> None:
        """The placeholder key is refused at start-up, naming the variable
        and not echoing the value."""
        from imapsvc.sealed_secrets import generate_key

        real = {
            "IMAPSVC_SECRET_KEY": generate_key(),
            "IMAPSVC_ADMIN_TOKEN": "Zk3-9vQ_p2LmX7wR4tYb8NcJ1hGd6FsA0eU5",
        }
        # Each placeholder on its own is refused (the admin token too).
        for env in real:
            environ = {**self.m.config, **self.m.example_secret, **real}
            environ[env] = self.m.example_secret[env]
            with self.assertRaises(ConfigError) as raised:
                load_settings(environ)
            message = str(raised.exception)
            self.assertIn(env, message)
            self.assertNotIn(self.m.example_secret[env], message)

    def test_configmap_with_real_secrets_loads(self) -> None:
        from imapsvc.sealed_secrets import generate_key

        environ = {
            **self.m.config,
            **self.m.example_secret,
            "IMAPSVC_SECRET_KEY": generate_key(),
            "IMAPSVC_ADMIN_TOKEN": "Zk3-9vQ_p2LmX7wR4tYb8NcJ1hGd6FsA0eU5",
            "IMAPSVC_WORKER_ID": "imapsvc-5d8f7c9b4-x2k7q",
        }
        settings = load_settings(environ)
        self.assertEqual(settings.port, 8080)
        self.assertEqual(settings.shutdown_timeout_ms, 20000)
        self.assertEqual(settings.worker_id, "imapsvc-5d8f7c9b4-x2k7q")
        self.assertEqual(settings.log_format, "json")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        instruction, _, args = whole.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


class DockerfileTests(TestCase):
    """No Docker engine runs in CI: check the recipe's text instead."""

    def setUp(self) -> None:
        self.steps = _dockerfile_instructions()

    def _all(self, instruction: str) -> list[str]:
        return [args for name, args in self.steps if name == instruction]

    def test_multi_stage_on_python_311_slim(self) -> None:
        (image_arg,) = [a for a in self._all("ARG") if a.startswith("PYTHON_IMAGE=")]
        self.assertEqual(image_arg, "PYTHON_IMAGE=python:3.11-slim")
        stages = self._all("FROM")
        self.assertEqual(stages, ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"])

    def test_copied_paths_exist_and_are_in_the_context(self) -> None:
        ignore = [
            line.strip()
            for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        self.assertEqual(ignore[0], "*", "the context is an allowlist")
        allowed = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
        copies = self._all("COPY")
        self.assertTrue(copies)
        for args in copies:
            words = shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                self.assertTrue((ROOT / source).exists(), source)
                self.assertIn(Path(source).parts[0], allowed, source)

    def test_runtime_is_non_root_with_exec_form_entrypoint(self) -> None:
        self.assertEqual(self._all("USER")[-1], f"{UID}:{UID}")
        (entrypoint,) = self._all("ENTRYPOINT")
        self.assertEqual(json.loads(entrypoint), ENTRYPOINT)
        self.assertEqual(self._all("EXPOSE"), ["8080"])
        env = " ".join(self._all("ENV"))
        for pair in ("IMAPSVC_LOG_FORMAT=json", "PYTHONUNBUFFERED=1"):
            self.assertIn(pair, env.split())

    def test_wheel_install_and_plugin_cache(self) -> None:
        runs = " ".join(self._all("RUN"))
        self.assertIn("pip wheel", runs)
        self.assertIn("pip install --no-index", runs)
        self.assertNotIn(" -e ", runs)
        self.assertIn("getPlugins(IPlugin)", runs)

    def test_entrypoint_options_are_twistd_options(self) -> None:
        """``--pidfile=`` (empty) and ``-n`` are real twistd options."""
        twistd = Path(sys.executable).with_name("twistd")
        if not twistd.exists():
            raise SkipTest("no twistd next to the interpreter")
        result = subprocess.run(
            [str(twistd), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--pidfile=", result.stdout)
        self.assertIn("--nodaemon", result.stdout)
        self.assertIn(" -n,", result.stdout)

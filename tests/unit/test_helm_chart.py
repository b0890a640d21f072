"""The Helm chart (helm/kioskfleet) lints clean, renders valid Kubernetes objects and keeps its promises.

Rendered offline by the real Helm SDK (``helm-python-sdk``: Helm's Go code in a
shared library, no cluster, no ``helm`` binary) with the default values and with
``helm/kioskfleet/ci/ha-values.yaml``. Every built-in object is validated
against the schemas that ``kubernetes-validate`` bundles for the oldest
Kubernetes the chart admits and the newest it knows (strict: an unknown field
is an error); the two prometheus-operator objects against the upstream CRDs'
own schemas, vendored in
``tests/support/crds/`` (prometheus-operator 0.93.0, Apache-2.0). Then what the
deployment must guarantee is read from the objects: non-root, read-only root
filesystem, no capabilities, probes on ``/healthz`` and ``/readyz`` with the
server's scheme, a pinned image, every ``KIOSKFLEET_*`` name a real setting, the
alert rules equal to ``monitoring/prometheus/rules/`` (the one source), secrets
only referenced, never rendered.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from kioskfleet.chart_schema import CHART_DEFAULTS, CHART_SETTINGS, schema_text
from server.config import Settings, setting_variables, unknown_variables

ROOT: Final = Path(__file__).resolve().parents[2]
CHART: Final = ROOT / "helm" / "kioskfleet"
HA_VALUES: Final = CHART / "ci" / "ha-values.yaml"
RULES_FILE: Final = ROOT / "monitoring" / "prometheus" / "rules" / "kioskfleet.rules.yml"
CRDS: Final = ROOT / "tests" / "support" / "crds"
KUBE_VERSION: Final = "1.25.0"  # the oldest Chart.yaml's kubeVersion admits
NEWEST_KUBE_VERSION: Final = kubernetes_validate.latest_version()  # no API it uses removed
RELEASE: Final = "kf"
NAMESPACE: Final = "kiosk"
PROFILES: Final = ("default", "ha")

Manifest = dict[str, Any]


def _values(profile: str) -> dict[str, Any]:
    if profile == "default":
        return {}
    return helm.values_from_yaml(HA_VALUES.read_text(encoding="utf-8"))


def _render_files(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text (raises helm.HelmValuesError, helm.HelmRenderError)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any]) -> list[Manifest]:
    """Every object the chart renders with ``values``."""
    rendered = _render_files(values)
    return [
        doc
        for path, text in rendered.items()
        if not path.endswith("/NOTES.txt")  # shown after an install, not an object
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def notes(values: dict[str, Any]) -> str:
    """What ``helm install`` prints after installing with ``values``."""
    return _render_files(values)["kioskfleet/templates/NOTES.txt"]


@functools.cache
def _rendered(profile: str) -> tuple[Manifest, ...]:
    return tuple(render(_values(profile)))


def _of_kind(objects: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def _one(profile: str, kind: str) -> Manifest:
    (found,) = _of_kind(_rendered(profile), kind)
    return found


def _pod_spec(profile: str) -> dict[str, Any]:
    spec: dict[str, Any] = _one(profile, "Deployment")["spec"]["template"]["spec"]
    return spec


def _containers(profile: str) -> list[dict[str, Any]]:
    pod = _pod_spec(profile)
    containers: list[dict[str, Any]] = pod["containers"] + pod.get("initContainers", [])
    return containers


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its properties refusing others.

    The API server prunes a field a CRD schema does not know (a misspelt
    ``relabellings`` silently vanishes); ``kubectl --validate=strict`` refuses it.
    """
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: _closed(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


@functools.cache
def _crd_validator(kind: str) -> jsonschema.Draft4Validator:
    """A validator for the prometheus-operator ``kind`` (OpenAPI v3 is JSON Schema draft 4
    with extensions; its Go regular expressions are only compiled for present fields)."""
    path = CRDS / f"monitoring.coreos.com_{kind.lower()}s.yaml"
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft4Validator(_closed(version["schema"]["openAPIV3Schema"]))


def _env_names(profile: str) -> Iterator[str]:
    yield from _one(profile, "ConfigMap")["data"]
    for container in _containers(profile):
        yield from (e["name"] for e in container.get("env", []))


# ------------------------------------------------------------------ lint and schemas


@pytest.mark.parametrize("profile", PROFILES)
def test_chart_lints_without_warnings(profile: str) -> None:
    report = helm.lint(CHART, _values(profile), strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert report["total_charts_linted"] == 1
    # severity 1 is information (e.g. "icon is recommended"); 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", [KUBE_VERSION, NEWEST_KUBE_VERSION])
@pytest.mark.parametrize("profile", PROFILES)
def test_every_object_validates_against_its_schema(profile: str, kube_version: str) -> None:
    objects = _rendered(profile)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    for obj in objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            _crd_validator(obj["kind"]).validate(obj)
        else:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_schema_validation_catches_a_broken_object() -> None:
    """The validators are not vacuous: a misspelt field and a wrong type are refused."""
    deployment = dict(_one("default", "Deployment"))
    deployment["spec"] = {**deployment["spec"], "replica": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
    monitor = dict(_one("default", "ServiceMonitor"))
    endpoint = {**monitor["spec"]["endpoints"][0], "relabellings": []}
    for broken in ({"endpoints": "http"}, {"endpoints": [endpoint]}):
        with pytest.raises(jsonschema.ValidationError):
            _crd_validator("ServiceMonitor").validate(
                {**monitor, "spec": {**monitor["spec"], **broken}}
            )


# ------------------------------------------------------------------ the pod


@pytest.mark.parametrize("profile", PROFILES)
def test_pod_runs_non_root_read_only_without_capabilities(profile: str) -> None:
    pod = _pod_spec(profile)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in _containers(profile):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "/tmp" in mounts  # the one scratch place, an emptyDir
        for mount in mounts.values():
            if mount["mountPath"].startswith("/etc/"):
                assert mount["readOnly"] is True


def test_written_paths_are_volumes_not_the_image() -> None:
    """What the server writes (updates_dir, ca_dir) lies on the data volume, a PVC in HA."""
    data = _one("ha", "ConfigMap")["data"]
    (container,) = _pod_spec("ha")["containers"]
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == "data")["mountPath"]
    for name in ("KIOSKFLEET_UPDATES_DIR", "KIOSKFLEET_CA_DIR"):
        assert data[name].startswith(data_mount + "/")
    volumes = {v["name"]: v for v in _pod_spec("ha")["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    (pvc,) = _of_kind(_rendered("ha"), "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # three replicas, one repository
    assert "emptyDir" in {k for v in _pod_spec("default")["volumes"] for k in v}


@pytest.mark.parametrize(("profile", "scheme"), [("default", "HTTP"), ("ha", "HTTPS")])
def test_probes_ask_healthz_and_readyz_in_the_servers_scheme(profile: str, scheme: str) -> None:
    (container,) = _pod_spec(profile)["containers"]
    probes = {name: container[name]["httpGet"] for name in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in [*probes.values(), container["startupProbe"]["httpGet"]]:
        assert probe["scheme"] == scheme
        assert probe["port"] == "http"
    served_https = "KIOSKFLEET_HTTPS_CERT_FILE" in _one(profile, "ConfigMap")["data"]
    assert served_https == (scheme == "HTTPS")
    monitor = _one(profile, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["scheme"] == scheme.lower()


@pytest.mark.parametrize("profile", PROFILES)
def test_image_is_a_pinned_release(profile: str) -> None:
    for container in _containers(profile):
        image = container["image"]
        assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1]
        assert not image.endswith(":latest")
        assert image.rsplit(":", 1)[-1] == helm.Chart.load(CHART).metadata["appVersion"]


def test_latest_tag_is_refused() -> None:
    with pytest.raises(helm.HelmValuesError, match="/image/tag"):
        render({"image": {"tag": "latest"}})


# ------------------------------------------------------------------ settings and secrets


@pytest.mark.parametrize("profile", PROFILES)
def test_every_kioskfleet_variable_is_a_server_setting(profile: str) -> None:
    names = [n for n in _env_names(profile) if n.startswith("KIOSKFLEET_")]
    assert len(names) >= 4
    assert unknown_variables(names) == {}
    assert set(names) <= setting_variables()


def test_config_values_reach_the_environment_by_setting_name() -> None:
    config = {
        "offline_after_missed_reports": 5,
        "max_seq_jump": 2_000_000,  # a YAML number is a float64 inside Helm: not "2e+06"
        "updates_max_artifact_bytes": 2**31,
        "db_flush_interval_s": 0.5,
        "mqtt_protocol": "3.1.1",
    }
    (config_map,) = (o for o in render({"config": config}) if o["kind"] == "ConfigMap")
    data = config_map["data"]
    assert data["KIOSKFLEET_OFFLINE_AFTER_MISSED_REPORTS"] == "5"
    assert data["KIOSKFLEET_MAX_SEQ_JUMP"] == "2000000"
    assert data["KIOSKFLEET_UPDATES_MAX_ARTIFACT_BYTES"] == "2147483648"
    assert data["KIOSKFLEET_DB_FLUSH_INTERVAL_S"] == "0.5"
    assert data["KIOSKFLEET_MQTT_PROTOCOL"] == "3.1.1"


def test_the_servers_settings_accept_what_the_chart_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap and the database variable, read by server/config.py as at start
    (file-path settings aside: their files exist only in the pod)."""
    config = {"max_seq_jump": 2_000_000, "db_flush_interval_s": 0.5, "mqtt_protocol": "3.1.1"}
    (config_map,) = (o for o in render({"config": config}) if o["kind"] == "ConfigMap")
    for name, value in config_map["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KIOSKFLEET_DATABASE_URL", "postgresql://kf@db.example:5432/kf")
    settings = Settings.from_env()
    assert settings.max_seq_jump == 2_000_000
    assert settings.db_flush_interval_s == 0.5
    assert settings.mqtt_protocol == "3.1.1"
    assert settings.http_host == "0.0.0.0"  # every interface of the pod, behind its Service
    assert settings.shared_subscription is False
    assert settings.metrics_require_token is True
    assert settings.broker.host == "emqx.emqx.svc"


def test_settings_the_chart_owns_are_refused_in_config() -> None:
    for name in sorted(CHART_SETTINGS):
        with pytest.raises(helm.HelmValuesError, match=f"'{name}' not allowed"):
            render({"config": {name: "/elsewhere"}})


def test_the_settings_the_chart_owns_are_exactly_those_its_templates_write() -> None:
    written = {
        name
        for template in (CHART / "templates").iterdir()
        for name in re.findall(r"\bKIOSKFLEET_[A-Z_]+\b", template.read_text(encoding="utf-8"))
    }
    assert written == {f"KIOSKFLEET_{name.upper()}" for name in CHART_SETTINGS | CHART_DEFAULTS}


def test_one_replica_keeps_its_broker_session_across_pods() -> None:
    """One replica: a stable client id and Recreate, so a new pod resumes the session
    the old one left (nothing queued for a vanished client id); several: each pod its
    own id (the default, its host name) and a rolling update."""
    single = _one("default", "ConfigMap")["data"]
    assert single["KIOSKFLEET_MQTT_CLIENT_ID"] == f"kioskfleet-server-{RELEASE}-kioskfleet"
    assert _one("default", "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert "KIOSKFLEET_MQTT_CLIENT_ID" not in _one("ha", "ConfigMap")["data"]
    assert _one("ha", "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    (chosen,) = (
        o["data"]
        for o in render({"config": {"mqtt_client_id": "kf-a"}})
        if o["kind"] == "ConfigMap"
    )
    assert chosen["KIOSKFLEET_MQTT_CLIENT_ID"] == "kf-a"


def test_values_schema_is_generated_from_values_and_settings() -> None:
    """``python -m kioskfleet.chart_schema`` wrote the file from today's values.yaml and
    server/config.py."""
    values_yaml = (CHART / "values.yaml").read_text(encoding="utf-8")
    assert (CHART / "values.schema.json").read_text(encoding="utf-8") == schema_text(values_yaml)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (
            {"config": {"offline_after_missed_report": 5}},
            "'offline_after_missed_report' not allowed",
        ),
        ({"config": {"offline_after_missed_reports": 0}}, "offline_after_missed_reports': minimum"),
        ({"config": {"mqtt_protocol": "4"}}, "mqtt_protocol': value must be one of"),
        ({"config": {"shared_subscription": "yes"}}, "shared_subscription"),
        ({"replicas": 3}, "'replicas' not allowed"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "'enable' not allowed"),
    ],
)
def test_helm_refuses_a_misspelt_or_out_of_bounds_value(
    values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=complaint):
        render(values)


def test_several_replicas_need_a_shared_subscription_or_a_partition() -> None:
    with pytest.raises(helm.HelmRenderError, match="ingest_ownership: partition"):
        render({"replicaCount": 3})
    with pytest.raises(helm.HelmRenderError, match="shared_subscription"):
        render({"autoscaling": {"enabled": True}})
    partitioned = {"replicaCount": 3, "config": {"ingest_ownership": "partition"}}
    assert render(partitioned)
    assert "ingest_ownership: partition" in notes(partitioned)
    assert "hash_clientid" not in notes(partitioned)


@pytest.mark.parametrize("profile", PROFILES)
def test_secrets_are_referenced_never_rendered(profile: str) -> None:
    objects = _rendered(profile)
    assert _of_kind(objects, "Secret") == []
    (container,) = _pod_spec(profile)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KIOSKFLEET_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "kioskfleet-database",
        "key": "url",
    }
    secret_volumes = {
        v["name"]: v["secret"] for v in _pod_spec(profile)["volumes"] if "secret" in v
    }
    expected = {"https", "tuf-online", "directive-key"} if profile == "ha" else set()
    assert set(secret_volumes) == expected
    for secret in secret_volumes.values():
        assert secret["defaultMode"] == 0o440


def test_each_replica_gets_its_own_broker_identity() -> None:
    """The broker maps a certificate's CN to the client id: a shared one would make the
    replicas take over each other's session, so HA issues one per pod."""
    volumes = {v["name"]: v for v in _pod_spec("ha")["volumes"]}
    attributes = volumes["broker-tls"]["csi"]["volumeAttributes"]
    assert volumes["broker-tls"]["csi"]["driver"] == "csi.cert-manager.io"
    assert attributes["csi.cert-manager.io/common-name"] == "kioskfleet:server:${POD_NAME}"
    data = _one("ha", "ConfigMap")["data"]
    for name, key in (("CA", "ca-file"), ("CERT", "certificate-file"), ("KEY", "privatekey-file")):
        path = Path(data[f"KIOSKFLEET_BROKER_{name}_FILE"])
        assert path.name == attributes[f"csi.cert-manager.io/{key}"]
    shared = render({"broker": {"tls": {"existingSecret": "kioskfleet-broker-tls"}}})
    (pod,) = (o["spec"]["template"]["spec"] for o in shared if o["kind"] == "Deployment")
    (tls,) = (v for v in pod["volumes"] if v["name"] == "broker-tls")
    assert tls["secret"]["secretName"] == "kioskfleet-broker-tls"


def test_install_notes_name_the_external_services_and_the_broker_stickiness() -> None:
    single = notes({})
    assert "WITHOUT TLS files" in single
    assert "hash_clientid" not in single
    ha = notes(_values("ha"))
    assert "hash_clientid" in ha
    assert "Secret kioskfleet-database" in ha
    assert "https://127.0.0.1:8080/readyz" in ha


# ------------------------------------------------------------------ availability


def test_ha_values_scale_out_and_keep_two_replicas() -> None:
    deployment = _one("ha", "Deployment")
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    hpa = _one("ha", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == 3
    assert _one("ha", "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    by_key = {s["topologyKey"]: s for s in spread}
    assert by_key["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert _one("ha", "ConfigMap")["data"]["KIOSKFLEET_SHARED_SUBSCRIPTION"] == "true"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_default_values_run_one_replica_that_a_drain_may_move() -> None:
    assert _one("default", "Deployment")["spec"]["replicas"] == 1
    assert _of_kind(_rendered("default"), "HorizontalPodAutoscaler") == []
    assert _one("default", "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": _one("default", "Deployment")["spec"]["selector"],
    }


@pytest.mark.parametrize("profile", PROFILES)
def test_network_policy_admits_the_server_port_and_egress_to_broker_and_database(
    profile: str,
) -> None:
    policy = _one(profile, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"] == _one(profile, "Deployment")["spec"]["selector"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["http"]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 5432, 8883} <= egress_ports


# ------------------------------------------------------------------ monitoring


@pytest.mark.parametrize("profile", PROFILES)
def test_prometheus_rule_groups_are_monitorings_rules(profile: str) -> None:
    rule = _one(profile, "PrometheusRule")
    source = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    assert rule["spec"] == {"groups": source["groups"]}
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert "KioskfleetServerDown" in alerts
    # Go template braces in the rules reach Prometheus untouched
    assert any("{{ $labels.terminal }}" in str(r) for g in source["groups"] for r in g["rules"])


def test_packaged_chart_carries_the_rules_as_a_copy(tmp_path: Path) -> None:
    """``helm package`` follows the symlink: the archive works away from the checkout,
    and leaves the test values out (.helmignore)."""
    archive = Path(helm.package(CHART, destination=tmp_path))
    with helm.Chart.load_archive(archive.read_bytes()) as chart:
        names = {f["name"] for f in chart.files}
        rendered = chart.render({}, name=RELEASE, namespace=NAMESPACE)
    assert "files/kioskfleet.rules.yml" in names
    assert not any(name.startswith("ci/") for name in names)
    (rule,) = (
        doc
        for doc in yaml.safe_load_all(rendered["kioskfleet/templates/prometheusrule.yaml"])
        if doc
    )
    assert (
        rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))["groups"]
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_service_monitor_scrapes_metrics_as_the_job_the_alerts_expect(profile: str) -> None:
    monitor = _one(profile, "ServiceMonitor")["spec"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] == _one(profile, "Service")["spec"]["ports"][0]["name"]
    assert {"action": "replace", "targetLabel": "job", "replacement": "kioskfleet"} in endpoint[
        "relabelings"
    ]
    assert endpoint["authorization"]["credentials"]["name"] == "kioskfleet-metrics-token"
    assert monitor["selector"]["matchLabels"] == _one(profile, "Service")["spec"]["selector"]

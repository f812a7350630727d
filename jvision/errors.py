"""Bad input: what every command reports as one line (`jvision: error: …`, exit status 1).

A failing storage (a full disk, a read-only mount) is the other one-line error:
`jvision.safety.failures`.
"""


class UserError(Exception):
    """Bad input (config, data, workdir): `jvision.main` prints it as one line and exits 1.

    The message says what was wrong and what to do about it.
    """

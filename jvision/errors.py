"""The one exception type users see: a bad input, described in one line."""


class UserError(Exception):
    """Bad input (config, data, workdir): `jvision.main` prints it as one line and exits 1.

    The message says what was wrong and what to do about it.
    """

"""The one exception type for mistakes a user can make (bad file, bad option, wrong checkpoint): the CLI prints
its message as a single line and exits with status 2, without a traceback."""


class UserError(Exception):
    pass

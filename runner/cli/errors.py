"""The CLI's own errors: bad command-line input that the packages never see.

UsageError      a value the CLI checks once parsed (a memory size, a signal, an output path):
                ``Error: ...`` on one line; exit 1 for image commands, 125 for container ones
ParseError      a command line that does not parse (an unknown flag or verb, a flag's bad value):
                ``strata: ...`` on one line, then a hint to ``--help``; exit 125, as Docker's CLI
"""


class UsageError(Exception):
    pass


class ParseError(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint

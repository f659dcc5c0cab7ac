"""The CLI's own error: bad command-line input that the packages never see."""


class UsageError(Exception):
    pass

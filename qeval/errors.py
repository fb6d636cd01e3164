"""Every error qeval raises on purpose, in one hierarchy. The CLI prints any of them as one
`qeval: error: ...` line and exits 2 (bad input); the audit log records the class name, never
the message.

    QevalInputError        bad input: a message that names the problem, where, and the fix
    ├── MissingData        a benchmark task's data file is not where the data directory says
    ├── JobFailed          a job on a Ray cluster failed (its variant, task, chunk and node named)
    └── ScoringError       what was scored cannot be compared (raised while scoring or pairing)
        ├── NonFiniteScores    a backend produced NaN or inf log-probabilities
        ├── PromptMismatch     baseline and candidate did not see the same token ids for an item
        └── PairingError       the record sets do not cover the same items

The scoring errors are also ValueErrors, as they always were.
"""


class QevalInputError(Exception):
    """Bad input from the user: a message that names the problem and the fix."""


class MissingData(QevalInputError):
    """A benchmark task's data file is not where the data directory says."""


class JobFailed(QevalInputError):
    """A job on a Ray cluster failed past its retry: the line names its variant, task, chunk and
    node; a rerun resumes from the chunks already stored."""


class ScoringError(QevalInputError, ValueError):
    """What was scored cannot be compared: not a flag or file the user can fix by name, but still
    reported as one line and exit 2 (a broken variant, records from different prompts)."""


class NonFiniteScores(ScoringError):
    """A backend produced NaN or inf log-probabilities."""


class PromptMismatch(ScoringError):
    """Baseline and candidate did not see the same token ids for an item."""


class PairingError(ScoringError):
    """The record sets do not cover the same items."""

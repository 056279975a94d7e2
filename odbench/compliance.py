"""MLPerf compliance tests (TEST01, TEST04): the audit.config LoadGen reads, and the verdicts.

(Being built: see issue 7.)
"""

from __future__ import annotations

from typing import Literal, get_args

ComplianceTest = Literal["TEST01", "TEST04"]  # MLCommons retired TEST05
COMPLIANCE_TESTS: tuple[str, ...] = get_args(ComplianceTest)

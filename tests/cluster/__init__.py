"""The lab clusters' tests (marker `cluster`): labs.py is the labs' one interface, jobs.py what the tests do with
jobs and their runs, conftest.py the session fixtures that start the labs."""

import pytest

# Their failed asserts explain themselves as a test's own do (registered before their first import).
pytest.register_assert_rewrite("cluster.labs", "cluster.jobs")

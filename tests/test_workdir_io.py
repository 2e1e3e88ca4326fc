"""`workdir_io._as_os_error`: the file-system error behind a failure, in the
forms the full-disk tests of tests/test_reliability.py and
tests/test_bad_inputs.py do not produce."""

import errno
import os

import pytest

from maskcon_jax import workdir_io


def _caused_by(cause):
  try:
    try:
      raise cause
    except OSError as e:
      raise RuntimeError("the save failed") from e
  except RuntimeError as e:
    return e


def test_os_error_in_the_chain_of_causes():
  cause = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/run/x")
  assert workdir_io._as_os_error(_caused_by(cause)) is cause


def test_tensorstore_words_without_an_errno():
  error = ValueError(
      'PERMISSION_DENIED: Failed writing "/run/checkpoints/'
      f'4/x": {os.strerror(errno.EROFS)}'
  )
  found = workdir_io._as_os_error(error)
  assert (found.errno, found.filename) == (errno.EROFS, "/run/checkpoints/4/x")


@pytest.mark.parametrize(
    "error",
    [
        ValueError("shapes do not match"),
        OSError("no errno"),
    ],
)
def test_other_failures_are_not_write_failures(error):
  assert workdir_io._as_os_error(error) is None

import lazyfs
from lazyfs import errors


def test_every_error_is_a_lazyfs_error_with_distinct_codes_per_class():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.LazyfsError)]
    assert all(issubclass(c, lazyfs.LazyfsError) for c in classes)
    codes = {c.exit_code for c in classes if c is not errors.LazyfsError}
    assert errors.LazyfsError.exit_code not in codes
    assert errors.NotFound.exit_code != errors.Unauthorized.exit_code != errors.DigestMismatch.exit_code

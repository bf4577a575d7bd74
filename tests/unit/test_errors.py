import lazyfs
from lazyfs import errors


def test_every_error_is_a_lazyfs_error_with_distinct_codes_per_class():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.LazyfsError)]
    assert all(issubclass(c, lazyfs.LazyfsError) for c in classes)
    codes = {c.exit_code for c in classes if c is not errors.LazyfsError}
    assert errors.LazyfsError.exit_code not in codes
    assert errors.NotFound.exit_code != errors.Unauthorized.exit_code != errors.DigestMismatch.exit_code


def _raised(exc: BaseException) -> BaseException:
    try:
        with errors.single_error():
            raise exc
    except BaseException as e:
        return e
    raise AssertionError("nothing raised")


def test_single_error_unwraps_lazyfs_errors_and_a_lone_failure():
    first, second = errors.NotFound("a"), errors.RegistryError("b")
    assert _raised(BaseExceptionGroup("", [first, ExceptionGroup("", [second])])) is first
    bug = ValueError("bug")
    assert _raised(ExceptionGroup("", [bug])) is bug
    mixed = ExceptionGroup("", [first, ValueError("bug")])
    assert _raised(mixed) is mixed
    nested = ExceptionGroup("", [ExceptionGroup("", [bug])])
    assert _raised(nested) is nested
    plain = KeyError("k")
    assert _raised(plain) is plain

"""Lab contract v1's name for ``labs.trusted``; removed once every lab imports ``labs.trusted``."""

from labs.trusted import CheckFailed, assert_close  # noqa: F401

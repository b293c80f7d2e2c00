"""The length-prefixed split and join in C (``_speedups.c``): built with the compiled build, else absent."""

from ._base import Buffer

def split_frames(data: Buffer, pos: int, out: list[bytes], header_size: int, little_endian: bool, max_size: int) -> int:
    """Append the whole messages of `data` from `pos` to `out`; return where it stopped (see ``_speedups.c``)."""

def join_frames(messages: list[Buffer], header_size: int, little_endian: bool, max_size: int) -> bytes | None:
    """Each of `messages` after its length header, in one bytes; None if one is over `max_size` (``_speedups.c``)."""

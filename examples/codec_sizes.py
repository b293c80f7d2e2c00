"""Print the bytes on the wire of one record in each codec, as a Markdown table.

The guide's "Sending values" page shows this output; a test checks that the
two agree. The MsgPack rows need msgpack (`pip install 'connecteur[msgpack]'`).
"""

from connecteur.codecs import Json, Struct, Text
from connecteur.framing import LengthPrefixed

# One reading from a sensor: its id, a Unix time, degrees Celsius, an ok flag.
RECORD = (42, 1718000000.25, 21.5, True)
FIELDS = ("sensor", "time", "celsius", "ok")


def payloads() -> list[tuple[str, bytes]]:
    as_object = dict(zip(FIELDS, RECORD, strict=True))
    rows = [
        ('`Struct("!Hdf?")`', Struct("!Hdf?").encode(RECORD)),
        ("`Text()`, space-separated", Text().encode("{} {} {} {:d}".format(*RECORD))),
        ("`Json()`, a list", Json().encode(list(RECORD))),
        ("`Json()`, an object", Json().encode(as_object)),
    ]
    try:
        from connecteur.codecs import MsgPack

        rows += [
            ("`MsgPack()`, a list", MsgPack().encode(list(RECORD))),
            ("`MsgPack()`, a map", MsgPack().encode(as_object)),
        ]
    except ImportError:  # msgpack is optional
        pass
    return rows


if __name__ == "__main__":
    header = len(LengthPrefixed().encode(b""))  # 4 bytes of length before each payload
    print("| codec | payload | with `LengthPrefixed()` |")
    print("| --- | ---: | ---: |")
    for name, payload in payloads():
        print(f"| {name} | {len(payload)} bytes | {len(payload) + header} bytes |")

"""Write echo_code.c: the floor server plus a large code footprint run per read (an interpreter's, roughly).

    python benchmarks/floor/gen_code_floor.py > /tmp/floor/echo_code.c && gcc -O2 -o /tmp/floor/echo_code $_

4,096 small functions (1.4 MB of code), called through a table in turn, CALLS of them per read (the 4th
argument: `echo_code CPU 0 0 CALLS`): each call runs code the instruction cache no longer holds, through an
indirect call, as a bytecode interpreter's dispatch does. 200 calls took about 6 µs, uvloop Protocol's user
time per round trip.
"""

import random
from pathlib import Path

COUNT = 4096


def main() -> None:
    rng = random.Random(1)
    source = (Path(__file__).parent / "echo_floor.c").read_text()
    functions = []
    for index in range(COUNT):
        steps = []
        for _ in range(6):
            factor, step = rng.getrandbits(63) | 1, rng.getrandbits(20)
            shift, bit = rng.randint(3, 40), 1 << rng.randint(0, 40)
            mix = f"x = (x * {factor}ul) ^ (x >> {shift});"
            steps.append(f"    {mix} if (x & {bit}ul) x += {step}ul; else x -= {step ^ 0x5555}ul;")
        body = "\n".join(steps)
        functions.append(
            f"__attribute__((noinline)) static unsigned long g{index}(unsigned long x) {{\n{body}\n    return x;\n}}"
        )
    table = "static unsigned long (*const gs[])(unsigned long) = {" + ",".join(f"g{i}" for i in range(COUNT)) + "};"
    work = f"""
static long calls;
static size_t gat;
static void code_work(void) {{
    unsigned long x = 1;
    for (long i = 0; i < calls; i++, gat = (gat + 1) % {COUNT}) x = gs[gat](x);
    volatile unsigned long s = x;
    (void)s;
}}
"""
    source = source.replace(
        "static void on_readable(int ep, int fd) {",
        "\n".join(functions) + "\n" + table + work + "static void on_readable(int ep, int fd) {",
    )
    source = source.replace("if (spin || touch) work();", "if (spin || touch) work();\n    if (calls) code_work();")
    source = source.replace(
        "if (argc > 3) touch = atol(argv[3]);",
        "if (argc > 3) touch = atol(argv[3]);\n    if (argc > 4) calls = atol(argv[4]);",
    )
    print(source)


if __name__ == "__main__":
    main()

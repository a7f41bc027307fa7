#!/usr/bin/env python3
"""One-definition-rule check over the static libraries that one executable links.

Usage: check_odr.py LIB.a [LIB.a ...]

Fails when a C++ function or object of the project (namespace bt) is defined in two object files
and one of the definitions is strong: two classes or functions of one name in two files (the
linker keeps one and runs it on the other's objects), or an inline definition that differs from an
out-of-line one. Inline functions and templates, defined weakly in every object that uses them,
are fine. Which copy such a link keeps depends on the build: inline members are emitted as weak
symbols in a Debug build (the asan preset) and mostly inlined away in a Release one, so the check
catches most in a Debug build.
"""
import collections
import subprocess
import sys

STRONG = set("TDBRGSC")  # text, data, bss, read-only, small data, common
WEAK = set("VWu")        # weak object / function, unique global


def definitions(lib):
    out = subprocess.run(["nm", "-A", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        # "lib.a:member.o:0000000000000000 T _ZN2bt..." (an object file: "file.o:0000... T ...")
        parts = line.split()
        if len(parts) != 3:
            continue
        where, kind, sym = parts[0].rsplit(":", 1)[0], parts[1], parts[2]
        if sym.startswith(("_ZN2bt", "_ZNK2bt")):
            yield sym, kind, where


def main(libs):
    defs = collections.defaultdict(list)
    for lib in libs:
        for sym, kind, where in definitions(lib):
            if kind in STRONG or kind in WEAK:
                defs[sym].append((kind, where))
    bad = []
    for sym, ds in defs.items():
        objects = {w for _, w in ds}
        if len(objects) > 1 and any(k in STRONG for k, _ in ds):
            bad.append((sym, ds))
    if not bad:
        print(f"check_odr: no symbol of namespace bt defined twice in {len(libs)} libraries")
        return 0
    names = subprocess.run(["c++filt"], input="\n".join(s for s, _ in bad), capture_output=True, text=True).stdout
    for (sym, ds), name in zip(bad, names.splitlines()):
        print(f"ODR violation: {name} is defined in " + ", ".join(f"{w} ({k})" for k, w in sorted(set(ds), key=str)))
    print(f"check_odr: {len(bad)} symbols of namespace bt are defined in more than one object file, one of them "
          "strongly: give one of the two its own name (or an anonymous namespace)")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

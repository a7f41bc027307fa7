"""The check / finish pattern of the Python tests under tests/unit: each check prints ok or FAIL
with its name; finish() exits 1 naming the failed checks, else prints "all checks passed"."""
import shutil
import sys

FAILURES = []


def check(name, cond, msg=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond or not msg else ": " + str(msg)), flush=True)
    if not cond:
        FAILURES.append(name)
    return cond


def cleanup(tmp):
    """Removes the test's scratch directory when every check passed, else keeps it and says where."""
    if FAILURES:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def finish():
    if FAILURES:
        print("FAILED: " + ", ".join(FAILURES))
        sys.exit(1)
    print("all checks passed")

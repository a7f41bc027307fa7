#!/usr/bin/env python3
"""`bt --version` and cmake/bt_version.cmake: the project version and the git commit of the
source tree (with -dirty for uncommitted changes to tracked files, `unknown` outside git), and
the generated source rewritten only when its text changes.
Env: BT_BINARY = path of the `bt` executable, BT_SOURCE_DIR = the repository."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

BT = os.environ.get("BT_BINARY", "")
SRC = os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(SRC, "cmake", "bt_version.cmake")
GIT = shutil.which("git")


def project_version():
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        return re.search(r"project\(blockformer VERSION ([0-9.]+)", f.read()).group(1)


def run_script(src, out, git=GIT or ""):
    subprocess.run(["cmake", f"-DSRC={src}", f"-DOUT={out}", "-DVERSION=9.8.7", f"-DGIT={git}",
                    "-DBUILD_INFO=test build", "-P", SCRIPT], check=True)
    with open(out) as f:
        text = f.read()
    return re.search(r'git_commit\(\) \{ return "([^"]*)"; \}', text).group(1)


class Version(unittest.TestCase):
    def test_bt_version(self):
        r = subprocess.run([BT, "--version"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 2, r.stdout)
        m = re.fullmatch(r"bt (\S+) \(git ([0-9a-f]{12}(-dirty)?|unknown)\)", lines[0])
        self.assertIsNotNone(m, lines[0])
        self.assertEqual(m.group(1), project_version())
        self.assertRegex(lines[1], r"^(Release|Debug|RelWithDebInfo|MinSizeRel|), \S+ \S+, (CUDA|no CUDA)")
        if GIT and subprocess.run([GIT, "-C", SRC, "rev-parse"], capture_output=True).returncode == 0:
            # HEAD when built from this tree; an ancestor of HEAD when commits came after the build.
            commit = m.group(2).split("-")[0]
            r = subprocess.run([GIT, "-C", SRC, "merge-base", "--is-ancestor", commit, "HEAD"], capture_output=True)
            self.assertEqual(r.returncode, 0, f"bt --version names {commit}, not HEAD or one of its ancestors")

    def test_outside_git_is_unknown(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "src"))
            self.assertEqual(run_script(os.path.join(d, "src"), os.path.join(d, "v.cpp")), "unknown")
            self.assertEqual(run_script(os.path.join(d, "src"), os.path.join(d, "v2.cpp"), git=""), "unknown")

    @unittest.skipUnless(GIT, "git is not installed")
    def test_commit_and_dirty_flag(self):
        with tempfile.TemporaryDirectory() as d:
            repo, out = os.path.join(d, "repo"), os.path.join(d, "v.cpp")
            git = [GIT, "-C", repo, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
            os.makedirs(repo)
            subprocess.run(git + ["init", "-q"], check=True)
            with open(os.path.join(repo, "a.txt"), "w") as f:
                f.write("one\n")
            subprocess.run(git + ["add", "a.txt"], check=True)
            subprocess.run(git + ["commit", "-qm", "first"], check=True)
            head = subprocess.run(git + ["rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                  check=True).stdout.strip()
            self.assertEqual(run_script(repo, out), head)
            # Unchanged text: the file is not rewritten (nothing relinks).
            before = os.stat(out).st_mtime_ns
            os.utime(out, ns=(before - 10**9, before - 10**9))
            self.assertEqual(run_script(repo, out), head)
            self.assertEqual(os.stat(out).st_mtime_ns, before - 10**9)
            # An untracked file is not a change; an edit of a tracked one is.
            with open(os.path.join(repo, "new.txt"), "w") as f:
                f.write("x\n")
            self.assertEqual(run_script(repo, out), head)
            with open(os.path.join(repo, "a.txt"), "w") as f:
                f.write("two\n")
            self.assertEqual(run_script(repo, out), head + "-dirty")


if __name__ == "__main__":
    unittest.main()

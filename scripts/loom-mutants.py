#!/usr/bin/env python3
"""Shows that every ordering in the shm ring that is stronger than Relaxed is needed: for
each one, builds a copy of the ring with that ordering weakened and expects the loom model
tests (shm/src/ring/model.rs, scripts/loom.sh) to fail. The copy lives in a temporary
workspace; the source tree is never modified. Exit status 1 if a weakening goes unnoticed.

    python3 scripts/loom-mutants.py            # every weakening (a rebuild each: minutes)
    python3 scripts/loom-mutants.py publish    # those whose name contains "publish"
"""

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, exact text in shm/src/ring.rs, weakened text, the model test expected to fail)
MUTANTS = [
    ("publish tail store Release->Relaxed",
     "ctrl.tail.store(self.tail, Ordering::Release);",
     "ctrl.tail.store(self.tail, Ordering::Relaxed);",
     "a_published_record_is_seen_whole"),
    ("peek tail load Acquire->Relaxed",
     "let tail = self.mem.ctrl().tail.load(Ordering::Acquire);",
     "let tail = self.mem.ctrl().tail.load(Ordering::Relaxed);",
     "a_published_record_is_seen_whole"),
    ("consume head store Release->Relaxed",
     "self.peeked = 0;\n        self.mem.ctrl().head.store(self.head, Ordering::Release);",
     "self.peeked = 0;\n        self.mem.ctrl().head.store(self.head, Ordering::Relaxed);",
     "space_is_reused_only_after_consume"),
    ("refresh_head head load Acquire->Relaxed",
     "let head = self.mem.ctrl().head.load(Ordering::Acquire);",
     "let head = self.mem.ctrl().head.load(Ordering::Relaxed);",
     "space_is_reused_only_after_consume"),
    ("peek padding head store Release->Relaxed", None, None, None),
    ("publish fence SeqCst->AcqRel (F_p)",
     "// F_p of the sleep protocol (module docs): orders the tail store before the flag load.\n"
     "        fence(Ordering::SeqCst);",
     "fence(Ordering::AcqRel);",
     "an_announced_sleep_is_never_missed"),
    ("prepare_sleep fence SeqCst->AcqRel (F_c)",
     "// F_c of the sleep protocol: orders the flag store before the tail load.\n"
     "        fence(Ordering::SeqCst);",
     "fence(Ordering::AcqRel);",
     "an_announced_sleep_is_never_missed"),
]


def padding_mutant(src):
    """The padding release is one of two identical head stores: weaken the one in peek."""
    marker = "// Released now rather than at the next consume"
    at = src.index(marker)
    store = "self.mem.ctrl().head.store(self.head, Ordering::Release);"
    s_at = src.index(store, at)
    return src[:s_at] + store.replace("Release", "Relaxed") + src[s_at + len(store):]


def workspace_copy(tmp):
    """A workspace holding only the shm crate, sharing the loom build's dependencies."""
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        manifest = f.read()
    start = manifest.index("members = [")
    end = manifest.index("]", start)
    manifest = manifest[:start] + 'members = ["shm"]' + manifest[end + 1:]
    with open(os.path.join(tmp, "Cargo.toml"), "w") as f:
        f.write(manifest)
    shutil.copy(os.path.join(ROOT, "Cargo.lock"), tmp)
    shutil.copytree(os.path.join(ROOT, "shm"), os.path.join(tmp, "shm"))


def run(tmp, test):
    env = dict(os.environ)
    env["RUSTFLAGS"] = "--cfg loom " + env.get("RUSTFLAGS", "")
    env["CARGO_TARGET_DIR"] = os.path.join(ROOT, "target", "loom-mutants")
    cmd = ["cargo", "test", "-q", "-p", "ringcast-shm", "--lib", "--release", "--",
           "ring::model::tests::" + test]
    r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    with open(os.path.join(ROOT, "shm", "src", "ring.rs")) as f:
        original = f.read()
    unnoticed = 0
    with tempfile.TemporaryDirectory(prefix="ringcast-loom-mutants-") as tmp:
        workspace_copy(tmp)
        ring_rs = os.path.join(tmp, "shm", "src", "ring.rs")
        for name, old, new, test in MUTANTS:
            if only not in name:
                continue
            if test is None:
                mutated, test = padding_mutant(original), "padding_is_released_before_its_space_is_reused"
            else:
                assert original.count(old) == 1, f"{name}: pattern not found once"
                mutated = original.replace(old, new)
            with open(ring_rs, "w") as f:
                f.write(mutated)
            code, out = run(tmp, test)
            reason = next((l.strip() for l in out.splitlines()
                           if "panicked" in l or "Causality" in l or "deadlock" in l
                           or "lost wake-up" in l), "")
            if code == 0:
                unnoticed += 1
                print(f"NOT CAUGHT  {name}: {test} passes")
            elif "test result: FAILED" in out or "FAILED" in out:
                print(f"caught      {name}: {test} fails")
                for line in out.splitlines():
                    if "Causality" in line or "deadlock" in line or "lost wake-up" in line:
                        print(f"            {line.strip()[:160]}")
                        break
            else:
                unnoticed += 1
                print(f"BUILD?      {name}: {reason or out[-400:]}")
    sys.exit(1 if unnoticed else 0)


if __name__ == "__main__":
    main()
